"""A minimal WebDriver BiDi client for Debian's firefox-esr, headless.

Playwright's own Firefox driver needs Playwright's patched build, and its BiDi channel sends
commands this ESR does not know (`emulation.setMediaFeaturesOverride`), and Debian ships no
geckodriver. Firefox itself speaks WebDriver BiDi (W3C) on `--remote-debugging-port`, so this
module launches it with a fresh profile and talks BiDi over one WebSocket: enough to open tabs,
navigate, evaluate scripts and take screenshots. Used by scripts/record_fixtures.py and the
browser tests.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import websockets

FIREFOX = "/usr/lib/firefox-esr/firefox-esr"

# Prefs that keep a test profile quiet (no first-run pages, no network calls of its own) and give
# it a fake microphone without a permission prompt. The fake device is a sine tone whose
# frequency is `media.navigator.audio.fake_frequency` (1000 Hz by default).
BASE_PREFS: dict[str, object] = {
    "media.navigator.streams.fake": True,
    "media.navigator.permission.disabled": True,
    "media.autoplay.default": 0,
    "media.autoplay.blocking_policy": 0,
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "browser.aboutwelcome.enabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.healthreport.uploadEnabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "app.update.disabledForTesting": True,
    "app.normandy.enabled": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "browser.safebrowsing.update.enabled": False,
    "extensions.update.enabled": False,
    "remote.prefs.recommended": True,
}


# A container has no sound card: without a (mock) cubeb context an AudioContext stays
# "suspended" for ever and Web Audio sources never play. Only for pages that need Web Audio: the
# mock clock does not catch up when the machine is busy, so under load the fake microphone
# then yields far less audio than wall time (measured: 2.5 s in 4.7 s with both cores busy).
WEB_AUDIO_PREFS: dict[str, object] = {"media.cubeb.force_mock_context": True}


def firefox_path() -> str | None:
    """The firefox-esr binary, or None when it is not installed."""
    if os.path.exists(FIREFOX):
        return FIREFOX
    return shutil.which("firefox-esr")


class BidiError(Exception):
    """A BiDi command failed, or a script threw."""


class Firefox:
    """One headless firefox-esr process and its BiDi session.

    Use `async with await Firefox.launch(...) as ff:`; `close()` ends the process and removes
    the profile. Commands may run concurrently (one reader task routes replies by id).
    """

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        ws: websockets.ClientConnection,
        profile: Path,
        drain: asyncio.Task[None],
    ) -> None:
        self._proc = proc
        self._drain = drain
        self._ws = ws
        self._profile = profile
        self.version = ""
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def launch(
        cls, *, prefs: dict[str, object] | None = None, startup_seconds: float = 60.0
    ) -> Firefox:
        """Start firefox-esr headless with a new profile and open a BiDi session."""
        binary = firefox_path()
        if binary is None:
            raise FileNotFoundError("firefox-esr is not installed")
        profile = Path(tempfile.mkdtemp(prefix="kvs-ff-"))
        all_prefs = {**BASE_PREFS, **(prefs or {})}
        (profile / "user.js").write_text(
            "".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in all_prefs.items())
        )
        proc = await asyncio.create_subprocess_exec(
            binary,
            "--headless",
            "--no-remote",
            "--profile",
            str(profile),
            "--remote-debugging-port=0",
            "about:blank",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "MOZ_CRASHREPORTER_DISABLE": "1"},
        )
        try:
            url = await asyncio.wait_for(_bidi_url(proc), startup_seconds)
            ws = await websockets.connect(
                url + "/session", max_size=None, open_timeout=startup_seconds
            )
        except BaseException:
            await _end(proc)
            shutil.rmtree(profile, ignore_errors=True)
            raise
        # Keep draining stderr so a chatty browser never blocks on a full pipe.
        assert proc.stderr is not None
        drain = asyncio.create_task(_drain(proc.stderr))
        ff = cls(proc, ws, profile, drain)
        try:
            caps = await ff.command("session.new", {"capabilities": {}})
        except BaseException:
            await ff.close()
            raise
        ff.version = str(caps["capabilities"].get("browserVersion", ""))
        return ff

    async def __aenter__(self) -> Firefox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def command(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Send one BiDi command and return its result (raises BidiError on an error reply)."""
        self._next_id += 1
        cmd_id = self._next_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[cmd_id] = future
        await self._ws.send(json.dumps({"id": cmd_id, "method": method, "params": params}))
        reply = await future
        if reply.get("type") == "error":
            raise BidiError(f"{method}: {reply.get('error')}: {reply.get('message')}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def new_tab(self) -> str:
        """Open a tab; returns its browsing context id."""
        result = await self.command("browsingContext.create", {"type": "tab"})
        return str(result["context"])

    async def navigate(self, context: str, url: str) -> None:
        """Load `url` in the tab and wait for its load event."""
        await self.command(
            "browsingContext.navigate", {"context": context, "url": url, "wait": "complete"}
        )

    async def evaluate_json(self, context: str, expression: str) -> Any:
        """Evaluate `expression` (awaiting a promise) and return its JSON.stringify'd value."""
        result = await self.command(
            "script.evaluate",
            {
                "expression": f"(async () => JSON.stringify(await ({expression})))()",
                "target": {"context": context},
                "awaitPromise": True,
                "userActivation": True,
            },
        )
        if result.get("type") == "exception":
            details = result.get("exceptionDetails", {})
            raise BidiError(f"script threw: {details.get('text')}")
        value = result.get("result", {})
        if value.get("type") != "string":
            return None
        return json.loads(value["value"])

    async def screenshot(self, context: str) -> bytes:
        """A PNG of the tab's viewport."""
        result = await self.command("browsingContext.captureScreenshot", {"context": context})
        return base64.b64decode(result["data"])

    async def close(self) -> None:
        """End the session and the process, and remove the profile."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.command("session.end", {}), 5)
        with contextlib.suppress(Exception):
            await self._ws.close()
        self._reader.cancel()
        await _end(self._proc)
        self._drain.cancel()
        shutil.rmtree(self._profile, ignore_errors=True)

    async def _read(self) -> None:
        try:
            async for raw in self._ws:
                message = json.loads(raw)
                future = self._pending.pop(message.get("id", -1), None)
                if future is not None and not future.done():
                    future.set_result(message)
        except websockets.ConnectionClosed:
            pass
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(BidiError("firefox closed the BiDi connection"))


async def _bidi_url(proc: asyncio.subprocess.Process) -> str:
    """Read stderr until Firefox prints where its BiDi server listens."""
    assert proc.stderr is not None
    lines: list[str] = []
    while True:
        raw = await proc.stderr.readline()
        if not raw:
            raise RuntimeError(
                "firefox-esr exited before BiDi was ready: " + " | ".join(lines[-5:])
            )
        line = raw.decode(errors="replace").strip()
        lines.append(line)
        match = re.search(r"WebDriver BiDi listening on (ws://\S+)", line)
        if match:
            return match.group(1)


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass


async def _end(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
