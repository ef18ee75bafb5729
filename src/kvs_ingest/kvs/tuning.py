"""Bounds and back-off of the sink that are ours to choose (not KVS facts, not settings).

Defaults follow the producer SDK where it has one; tests pass smaller values.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Tuning:
    # A connection with fragments written and no ack for this long is stale: reconnect and
    # re-send after the last PERSISTED (the SDK's connection staleness default is 20 s).
    ack_timeout: float = 20.0
    # No audio for this long closes the open fragment (KVS drops a silent request at 30 s).
    idle_fragment_seconds: float = 2.0
    # Rotation waits this long for the old connection's last PERSISTED before cutting it.
    rotate_drain_seconds: float = 10.0
    # Rotate this long before the credentials of the connection expire.
    credential_margin_seconds: float = 5 * 60.0
    # Reconnect back-off (full jitter): base * 2**n, capped.
    backoff_base: float = 0.1
    backoff_cap: float = 5.0
    # Control plane: attempts per call for throttling / 5xx, and the bound on waiting for ACTIVE.
    control_attempts: int = 6
    # ...and how many control-plane requests may start in one event-loop iteration (botocore
    # prepares each on the loop, 1-5 ms of CPU: kvs_ingest.pacing).
    control_calls_per_turn: int = 2
    active_timeout: float = 60.0
    # A speaker's write waits at most this long for room in a full ledger (then BufferFull).
    buffer_wait_seconds: float = 10.0
    # SimpleBlock length.
    block_ms: int = 40
    # A fragment closes at the end of the write that reaches FRAGMENT_MS, so one speaker
    # message is never split across two fragments (its ack would wait for the second); a
    # fragment still holds at most this many times FRAGMENT_MS (and KVS's 10 s).
    fragment_stretch: int = 2
    # Timeline: drift of the sample clock behind the wall clock above this is corrected...
    drift_tolerance_ms: int = 200
    # ...by at most this much per fragment boundary, forward only.
    drift_max_step_ms: int = 100
    # A first send refused as out of order (4004) when KVS's end cannot be learned moves the
    # rest this much later (doubling while it keeps happening).
    retime_step_ms: int = 10_000

    def backoff(self, attempt: int) -> float:
        """Full-jitter exponential back-off for the `attempt`-th retry (0-based)."""
        return random.uniform(0.0, min(self.backoff_cap, self.backoff_base * (2**attempt)))


DEFAULT_TUNING = Tuning()
