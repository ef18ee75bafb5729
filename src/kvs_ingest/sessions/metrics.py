"""Prometheus collectors of the session timeline (drift, gaps)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

DRIFT_MS = Histogram(
    "kvs_ingest_timeline_drift_ms",
    "Sample clock behind the wall clock at a fragment boundary, since the speaker attached (ms)",
    buckets=(-5000, -1000, -250, -50, 0, 50, 100, 200, 500, 1000, 5000),
)
DRIFT_CORRECTED_MS = Counter(
    "kvs_ingest_timeline_drift_corrected_ms_total",
    "Milliseconds the timeline was moved forward to follow the wall clock",
)
GAPS = Counter("kvs_ingest_timeline_gaps_total", "Explicit gaps left for a speaker's absence")
GAP_MS = Counter("kvs_ingest_timeline_gap_ms_total", "Total length of those gaps (ms)")
