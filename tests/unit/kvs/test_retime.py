"""A first send refused as out of order (4004) is a timeline conflict, never "stored": the
fragment and all after it move later, bytes re-timed, and are sent again as first sends."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvs_ingest.kvs.acks import AckEvent, AckEventType
from kvs_ingest.kvs.fragments import FragmentWriter, connection_header, retime
from kvs_ingest.kvs.ledger import AckAction, FragmentLedger, Rollback, SendCursor, Status
from kvs_ingest.mkv import ID, EbmlReader, Leaf, parse_block, read_uint

HEADER = b"HEADER"
ONE_SECOND = b"\x01\x00" * 16000


def ack(kind: AckEventType, tc: int, error_id: int | None = None) -> AckEvent:
    return AckEvent(kind, tc, "1", error_id)


def filled(seconds: float, *, close: bool) -> tuple[FragmentWriter, FragmentLedger]:
    writer = FragmentWriter("s", start_ms=5_000, fragment_ms=1000)
    ledger = FragmentLedger()
    total = 0
    pcm = ONE_SECOND * int(seconds) + ONE_SECOND[: int((seconds % 1) * 32000)]
    for piece in writer.write(pcm):
        total += piece.samples
        ledger.append(piece, 0.0, owner="spk", owner_total=total)
    if close:
        for piece in writer.close():
            ledger.append(piece, 0.0)
    return writer, ledger


def drain(cursor: SendCursor, ledger: FragmentLedger) -> bytes:
    out = []
    while True:
        while (chunk := cursor.next_bytes(0.0)) is not None:
            out.append(chunk)
        if not cursor.written:
            return b"".join(out)
        for frag in cursor.written:
            ledger.on_ack(ack(AckEventType.RECEIVED, frag.timecode), cursor.conn)
        cursor.written.clear()


def block_times(body: bytes) -> list[int]:
    """Absolute ms of every block, read with our EBML reader (not the writer's arithmetic)."""
    reader = EbmlReader()
    cluster = 0
    times = []
    for ev in reader.feed(body) + reader.close():
        if isinstance(ev, Leaf) and ev.id == ID.TIMECODE:
            cluster = read_uint(ev.data)
        elif isinstance(ev, Leaf) and ev.id == ID.SIMPLE_BLOCK:
            times.append(cluster + parse_block(ev.data).timecode)
    return times


def test_first_send_4004_is_a_conflict_not_a_duplicate() -> None:
    """4004 on a fragment's first send asks for a re-timing; nothing resolves, no owner advances."""
    _, ledger = filled(2, close=True)
    drain(SendCursor(ledger, 1, HEADER, 1), ledger)
    first = ledger.get(1)
    assert first is not None and first.attempts == 1
    out = ledger.on_ack(ack(AckEventType.ERROR, first.timecode, 4004), 1)
    assert out.action is AckAction.RETIME and out.newly_resolved == ()
    assert first.status is Status.PENDING and ledger.unresolved == 2
    assert ledger.buffered_samples == 32000
    # A later PERSISTED on the same connection does not cover the refused fragment.
    second = ledger.get(2)
    assert second is not None
    out = ledger.on_ack(ack(AckEventType.PERSISTED, second.timecode), 1)
    assert first.status is Status.PENDING and ledger.pop_resolved() == []


def test_4004_on_a_resend_still_means_already_stored() -> None:
    """A fragment sent before and refused with 4004 on its re-send is a DUPLICATE, as before."""
    _, ledger = filled(1, close=True)
    drain(SendCursor(ledger, 1, HEADER, 1), ledger)
    drain(SendCursor(ledger, 2, HEADER, ledger.rollback(Rollback.AFTER_PERSISTED)), ledger)
    frag = ledger.get(1)
    assert frag is not None and frag.attempts == 2
    out = ledger.on_ack(ack(AckEventType.ERROR, frag.timecode, 4004), 2)
    assert out.action is AckAction.NONE and frag.status is Status.DUPLICATE


def test_shift_moves_the_rest_and_the_writer_continues_after_it() -> None:
    """Shifting from the conflict moves every later fragment, open one included; the writer
    shifted alike keeps appending to it; the re-sent body's block times are exactly moved."""
    writer, ledger = filled(2.5, close=False)
    before = block_times(b"".join(bytes(f.data) for f in ledger))
    drain(SendCursor(ledger, 1, HEADER, 1), ledger)
    first = ledger.get(1)
    assert first is not None
    ledger.on_ack(ack(AckEventType.ERROR, first.timecode, 4004), 1)
    moved = ledger.shift(1, 7_321)
    writer.shift(7_321)
    assert [f.seq for f in moved] == [1, 2, 3]
    assert all(f.attempts == 0 and f.status is Status.PENDING for f in moved)
    for piece in writer.write(ONE_SECOND[:16000]) + writer.close():
        ledger.append(piece, 0.0)  # would raise if the open fragment had not moved alike
    body = drain(SendCursor(ledger, 2, HEADER, ledger.rollback(Rollback.AFTER_PERSISTED)), ledger)
    after = block_times(body[len(HEADER) :])
    assert after[: len(before)] == [t + 7_321 for t in before]
    assert after == sorted(set(after))  # strictly increasing, continuous
    assert writer.end_ms == 5_000 + 7_321 + 3_000
    # A 4004 on the moved fragment's next send is a conflict again, not a duplicate.
    out = ledger.on_ack(ack(AckEventType.ERROR, first.timecode, 4004), 2)
    assert out.action is AckAction.RETIME


def test_retime_rewrites_only_the_cluster_timecode() -> None:
    """`retime` changes the Cluster Timecode (and nothing else); it refuses foreign bytes."""
    writer = FragmentWriter("s", start_ms=1_000, fragment_ms=1000)
    data = b"".join(p.data for p in writer.write(ONE_SECOND))
    moved = retime(data, 1_000, 1_764_050_000_123)
    assert block_times(bytes(moved)) == [t + 1_764_050_000_123 - 1_000 for t in block_times(data)]
    with pytest.raises(ValueError):
        retime(data, 999, 2_000)


@pytest.mark.skipif(shutil.which("mkvinfo") is None, reason="mkvinfo not installed")
def test_retimed_fragment_reads_in_mkvinfo(tmp_path: Path) -> None:
    """mkvinfo (outside our code) reads the re-timed Cluster at its new timecode."""
    writer = FragmentWriter("s", start_ms=1_000, fragment_ms=1000)
    data = b"".join(p.data for p in writer.write(ONE_SECOND))
    path = tmp_path / "f.mkv"
    path.write_bytes(connection_header(b"\x00" * 16) + bytes(retime(data, 1_000, 61_000)))
    out = subprocess.run(
        ["mkvinfo", "--all", str(path)], capture_output=True, text=True, timeout=60
    ).stdout
    assert "Cluster timestamp: 00:01:01.000000000" in out, out[-2000:]


def test_sends_on_refused_connections_do_not_make_a_duplicate() -> None:
    """A fragment started only on connections KVS refused before answering (another task held
    the stream) and then refused with 4004 on the first accepted one is a conflict, not stored."""
    _, ledger = filled(1, close=True)
    for conn in (1, 2, 3):  # ConnectionLimitExceeded three times, body bytes already out
        cursor = SendCursor(ledger, conn, HEADER, ledger.rollback(Rollback.AFTER_RECEIVED))
        while cursor.next_bytes(0.0) is not None:  # no ack ever comes back
            pass
        ledger.connection_unheard(conn)
    frag = ledger.get(1)
    assert frag is not None and frag.attempts == 3 and frag.offers == 0
    drain(SendCursor(ledger, 4, HEADER, ledger.rollback(Rollback.AFTER_PERSISTED)), ledger)
    out = ledger.on_ack(ack(AckEventType.ERROR, frag.timecode, 4004), 4)
    assert out.action is AckAction.RETIME and frag.status is Status.PENDING


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), min_size=0, max_size=6))
def test_4004_is_a_duplicate_only_after_an_answered_send(answered: list[bool]) -> None:
    """Whatever connections came before (answered by KVS or refused), a 4004 on the next one
    resolves the fragment as DUPLICATE exactly when an earlier answered connection started it;
    otherwise it is a conflict and nothing is counted as stored."""
    _, ledger = filled(1, close=True)
    conn = 0
    for ok in answered:
        conn += 1
        cursor = SendCursor(ledger, conn, HEADER, ledger.rollback(Rollback.AFTER_PERSISTED))
        while cursor.next_bytes(0.0) is not None:
            pass
        if not ok:
            ledger.connection_unheard(conn)
    conn += 1
    cursor = SendCursor(ledger, conn, HEADER, ledger.rollback(Rollback.AFTER_PERSISTED))
    while cursor.next_bytes(0.0) is not None:
        pass
    frag = ledger.get(1)
    assert frag is not None
    out = ledger.on_ack(ack(AckEventType.ERROR, frag.timecode, 4004), conn)
    if any(answered):
        assert out.action is AckAction.NONE and frag.status is Status.DUPLICATE
    else:
        assert out.action is AckAction.RETIME and not frag.resolved
        assert ledger.buffered_samples == 16000
