"""Prometheus collectors of the KVS sink, in the process-wide registry (`/metrics` shows them)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from kvs_ingest.kvs.acks import AckEventType

FRAGMENTS_SENT = Counter(
    "kvs_ingest_fragments_sent_total",
    "Fragments fully written to a PutMedia body (first sends and re-sends)",
    ["attempt"],
)
ACKS = Counter("kvs_ingest_putmedia_acks_total", "PutMedia ack events received", ["event"])
# Children bound once: `labels()` per ack or fragment is a locked dict look-up on the hot path.
ACKS_BY_TYPE = {t: ACKS.labels(t.value) for t in AckEventType}
FRAGMENTS_FIRST_SENT = FRAGMENTS_SENT.labels("first")
FRAGMENTS_RESENT = FRAGMENTS_SENT.labels("resend")
FRAGMENTS_PERSISTED = Counter(
    "kvs_ingest_fragments_persisted_total", "Fragments acknowledged PERSISTED"
)
FRAGMENTS_DUPLICATE = Counter(
    "kvs_ingest_fragments_duplicate_total",
    "Re-sent fragments KVS refused as already there (4004 after a reconnect)",
)
FRAGMENTS_ERRORED = Counter(
    "kvs_ingest_fragments_errored_total", "ERROR acks, by error id", ["error_id"]
)
FRAGMENTS_FAILED = Counter(
    "kvs_ingest_fragments_failed_total",
    "Fragments given up on (non-retryable error id): their audio is not in KVS",
)
FRAGMENTS_RETIMED = Counter(
    "kvs_ingest_fragments_retimed_total",
    "Fragments moved later after KVS refused a first send as out of order (4004)",
)
PUTMEDIA_CONNECTS = Counter(
    "kvs_ingest_putmedia_connects_total", "PutMedia requests opened, by outcome", ["outcome"]
)
PUTMEDIA_RECONNECTS = Counter(
    "kvs_ingest_putmedia_reconnects_total", "PutMedia connections ended, by reason", ["reason"]
)
PUTMEDIA_OPEN = Gauge("kvs_ingest_putmedia_connections", "PutMedia requests open now")
BUFFERED_SECONDS = Gauge(
    "kvs_ingest_buffered_seconds", "Audio held in ledgers, not yet PERSISTED (all sessions)"
)
PERSIST_LATENCY = Histogram(
    "kvs_ingest_fragment_persist_latency_seconds",
    "From a fragment's last byte written to its PERSISTED ack",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0),
)
CONTROL_CALLS = Counter(
    "kvs_ingest_kvs_control_calls_total",
    "KVS control-plane calls, by API and outcome",
    ["api", "outcome"],
)
ENDPOINT_CACHE = Counter(
    "kvs_ingest_endpoint_cache_total", "Data-endpoint look-ups, by hit or miss", ["result"]
)

_buffered_samples = 0  # every ledger's unresolved samples: kept as an int so 0 is exactly 0.0


def add_buffered_samples(delta: int) -> None:
    """Move the buffered-audio gauge by `delta` samples (one ledger's change); the gauge is
    computed when scraped, so a write costs one integer addition."""
    global _buffered_samples
    _buffered_samples += delta


BUFFERED_SECONDS.set_function(lambda: _buffered_samples / 16_000)
