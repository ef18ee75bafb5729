"""close_for: the one mapping from errors to close codes (DESIGN.md §4.4)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvs_ingest.media import MediaError
from kvs_ingest.server.errors import (
    PUBLIC_MESSAGES,
    AtCapacity,
    CloseCode,
    Draining,
    Forbidden,
    MessageTooBig,
    ProtocolViolation,
    Replaced,
    StorageUnavailable,
    TimedOut,
    TooFast,
    Unauthorized,
    UnsupportedMedia,
    close_for,
)
from kvs_ingest.server.protocol import SpeakerProtocol
from kvs_ingest.sessions import BufferFull, KvsUnavailable, SessionClosed


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (MessageTooBig(), 1009),
        (RuntimeError("secret detail"), 1011),
        (Draining(), 1012),
        (SessionClosed("closing"), 1012),
        (AtCapacity(), 1013),
        (ProtocolViolation(), 4400),
        (Unauthorized(), 4401),
        (Forbidden(), 4403),
        (TimedOut(), 4408),
        (Replaced(), 4409),
        (UnsupportedMedia(), 4415),
        (MediaError("bad opus"), 4415),
        (TooFast(), 4429),
        (StorageUnavailable(), 4503),
        (BufferFull("full"), 4503),
        (KvsUnavailable("down"), 4503),
    ],
)
def test_every_error_has_its_code(error: BaseException, code: int) -> None:
    """Our errors and the lower packages' map to the table's codes; the unknown to 1011."""
    assert int(close_for(error)[0]) == code


def test_messages_never_carry_exception_text() -> None:
    """Internal exception text never reaches a client; only fixed messages or our hints."""
    for exc in (
        RuntimeError("db password=hunter2"),
        MediaError("ffmpeg said x"),
        KvsUnavailable("arn:..."),
    ):
        _, message = close_for(exc)
        assert str(exc) not in message
    assert set(PUBLIC_MESSAGES) == set(CloseCode)


@given(st.one_of(st.binary(max_size=300), st.text(max_size=300)))
@settings(max_examples=300, deadline=None)
def test_receive_gives_an_event_or_our_error(message: bytes | str) -> None:
    """Fuzz: any message is an event or a ProtocolViolation/MessageTooBig, nothing else."""
    p = SpeakerProtocol(max_message_bytes=200)
    try:
        p.receive(message)
    except (ProtocolViolation, MessageTooBig) as exc:
        assert int(exc.code) in (1009, 4400)
