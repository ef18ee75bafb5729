"""Prometheus metrics of the speaker side, registered once in the process-wide registry.

`/metrics` renders `prometheus_client.REGISTRY`, so metrics the `sessions/` and `kvs/` packages
register there (fragments, PutMedia connects, buffered seconds) appear beside these.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST

CONNECTIONS = Gauge("kvs_ingest_connections_open", "Speaker sockets open now")
CONNECTIONS_TOTAL = Counter(
    "kvs_ingest_connections_closed_total", "Speaker sockets ended, by close code", ["close_code"]
)
SESSIONS = Gauge("kvs_ingest_sessions_open", "Sessions held by this process")
AUDIO_IN_SECONDS = Counter("kvs_ingest_audio_in_seconds_total", "Decoded audio received")
AUDIO_PERSISTED_SECONDS = Counter(
    "kvs_ingest_audio_persisted_seconds_total", "Decoded audio acknowledged as PERSISTED"
)
BYTES_IN = Counter("kvs_ingest_bytes_in_total", "Media bytes received from speakers")
MESSAGES_IN = Counter("kvs_ingest_messages_in_total", "Speaker messages received", ["kind"])
MEDIA_MESSAGES_IN = MESSAGES_IN.labels("media")  # bound once: counted on every message
DECODE_ERRORS = Counter("kvs_ingest_decode_errors_total", "Sockets closed as undecodable (4415)")
AUTH_FAILURES = Counter("kvs_ingest_auth_failures_total", "Refused handshakes", ["reason"])
REFUSALS = Counter("kvs_ingest_refusals_total", "Sockets refused before media", ["close_code"])
ACKS_SENT = Counter("kvs_ingest_acks_sent_total", "Durability acks sent to speakers")
PERSIST_LATENCY = Histogram(
    "kvs_ingest_chunk_persisted_latency_seconds",
    "From a media message's arrival to the ack saying it is PERSISTED",
    buckets=(0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0),
)
EVENT_LOOP_LAG = Gauge("kvs_ingest_event_loop_lag_seconds", "Last measured event-loop lag")
# Every probe, so a p99 and short stalls can be read from /metrics (the gauge keeps only the last).
EVENT_LOOP_LAG_HISTOGRAM = Histogram(
    "kvs_ingest_event_loop_lag_probe_seconds",
    "Event-loop lag of every probe (how late a sleep woke up)",
    buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
DRAINING = Gauge("kvs_ingest_draining", "1 while the process drains after SIGTERM")


def render() -> bytes:
    """The Prometheus text exposition of every metric in the process."""
    return generate_latest(REGISTRY)
