"""PutMedia acknowledgement events: a sans-I/O parser of the streamed response body.

KVS streams JSON objects, one per event, for as long as the PutMedia request lasts. They may be
split anywhere across reads and separated by whitespace or newlines (the producer SDK parses them
with a streaming character parser for that reason), so `AckParser` is fed byte pieces of any
size and yields typed `AckEvent`s as each object completes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum

# An ack object is ~150 bytes; anything far longer is not an ack stream.
MAX_ACK_BYTES = 64 * 1024


class AckEventType(StrEnum):
    BUFFERING = "BUFFERING"  # KVS started receiving the fragment
    RECEIVED = "RECEIVED"  # fragment fully received
    PERSISTED = "PERSISTED"  # durably stored: the only event that means safe
    ERROR = "ERROR"  # not stored; see error_id
    IDLE = "IDLE"  # keep-alive while the producer sends nothing


class AckError(Exception):
    """The peer sent something that is not an ack stream; the connection should be dropped."""


@dataclass(frozen=True, slots=True)
class AckEvent:
    """One ack. `timecode` is the fragment's Cluster timecode (absolute ms with ABSOLUTE)."""

    type: AckEventType
    timecode: int | None = None
    fragment_number: str | None = None
    error_id: int | None = None

    def __post_init__(self) -> None:
        if self.type is AckEventType.ERROR and self.error_id is None:
            raise AckError("ERROR ack without ErrorId")
        if self.type is not AckEventType.IDLE and self.timecode is None:
            raise AckError(f"{self.type} ack without FragmentTimecode")

    @classmethod
    def from_json(cls, obj: object) -> AckEvent:
        if not isinstance(obj, dict):
            raise AckError("ack is not a JSON object")
        try:
            kind = AckEventType(str(obj.get("EventType")))
        except ValueError:
            raise AckError(f"unknown ack EventType {obj.get('EventType')!r}") from None
        timecode = obj.get("FragmentTimecode")
        error_id = obj.get("ErrorId")
        number = obj.get("FragmentNumber")
        if timecode is not None and (isinstance(timecode, bool) or not isinstance(timecode, int)):
            raise AckError("FragmentTimecode is not an integer")
        if error_id is not None and (isinstance(error_id, bool) or not isinstance(error_id, int)):
            raise AckError("ErrorId is not an integer")
        if number is not None and not isinstance(number, str):
            raise AckError("FragmentNumber is not a string")
        return cls(kind, timecode, number, error_id)


class AckParser:
    """Feed the response body with `feed`; each call returns the events it completed.

    Objects are delimited by brace depth outside strings, so a split inside a string or an
    escape is handled. Unusable after it raised `AckError`.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._failed = False

    def feed(self, data: bytes) -> list[AckEvent]:
        if self._failed:
            raise AckError("parser already failed")
        events: list[AckEvent] = []
        for byte in data:
            if self._depth == 0:
                if byte in b" \t\r\n,":  # between objects
                    continue
                if byte != 0x7B:  # "{"
                    self._failed = True
                    raise AckError(f"unexpected byte 0x{byte:02x} between ack objects")
            self._buf.append(byte)
            if len(self._buf) > MAX_ACK_BYTES:
                self._failed = True
                raise AckError("ack object too long")
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif byte == 0x5C:  # backslash
                    self._escape = True
                elif byte == 0x22:  # quote
                    self._in_string = False
            elif byte == 0x22:
                self._in_string = True
            elif byte == 0x7B:
                self._depth += 1
            elif byte == 0x7D:  # "}"
                self._depth -= 1
                if self._depth == 0:
                    events.append(self._complete())
        return events

    def close(self) -> list[AckEvent]:
        """End of the response: an object cut off is an error."""
        if self._buf:
            self._failed = True
            raise AckError("ack stream ends inside an object")
        return []

    @property
    def pending(self) -> bool:
        return bool(self._buf)

    def _complete(self) -> AckEvent:
        raw = bytes(self._buf)
        self._buf.clear()
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            self._failed = True
            raise AckError(f"ack is not JSON: {exc}") from None
        try:
            return AckEvent.from_json(obj)
        except AckError:
            self._failed = True
            raise
