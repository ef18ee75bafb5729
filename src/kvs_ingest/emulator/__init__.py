"""The local KVS emulator: KVS's control plane, PutMedia, GetMedia and archived media over real
HTTP with SigV4, fragments persisted on disk, and a fault-injection API (docs/EMULATOR.md)."""

from __future__ import annotations

from kvs_ingest.emulator.app import Emulator
from kvs_ingest.emulator.config import EmulatorConfig

__all__ = ["Emulator", "EmulatorConfig"]
