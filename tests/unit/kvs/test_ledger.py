"""FragmentLedger and SendCursor: what gets sent, re-sent and resolved under each ack."""

from __future__ import annotations

from kvs_ingest.kvs.acks import AckEvent, AckEventType
from kvs_ingest.kvs.fragments import END_OF_FRAGMENT, FragmentWriter
from kvs_ingest.kvs.ledger import (
    AckAction,
    FragmentLedger,
    Rollback,
    SendCursor,
    Status,
)

HEADER = b"HEADER"
ONE_SECOND = b"\x01\x00" * 16000


def ledger_with(seconds: int, *, close_last: bool = True) -> tuple[FragmentLedger, list[int]]:
    writer = FragmentWriter("s", start_ms=1000, fragment_ms=1000)
    ledger = FragmentLedger()
    total = 0
    for _ in range(seconds):
        for piece in writer.write(ONE_SECOND):
            total += piece.samples
            ledger.append(piece, 0.0, owner="spk", owner_total=total)
    if close_last:
        for piece in writer.close():
            ledger.append(piece, 0.0)
    return ledger, [f.timecode for f in ledger]


def drain(cursor: SendCursor, ledger: FragmentLedger | None = None) -> bytes:
    """All the cursor sends; with `ledger`, KVS's RECEIVED acks for what it completed."""
    out = []
    while True:
        while (chunk := cursor.next_bytes(0.0)) is not None:
            out.append(chunk)
        if ledger is None or not cursor.written:
            return b"".join(out)
        for frag in cursor.written:
            ledger.on_ack(ack(AckEventType.RECEIVED, frag.timecode), cursor.conn)
        cursor.written.clear()


def ack(kind: AckEventType, tc: int, error_id: int | None = None) -> AckEvent:
    return AckEvent(kind, tc, "1", error_id)


def test_cursor_sends_header_fragments_then_end_of_fragment() -> None:
    """A connection's body is the header, every fragment in order, then one END_OF_FRAGMENT."""
    ledger, _ = ledger_with(3)
    cursor = SendCursor(ledger, 1, HEADER, ledger.rollback(Rollback.AFTER_PERSISTED))
    sent = drain(cursor, ledger)
    assert sent == HEADER + b"".join(bytes(f.data) for f in ledger) + END_OF_FRAGMENT
    assert [f.sent_conn for f in ledger] == [1, 1, 1]
    assert drain(cursor) == b""


def test_open_fragment_is_streamed_as_it_grows() -> None:
    """Bytes of the open fragment go out as they arrive; no END_OF_FRAGMENT while it is open."""
    writer = FragmentWriter("s", start_ms=0, fragment_ms=1000)
    ledger = FragmentLedger()
    cursor = SendCursor(ledger, 1, HEADER, 1)
    for piece in writer.write(ONE_SECOND[:8000]):
        ledger.append(piece, 0.0)
    first = drain(cursor)
    for piece in writer.write(ONE_SECOND[:8000]):
        ledger.append(piece, 0.0)
    second = drain(cursor)
    assert END_OF_FRAGMENT not in first + second
    for piece in writer.close():
        ledger.append(piece, 0.0)
    third = drain(cursor)
    assert third.endswith(END_OF_FRAGMENT)
    assert first[len(HEADER) :] + second + third[: -len(END_OF_FRAGMENT)] == bytes(ledger.last.data)


def test_persisted_resolves_in_order_and_reports_owner_totals() -> None:
    """PERSISTED resolves its fragment and earlier sent ones; pop_resolved gives them in order."""
    ledger, tcs = ledger_with(3)
    drain(SendCursor(ledger, 1, HEADER, 1))
    out = ledger.on_ack(ack(AckEventType.PERSISTED, tcs[1]), 1)
    assert [f.timecode for f in out.newly_resolved] == tcs[:2]
    popped = ledger.pop_resolved()
    assert [f.owners["spk"] for f in popped] == [16000, 32000]
    assert ledger.buffered_samples == 16000 and len(ledger) == 1


def test_retryable_error_resends_from_that_fragment_byte_for_byte() -> None:
    """ERROR 5000 asks for a retry; the next connection re-sends it and what follows, unchanged."""
    ledger, tcs = ledger_with(3)
    drain(SendCursor(ledger, 1, HEADER, 1))
    ledger.on_ack(ack(AckEventType.PERSISTED, tcs[0]), 1)
    out = ledger.on_ack(ack(AckEventType.ERROR, tcs[1], 5000), 1)
    assert out.action is AckAction.RETRY
    ledger.pop_resolved()
    start = ledger.rollback(Rollback.AFTER_PERSISTED)
    sent = drain(SendCursor(ledger, 2, HEADER, start), ledger)
    assert sent == HEADER + b"".join(bytes(f.data) for f in ledger) + END_OF_FRAGMENT
    assert [f.attempts for f in ledger] == [2, 1]  # the third never went out before the error


def test_connection_error_resends_after_last_received() -> None:
    """After a drop, RECEIVED fragments are not re-sent; a later PERSISTED resolves them."""
    ledger, tcs = ledger_with(3)
    drain(SendCursor(ledger, 1, HEADER, 1))
    ledger.on_ack(ack(AckEventType.RECEIVED, tcs[0]), 1)
    start = ledger.rollback(Rollback.AFTER_RECEIVED)
    assert start == 2
    drain(SendCursor(ledger, 2, HEADER, start))
    out = ledger.on_ack(ack(AckEventType.PERSISTED, tcs[2]), 2)
    assert len(out.newly_resolved) == 3


def test_stale_connection_resends_after_last_persisted() -> None:
    """When the host may have died, RECEIVED is not safe: everything unpersisted is re-sent."""
    ledger, tcs = ledger_with(2)
    drain(SendCursor(ledger, 1, HEADER, 1))
    ledger.on_ack(ack(AckEventType.RECEIVED, tcs[0]), 1)
    assert ledger.awaiting_acks(1)
    assert ledger.rollback(Rollback.AFTER_PERSISTED) == 1


def test_duplicate_after_resend_is_resolved_not_failed() -> None:
    """4004 on a re-sent fragment means KVS has it already: DUPLICATE, and owners advance."""
    ledger, tcs = ledger_with(2)
    drain(SendCursor(ledger, 1, HEADER, 1))
    drain(SendCursor(ledger, 2, HEADER, ledger.rollback(Rollback.AFTER_PERSISTED)))
    out = ledger.on_ack(ack(AckEventType.ERROR, tcs[0], 4004), 2)
    assert out.action is AckAction.NONE and ledger.get(1).status is Status.DUPLICATE
    assert [f.owners["spk"] for f in ledger.pop_resolved()] == [16000]


def test_non_retryable_error_fails_the_fragment_and_goes_on() -> None:
    """4006 (invalid MKV) fails that fragment only; the next one is still sent and persisted."""
    ledger, tcs = ledger_with(2)
    drain(SendCursor(ledger, 1, HEADER, 1))
    out = ledger.on_ack(ack(AckEventType.ERROR, tcs[0], 4006), 1)
    assert out.action is AckAction.NONE and out.newly_resolved[0].status is Status.FAILED
    ledger.on_ack(ack(AckEventType.PERSISTED, tcs[1]), 1)
    assert [f.status for f in ledger.pop_resolved()] == [Status.FAILED, Status.PERSISTED]


def test_max_duration_error_reconnects() -> None:
    """4003 asks for a new connection and re-sends the refused fragment."""
    ledger, tcs = ledger_with(2)
    drain(SendCursor(ledger, 1, HEADER, 1))
    ledger.on_ack(ack(AckEventType.PERSISTED, tcs[0]), 1)
    assert ledger.on_ack(ack(AckEventType.ERROR, tcs[1], 4003), 1).action is AckAction.RECONNECT
    ledger.pop_resolved()
    assert ledger.rollback(Rollback.AFTER_RECEIVED) == 2


def test_stop_at_boundary_ends_after_a_whole_fragment() -> None:
    """A rotating cursor finishes the fragment in progress, sends END_OF_FRAGMENT, then drains."""
    ledger, _ = ledger_with(2)
    cursor = SendCursor(ledger, 1, HEADER, 1)
    assert cursor.next_bytes(0.0) == HEADER
    first = cursor.next_bytes(0.0, limit=100)
    cursor.stop_at_boundary()
    rest = drain(cursor)
    assert first + rest == bytes(ledger.get(1).data) + END_OF_FRAGMENT
    assert cursor.drained and ledger.get(2).attempts == 0


def test_acks_for_unknown_timecodes_are_ignored() -> None:
    """An ack naming no held fragment changes nothing."""
    ledger, _ = ledger_with(1)
    out = ledger.on_ack(ack(AckEventType.PERSISTED, 42), 1)
    assert out.fragment is None and ledger.buffered_samples == 16000


def test_at_most_one_complete_fragment_is_unconfirmed() -> None:
    """Without acks the body completes one fragment and stops: a refusal can be re-sent in order."""
    ledger, _ = ledger_with(4)
    cursor = SendCursor(ledger, 1, HEADER, 1)
    sent = drain(cursor)
    assert sent == HEADER + bytes(ledger.get(1).data) + bytes(ledger.get(2).data)
    ledger.on_ack(ack(AckEventType.RECEIVED, ledger.get(1).timecode), 1)
    assert drain(cursor) == bytes(ledger.get(3).data)
