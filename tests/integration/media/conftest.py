from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.media.corpus import Stream, build_ffmpeg_streams


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def ffmpeg_streams(media_dir: Path) -> dict[str, Stream]:
    """Every ffmpeg-made and browser-like test stream, made once per session."""
    return build_ffmpeg_streams(media_dir)
