"""EmulatorConfig from the environment and flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvs_ingest.emulator import EmulatorConfig


def test_from_env_reads_prefix_and_aws_credentials() -> None:
    """KVS_EMULATOR_* and AWS credentials are read; non-None overrides win."""
    env = {
        "AWS_ACCESS_KEY_ID": "AKID",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "KVS_EMULATOR_PORT": "4999",
        "KVS_EMULATOR_ACTIVE_DELAY_SECONDS": "0.25",
        "KVS_EMULATOR_CLOCK_SKEW_SECONDS": "none",
        "KVS_EMULATOR_DATA_DIR": "/tmp/x",
        "KVS_EMULATOR_ADVERTISED_URL": "http://kvs:4567",
    }
    config = EmulatorConfig.from_env(env, port=None, host="0.0.0.0")
    assert (config.access_key, config.secret_key) == ("AKID", "secret")
    assert (config.port, config.host, config.active_delay_seconds) == (4999, "0.0.0.0", 0.25)
    assert config.clock_skew_seconds is None and config.data_dir == Path("/tmp/x")
    assert config.advertised_url == "http://kvs:4567"
    assert EmulatorConfig.from_env(env, port=5000).port == 5000


def test_defaults_and_bad_values() -> None:
    """Credentials default to test/test; a bad number names its variable; no secret in repr."""
    config = EmulatorConfig.from_env({})
    assert (config.access_key, config.secret_key) == ("test", "test")
    assert "secret" not in repr(EmulatorConfig(secret_key="secret"))
    with pytest.raises(ValueError, match="KVS_EMULATOR_PORT"):
        EmulatorConfig.from_env({"KVS_EMULATOR_PORT": "many"})
    with pytest.raises(ValueError):
        EmulatorConfig(timecode_check="sometimes")
