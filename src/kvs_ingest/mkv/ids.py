"""Matroska element ids (the Matroska and EBML specifications, RFC 8794 / RFC 9559) and the
part of the element hierarchy a reader needs to end unknown-size masters."""

from __future__ import annotations

from enum import IntEnum


class ID(IntEnum):
    # EBML header (RFC 8794 §11.2) and global elements
    EBML = 0x1A45DFA3
    EBML_VERSION = 0x4286
    EBML_READ_VERSION = 0x42F7
    EBML_MAX_ID_LENGTH = 0x42F2
    EBML_MAX_SIZE_LENGTH = 0x42F3
    DOC_TYPE = 0x4282
    DOC_TYPE_VERSION = 0x4287
    DOC_TYPE_READ_VERSION = 0x4285
    VOID = 0xEC
    CRC32 = 0xBF
    # Segment and its top-level children
    SEGMENT = 0x18538067
    SEEK_HEAD = 0x114D9B74
    SEEK = 0x4DBB
    SEEK_ID = 0x53AB
    SEEK_POSITION = 0x53AC
    INFO = 0x1549A966
    SEGMENT_UID = 0x73A4
    TIMECODE_SCALE = 0x2AD7B1
    DURATION = 0x4489
    DATE_UTC = 0x4461
    TITLE = 0x7BA9
    MUXING_APP = 0x4D80
    WRITING_APP = 0x5741
    TRACKS = 0x1654AE6B
    TRACK_ENTRY = 0xAE
    TRACK_NUMBER = 0xD7
    TRACK_UID = 0x73C5
    TRACK_TYPE = 0x83
    FLAG_ENABLED = 0xB9
    FLAG_DEFAULT = 0x88
    FLAG_FORCED = 0x55AA
    FLAG_LACING = 0x9C
    DEFAULT_DURATION = 0x23E383
    NAME = 0x536E
    LANGUAGE = 0x22B59C
    CODEC_ID = 0x86
    CODEC_PRIVATE = 0x63A2
    CODEC_NAME = 0x258688
    CODEC_DELAY = 0x56AA
    SEEK_PRE_ROLL = 0x56BB
    CONTENT_ENCODINGS = 0x6D80
    VIDEO = 0xE0
    AUDIO = 0xE1
    SAMPLING_FREQUENCY = 0xB5
    OUTPUT_SAMPLING_FREQUENCY = 0x78B5
    CHANNELS = 0x9F
    BIT_DEPTH = 0x6264
    CLUSTER = 0x1F43B675
    TIMECODE = 0xE7
    POSITION = 0xA7
    PREV_SIZE = 0xAB
    SIMPLE_BLOCK = 0xA3
    BLOCK_GROUP = 0xA0
    BLOCK = 0xA1
    BLOCK_DURATION = 0x9B
    REFERENCE_BLOCK = 0xFB
    DISCARD_PADDING = 0x75A2
    BLOCK_ADDITIONS = 0x75A1
    CUES = 0x1C53BB6B
    CHAPTERS = 0x1043A770
    ATTACHMENTS = 0x1941A469
    TAGS = 0x1254C367
    TAG = 0x7373
    TARGETS = 0x63C0
    TARGET_TYPE_VALUE = 0x68CA
    SIMPLE_TAG = 0x67C8
    TAG_NAME = 0x45A3
    TAG_LANGUAGE = 0x447A
    TAG_DEFAULT = 0x4484
    TAG_STRING = 0x4487
    TAG_BINARY = 0x4485


# Master elements whose children we parse; anything else is a leaf (delivered whole).
MASTERS: frozenset[int] = frozenset(
    {
        ID.EBML,
        ID.SEGMENT,
        ID.SEEK_HEAD,
        ID.SEEK,
        ID.INFO,
        ID.TRACKS,
        ID.TRACK_ENTRY,
        ID.VIDEO,
        ID.AUDIO,
        ID.CONTENT_ENCODINGS,
        ID.CLUSTER,
        ID.BLOCK_GROUP,
        ID.CUES,
        ID.CHAPTERS,
        ID.ATTACHMENTS,
        ID.TAGS,
        ID.TAG,
        ID.TARGETS,
        ID.SIMPLE_TAG,
    }
)

_SEGMENT_CHILDREN = (
    ID.SEEK_HEAD, ID.INFO, ID.TRACKS, ID.CLUSTER, ID.CUES, ID.CHAPTERS, ID.ATTACHMENTS, ID.TAGS
)  # fmt: skip

# Which masters each known element may appear in. An element that may not be a child of an
# open unknown-size master ends that master (RFC 8794 §6.2).
PARENTS: dict[int, frozenset[int]] = {
    ID.EBML: frozenset(),  # top level only
    ID.SEGMENT: frozenset(),
    **{child: frozenset({ID.SEGMENT}) for child in _SEGMENT_CHILDREN},
    ID.SEEK: frozenset({ID.SEEK_HEAD}),
    ID.TRACK_ENTRY: frozenset({ID.TRACKS}),
    ID.TIMECODE: frozenset({ID.CLUSTER}),
    ID.POSITION: frozenset({ID.CLUSTER}),
    ID.PREV_SIZE: frozenset({ID.CLUSTER}),
    ID.SIMPLE_BLOCK: frozenset({ID.CLUSTER}),
    ID.BLOCK_GROUP: frozenset({ID.CLUSTER}),
    ID.TAG: frozenset({ID.TAGS}),
}
for _child in (ID.EBML_VERSION, ID.EBML_READ_VERSION, ID.EBML_MAX_ID_LENGTH,
               ID.EBML_MAX_SIZE_LENGTH, ID.DOC_TYPE, ID.DOC_TYPE_VERSION,
               ID.DOC_TYPE_READ_VERSION):  # fmt: skip
    PARENTS[_child] = frozenset({ID.EBML})
for _child in (ID.SEGMENT_UID, ID.TIMECODE_SCALE, ID.DURATION, ID.DATE_UTC, ID.TITLE,
               ID.MUXING_APP, ID.WRITING_APP):  # fmt: skip
    PARENTS[_child] = frozenset({ID.INFO})
for _child in (ID.TRACK_NUMBER, ID.TRACK_UID, ID.TRACK_TYPE, ID.FLAG_ENABLED, ID.FLAG_DEFAULT,
               ID.FLAG_FORCED, ID.FLAG_LACING, ID.DEFAULT_DURATION, ID.NAME, ID.LANGUAGE,
               ID.CODEC_ID, ID.CODEC_PRIVATE, ID.CODEC_NAME, ID.CODEC_DELAY, ID.SEEK_PRE_ROLL,
               ID.CONTENT_ENCODINGS, ID.VIDEO, ID.AUDIO):  # fmt: skip
    PARENTS[_child] = frozenset({ID.TRACK_ENTRY})
for _child in (ID.SAMPLING_FREQUENCY, ID.OUTPUT_SAMPLING_FREQUENCY, ID.CHANNELS, ID.BIT_DEPTH):
    PARENTS[_child] = frozenset({ID.AUDIO})
for _child in (ID.BLOCK, ID.BLOCK_DURATION, ID.REFERENCE_BLOCK, ID.DISCARD_PADDING,
               ID.BLOCK_ADDITIONS):  # fmt: skip
    PARENTS[_child] = frozenset({ID.BLOCK_GROUP})
for _child in (ID.TARGETS, ID.SIMPLE_TAG):
    PARENTS[_child] = frozenset({ID.TAG})
PARENTS[ID.SIMPLE_TAG] = frozenset({ID.TAG, ID.SIMPLE_TAG})
for _child in (ID.TAG_NAME, ID.TAG_LANGUAGE, ID.TAG_DEFAULT, ID.TAG_STRING, ID.TAG_BINARY):
    PARENTS[_child] = frozenset({ID.SIMPLE_TAG})
PARENTS[ID.TARGET_TYPE_VALUE] = frozenset({ID.TARGETS})

GLOBAL_IDS: frozenset[int] = frozenset({ID.VOID, ID.CRC32})
