"""KVS's published limits, in one place (PutMedia API reference and the developer guide's
"Kinesis Video Streams limits"; see KVS-PROTOCOL.md)."""

from __future__ import annotations

MAX_FRAGMENT_MS = 10_000  # error 4002
MAX_FRAGMENT_BYTES = 50 * 1024 * 1024  # error 4001
MAX_TRACKS = 3  # error 4012
MAX_FRAGMENT_TAGS = 10  # error 4009
PUTMEDIA_CALLS_PER_SECOND = 5  # ClientLimitExceededException above
IDLE_TIMEOUT_SECONDS = 30.0  # KVS closes a PutMedia request that sends nothing this long
IDLE_ACK_SECONDS = 3.0  # how often an IDLE ack is sent while nothing arrives
MAX_CONNECTION_SECONDS = 40 * 60.0  # producers cap the streaming token at 40 min; then 4003
CLOCK_SKEW_SECONDS = 15 * 60.0  # SigV4: a request dated further off is refused
STREAM_NAME_PATTERN = r"[a-zA-Z0-9_.-]{1,256}"
MAX_TAGS_PER_STREAM = 50

# PutMedia ack error ids (PutMedia API reference).
ERR_READING = 4000
ERR_FRAGMENT_SIZE = 4001
ERR_FRAGMENT_DURATION = 4002
ERR_CONNECTION_DURATION = 4003
ERR_TIMECODE = 4004
ERR_MULTI_TRACK = 4005
ERR_INVALID_MKV = 4006
ERR_PRODUCER_TIMESTAMP = 4007
ERR_STREAM_DELETED = 4008
ERR_METADATA_LIMIT = 4009
ERR_TRACK_NUMBER = 4010
ERR_TRACK_WITHOUT_FRAMES = 4011
ERR_TOO_MANY_TRACKS = 4012
ERR_INTERNAL = 5000
ERR_PERSIST = 5001
