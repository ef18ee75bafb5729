"""The one error the media pipeline raises: the stream cannot be decoded."""

from __future__ import annotations


class MediaError(Exception):
    """The peer sent media we cannot decode (unsupported, corrupt, truncated, too large).

    The decoder that raised it is unusable afterwards; the server answers with `close_code`
    (DESIGN.md §4.4: 4415 "media unsupported or undecodable"). The message is for logs and for
    `kvs-ingest decode`; it never contains anything but facts about the bytes.
    """

    close_code = 4415
