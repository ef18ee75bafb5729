"""Tell the container from a stream's first bytes, for clients that do not declare it."""

from __future__ import annotations

from kvs_ingest.media.errors import MediaError

FORMATS = ("webm", "ogg", "mp4", "pcm_s16le")
SNIFF_BYTES = 8
_EBML = b"\x1a\x45\xdf\xa3"
_MP4_FIRST_BOXES = (b"ftyp", b"styp", b"moov", b"moof", b"free", b"skip", b"sidx")
_KNOWN_OTHERS = (
    (b"RIFF", "a WAV file"),
    (b"ID3", "MP3"),
    (b"fLaC", "FLAC"),
    (b"\xff\xfb", "MP3"),
    (b"\xff\xf1", "ADTS AAC"),
    (b"\xff\xf9", "ADTS AAC"),
    (b"#!AMR", "AMR"),
    (b"{", "JSON text"),
)


def sniff(head: bytes) -> str | None:
    """The format of a stream starting with `head`, or None while too few bytes have come.

    Raw PCM has no magic: clients that send it must declare `format=pcm_s16le`.
    """
    if head.startswith(_EBML):
        return "webm"
    if head.startswith(b"OggS"):
        return "ogg"
    if len(head) >= 8 and head[4:8] in _MP4_FIRST_BOXES:
        return "mp4"
    if len(head) < SNIFF_BYTES and any(magic.startswith(head) for magic in (_EBML, b"OggS")):
        return None
    if len(head) < SNIFF_BYTES:
        return None
    for magic, name in _KNOWN_OTHERS:
        if head.startswith(magic):
            raise MediaError(f"unsupported media: looks like {name}; send WebM, Ogg or MP4")
    raise MediaError("unrecognised media (not WebM, Ogg or MP4); raw PCM needs format=pcm_s16le")
