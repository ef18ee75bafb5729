"""The control plane through boto3 (a real AWS client): every call, its errors, SigV4."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from botocore.exceptions import ClientError

from kvs_ingest.emulator import Emulator

from .conftest import StartEmulator
from .kvsclient import client, scaled


def _code(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    err = exc.value.response
    return err["Error"]["Code"], err["ResponseMetadata"]["HTTPStatusCode"]


async def call(kvs: Any, method: str, **kwargs: Any) -> Any:
    return await asyncio.to_thread(getattr(kvs, method), **kwargs)


async def test_create_describe_list_delete(emulator: Emulator) -> None:
    """A stream is created, described, listed by prefix and page, deleted by ARN, then gone."""
    kvs = client("kinesisvideo", emulator.url)
    arn = (
        await call(
            kvs,
            "create_stream",
            StreamName="alpha-1",
            DeviceName="dev",
            MediaType="audio/x-matroska",
            DataRetentionInHours=2,
        )
    )["StreamARN"]
    await call(kvs, "create_stream", StreamName="alpha-2")
    await call(kvs, "create_stream", StreamName="beta")
    info = (await call(kvs, "describe_stream", StreamName="alpha-1"))["StreamInfo"]
    assert info["StreamARN"] == arn and arn.startswith("arn:aws:kinesisvideo:us-east-1:")
    assert (info["DeviceName"], info["MediaType"], info["DataRetentionInHours"]) == (
        "dev",
        "audio/x-matroska",
        2,
    )
    assert (await call(kvs, "describe_stream", StreamARN=arn))["StreamInfo"]["StreamName"] == (
        "alpha-1"
    )
    listed = await call(
        kvs,
        "list_streams",
        StreamNameCondition={"ComparisonOperator": "BEGINS_WITH", "ComparisonValue": "alpha"},
    )
    assert [s["StreamName"] for s in listed["StreamInfoList"]] == ["alpha-1", "alpha-2"]
    page = await call(kvs, "list_streams", MaxResults=2)
    assert len(page["StreamInfoList"]) == 2 and "NextToken" in page
    rest = await call(kvs, "list_streams", MaxResults=2, NextToken=page["NextToken"])
    assert [s["StreamName"] for s in rest["StreamInfoList"]] == ["beta"]
    await call(kvs, "delete_stream", StreamARN=arn, CurrentVersion=info["Version"])
    with pytest.raises(ClientError) as exc:
        await call(kvs, "describe_stream", StreamName="alpha-1")
    assert _code(exc) == ("ResourceNotFoundException", 404)


async def test_control_plane_errors(emulator: Emulator) -> None:
    """Duplicate names, unknown streams, bad arguments and stale versions get AWS's errors."""
    kvs = client("kinesisvideo", emulator.url)
    await call(kvs, "create_stream", StreamName="s")
    cases = [
        ("create_stream", {"StreamName": "s"}, ("ResourceInUseException", 400)),
        ("create_stream", {"StreamName": "bad name!"}, ("InvalidArgumentException", 400)),
        ("describe_stream", {"StreamName": "missing"}, ("ResourceNotFoundException", 404)),
        ("describe_stream", {}, ("InvalidArgumentException", 400)),
        ("delete_stream", {"StreamARN": "arn:aws:kinesisvideo:us-east-1:1:stream/x/1"},
         ("ResourceNotFoundException", 404)),
        ("get_data_endpoint", {"StreamName": "missing", "APIName": "PUT_MEDIA"},
         ("ResourceNotFoundException", 404)),
        ("tag_stream", {"StreamName": "missing", "Tags": {"a": "b"}},
         ("ResourceNotFoundException", 404)),
        ("list_tags_for_stream", {"StreamName": "missing"}, ("ResourceNotFoundException", 404)),
        ("update_data_retention", {"StreamName": "s", "CurrentVersion": "stale",
         "Operation": "INCREASE_DATA_RETENTION", "DataRetentionChangeInHours": 1},
         ("VersionMismatchException", 400)),
        ("tag_stream", {"StreamName": "s", "Tags": {f"k{i}": "v" for i in range(51)}},
         ("TagsPerResourceExceededLimitException", 400)),
    ]  # fmt: skip
    for method, kwargs, expected in cases:
        with pytest.raises(ClientError) as exc:
            await call(kvs, method, **kwargs)
        assert _code(exc) == expected, (method, kwargs)
    info = (await call(kvs, "describe_stream", StreamName="s"))["StreamInfo"]
    with pytest.raises(ClientError) as exc:
        await call(
            kvs,
            "update_data_retention",
            StreamName="s",
            CurrentVersion=info["Version"],
            Operation="DECREASE_DATA_RETENTION",
            DataRetentionChangeInHours=5,
        )
    assert _code(exc) == ("InvalidArgumentException", 400)
    with pytest.raises(ClientError) as exc:
        await call(kvs, "delete_stream", StreamARN=info["StreamARN"], CurrentVersion="old")
    assert _code(exc) == ("VersionMismatchException", 400)


async def test_tags_and_retention(emulator: Emulator) -> None:
    """Tag/Untag/ListTags and UpdateDataRetention show in Describe, with a new Version."""
    kvs = client("kinesisvideo", emulator.url)
    await call(kvs, "create_stream", StreamName="t", Tags={"team": "a"}, DataRetentionInHours=1)
    await call(kvs, "tag_stream", StreamName="t", Tags={"session": "42"})
    assert (await call(kvs, "list_tags_for_stream", StreamName="t"))["Tags"] == {
        "team": "a",
        "session": "42",
    }
    await call(kvs, "untag_stream", StreamName="t", TagKeyList=["team"])
    assert (await call(kvs, "list_tags_for_stream", StreamName="t"))["Tags"] == {"session": "42"}
    before = (await call(kvs, "describe_stream", StreamName="t"))["StreamInfo"]
    await call(
        kvs,
        "update_data_retention",
        StreamName="t",
        CurrentVersion=before["Version"],
        Operation="INCREASE_DATA_RETENTION",
        DataRetentionChangeInHours=23,
    )
    after = (await call(kvs, "describe_stream", StreamName="t"))["StreamInfo"]
    assert after["DataRetentionInHours"] == 24 and after["Version"] != before["Version"]


async def test_creating_then_active(start_emulator: StartEmulator) -> None:
    """A new stream is CREATING for the configured delay, then ACTIVE."""
    emulator = await start_emulator(active_delay_seconds=scaled(1.0))
    kvs = client("kinesisvideo", emulator.url)
    created = time.monotonic()
    await call(kvs, "create_stream", StreamName="slow")
    assert (await call(kvs, "describe_stream", StreamName="slow"))["StreamInfo"][
        "Status"
    ] == "CREATING"
    while (await call(kvs, "describe_stream", StreamName="slow"))["StreamInfo"][
        "Status"
    ] != "ACTIVE":
        assert time.monotonic() - created < scaled(10)
        await asyncio.sleep(0.1)
    assert time.monotonic() - created >= scaled(1.0) * 0.9


async def test_get_data_endpoint_advertised_url(start_emulator: StartEmulator) -> None:
    """GetDataEndpoint returns the advertised URL for every API; a bad APIName is refused."""
    emulator = await start_emulator(advertised_url="http://kvs-emulator:4567")
    kvs = client("kinesisvideo", emulator.url)
    await call(kvs, "create_stream", StreamName="e")
    for api in ("PUT_MEDIA", "GET_MEDIA", "LIST_FRAGMENTS", "GET_MEDIA_FOR_FRAGMENT_LIST"):
        answer = await call(kvs, "get_data_endpoint", StreamName="e", APIName=api)
        assert answer["DataEndpoint"] == "http://kvs-emulator:4567"
    with pytest.raises(ClientError) as exc:
        await call(kvs, "get_data_endpoint", StreamName="e", APIName="NOPE")
    assert _code(exc) == ("InvalidArgumentException", 400)
    stats = emulator.stats.to_json()
    assert stats["calls"]["GetDataEndpoint"] == {"e": 5}


async def test_signature_errors(start_emulator: StartEmulator) -> None:
    """A wrong secret or unknown key gets 403 with AWS's names; the right credentials pass."""
    emulator = await start_emulator(access_key="AKIDEMULATOR", secret_key="s3cret")
    good = client("kinesisvideo", emulator.url, key="AKIDEMULATOR", secret="s3cret")
    assert (await call(good, "list_streams"))["StreamInfoList"] == []
    with pytest.raises(ClientError) as exc:
        await call(client("kinesisvideo", emulator.url, key="AKIDEMULATOR", secret="x"),
                   "list_streams")  # fmt: skip
    assert _code(exc) == ("InvalidSignatureException", 403)
    with pytest.raises(ClientError) as exc:
        await call(client("kinesisvideo", emulator.url, key="AKIDOTHER", secret="s3cret"),
                   "list_streams")  # fmt: skip
    assert _code(exc) == ("UnrecognizedClientException", 403)
    assert emulator.stats.to_json()["calls"] == {"ListStreams": {"": 1}}


async def test_stale_signature(tmp_path: Any) -> None:
    """A request signed more than 15 minutes away from the emulator's clock is refused."""
    from kvs_ingest.emulator import EmulatorConfig

    emulator = Emulator(
        EmulatorConfig(data_dir=tmp_path / "kvs"), clock=lambda: time.time() + 16 * 60
    )
    await emulator.start()
    try:
        with pytest.raises(ClientError) as exc:
            await call(client("kinesisvideo", emulator.url), "list_streams")
        assert _code(exc) == ("InvalidSignatureException", 403)
        assert "Signature expired" in str(exc.value)
    finally:
        await emulator.stop()
