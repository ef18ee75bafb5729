"""A session read back from the emulator the way a consumer reads KVS: boto3 ListFragments,
then GetMediaForFragmentList, its MKV cut into blocks by our EbmlReader."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import boto3

from kvs_ingest.mkv import ID, EbmlReader, Leaf, parse_block, read_uint

CREDS = {"region_name": "us-east-1", "aws_access_key_id": "test", "aws_secret_access_key": "test"}


@dataclass(frozen=True)
class Block:
    ms: int  # absolute timecode
    pcm: bytes


def list_fragments(endpoint: str, stream: str) -> tuple[Any, list[dict[str, Any]]]:
    """An archived-media client for `stream` and every fragment ListFragments gives (all pages,
    unsorted; blocking)."""
    kv = boto3.client("kinesisvideo", endpoint_url=endpoint, **CREDS)
    data_ep = kv.get_data_endpoint(StreamName=stream, APIName="LIST_FRAGMENTS")["DataEndpoint"]
    am = boto3.client("kinesis-video-archived-media", endpoint_url=data_ep, **CREDS)
    fragments: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"StreamName": stream}
    while True:
        page = am.list_fragments(**kwargs)
        fragments += page["Fragments"]
        if not page.get("NextToken"):
            return am, fragments
        kwargs = {"StreamName": stream, "NextToken": page["NextToken"]}


def read_blocks(endpoint: str, stream: str) -> tuple[list[Block], list[dict[str, Any]]]:
    """Every block of `stream` in fragment-number order, and the fragments ListFragments gave
    (blocking: call it off the event loop)."""
    am, fragments = list_fragments(endpoint, stream)
    fragments.sort(key=lambda f: int(f["FragmentNumber"]))
    numbers = [f["FragmentNumber"] for f in fragments]
    blocks: list[Block] = []
    for i in range(0, len(numbers), 500):  # the API's limit per call
        body = am.get_media_for_fragment_list(StreamName=stream, Fragments=numbers[i : i + 500])
        reader = EbmlReader()
        cluster_ms = 0
        for ev in reader.feed(body["Payload"].read()) + reader.close():
            if isinstance(ev, Leaf) and ev.id == ID.TIMECODE:
                cluster_ms = read_uint(ev.data)
            elif isinstance(ev, Leaf) and ev.id == ID.SIMPLE_BLOCK:
                b = parse_block(ev.data)
                blocks.extend(Block(cluster_ms + b.timecode, f) for f in b.frames)
    return blocks, fragments
