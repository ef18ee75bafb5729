"""FaultBook: counting, matching by stream, expiry by a fake clock."""

from __future__ import annotations

import pytest

from kvs_ingest.emulator.errors import ApiError
from kvs_ingest.emulator.faults import FaultBook


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def test_error_ack_counts_fragments_of_its_stream() -> None:
    """error_ack fires on the N-th fragment of the named stream only, once."""
    book = FaultBook(Clock())
    book.add({"kind": "error_ack", "fragment": 2, "error_id": 4004, "stream": "a"})
    assert book.error_for_fragment("b") is None
    assert book.error_for_fragment("a") is None
    assert book.error_for_fragment("a") == (4004, False)
    assert book.error_for_fragment("a") is None and book.faults == []


def test_refuse_expires_and_throttle_counts() -> None:
    """refuse_connections ends after its seconds; throttle answers exactly `count` calls."""
    clock = Clock()
    book = FaultBook(clock)
    book.add({"kind": "refuse_connections", "seconds": 2})
    book.add({"kind": "throttle", "api": "PutMedia", "count": 2})
    err = book.refuse_connection("s")
    assert err is not None and err.status == 503
    clock.now += 2.5
    assert book.refuse_connection("s") is None
    codes = [getattr(book.api_error("PutMedia", "s"), "code", None) for _ in range(3)]
    assert codes == ["ClientLimitExceededException"] * 2 + [None]


def test_drop_claimed_by_one_connection_and_move_endpoint() -> None:
    """drop_after is claimed by the next connection; move_endpoint bumps the generation."""
    book = FaultBook(Clock())
    book.add({"kind": "drop_after", "fragments": 3})
    assert book.claim_drop("s") == 3 and book.claim_drop("s") is None
    book.add({"kind": "move_endpoint"})
    assert book.endpoint_generation == 1


@pytest.mark.parametrize(
    "spec",
    [{"kind": "nope"}, {"kind": "throttle", "api": "Nope", "count": 1},
     {"kind": "delay_acks"}, {"kind": "fail", "api": "GetMedia", "count": 1, "status": 200},
     {"kind": "error_ack", "fragment": 0}],
)  # fmt: skip
def test_bad_faults_refused(spec: dict[str, object]) -> None:
    """Malformed faults are refused with InvalidArgumentException."""
    with pytest.raises(ApiError) as exc:
        FaultBook(Clock()).add(spec)
    assert exc.value.code == "InvalidArgumentException"
