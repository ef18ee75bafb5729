"""KVS facts in one place: service limits, PutMedia headers and ack error ids.

Sources: the PutMedia API reference, the developer guide's "Kinesis Video Streams limits" page
and the PIC core of the KVS producer SDK (see ../shared/KVS-PROTOCOL.md). Nothing here is tuned;
tuning lives in `kvs_ingest.kvs.tuning`.
"""

from __future__ import annotations

from enum import IntEnum

SAMPLE_RATE = 16_000
SAMPLES_PER_MS = SAMPLE_RATE // 1000
BYTES_PER_SAMPLE = 2

# Per stream (PutMedia API reference / limits page).
MAX_PUTMEDIA_CALLS_PER_SECOND = 5
MAX_FRAGMENTS_PER_SECOND = 5
MAX_FRAGMENT_MS = 10_000  # error 4002 above this
MAX_FRAGMENT_BYTES = 50 * 1024 * 1024  # error 4001 above this
MAX_FRAGMENT_METADATA_TAGS = 10  # error 4009 above this
MAX_TRACKS = 3  # error 4012 above this
# KVS closes a PutMedia request that sends nothing for this long (IDLE acks meanwhile).
SERVICE_IDLE_SECONDS = 30.0
# The producers cap a streaming token, and so one PutMedia connection, at 40 minutes
# (MAX_ENFORCED_TOKEN_EXPIRATION_DURATION in the PIC core); 4003 is what a longer one gets.
MAX_CONNECTION_SECONDS = 40 * 60.0

SERVICE = "kinesisvideo"
TIMECODE_SCALE_NS = 1_000_000  # Cluster timecodes in milliseconds

MIME_TYPE = "audio/L16;rate=16000;channels=1"
STREAM_MEDIA_TYPE = "audio/L16"  # CreateStream's MediaType pattern allows no parameters
CODEC_ID = "A_PCM/INT/LIT"
TAG_MIME_TYPE = "MimeType"
TAG_SESSION_ID = "SessionId"
TAG_END_OF_FRAGMENT = "AWS_KINESISVIDEO_END_OF_FRAGMENT"

HEADER_STREAM_NAME = "x-amzn-stream-name"
HEADER_TIMECODE_TYPE = "x-amzn-fragment-timecode-type"
HEADER_PRODUCER_START = "x-amzn-producer-start-timestamp"
HEADER_ACK_REQUIRED = "x-amzn-fragment-acknowledgment-required"


class AckErrorId(IntEnum):
    """PutMedia ERROR ack ids (PutMedia API reference; the PIC core has the same list)."""

    READ_ERROR = 4000
    FRAGMENT_TOO_LARGE = 4001
    FRAGMENT_TOO_LONG = 4002
    CONNECTION_TOO_LONG = 4003
    TIMECODE_NOT_INCREASING = 4004
    MULTI_TRACK = 4005
    INVALID_MKV = 4006
    INVALID_PRODUCER_TIMESTAMP = 4007
    STREAM_DELETED = 4008
    METADATA_LIMIT = 4009
    TRACK_NUMBER_NOT_IN_HEADER = 4010
    TRACK_WITHOUT_FRAMES = 4011
    TOO_MANY_TRACKS = 4012
    KMS_ACCESS_DENIED = 4500
    KMS_DISABLED = 4501
    KMS_VALIDATION = 4502
    KMS_UNAVAILABLE = 4503
    KMS_INVALID_USAGE = 4504
    KMS_INVALID_STATE = 4505
    KMS_NOT_FOUND = 4506
    INTERNAL_ERROR = 5000
    PERSIST_FAILED = 5001


# The fragment was not stored, but sending it again on a new connection can succeed.
RETRYABLE_ERROR_IDS = frozenset({4000, 5000, 5001})
# The connection is over its duration: open a new one and carry on from that fragment.
RECONNECT_ERROR_IDS = frozenset({4003})
# 4004 on a fragment we re-sent after a reconnect means KVS already has it (or a later one).
DUPLICATE_ERROR_ID = 4004
