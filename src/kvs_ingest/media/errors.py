"""The one error the media pipeline raises: the stream cannot be decoded."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvs_ingest.media.pcm import Pcm


class MediaError(Exception):
    """The peer sent media we cannot decode (unsupported, corrupt, truncated, too large).

    The decoder that raised it is unusable afterwards; the server answers with `close_code`
    (DESIGN.md §4.4: 4415 "media unsupported or undecodable"). The message is for logs and for
    `kvs-ingest decode`; it never contains anything but facts about the bytes.

    `pcm` is audio that was still decodable when the error was found: when `flush()` finds the
    stream cut off inside a packet, the codec's tail from the complete packets is here (its
    offset continues the last `feed()` output), so a caller can keep it. Otherwise empty.
    """

    close_code = 4415

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.pcm: list[Pcm] = []
