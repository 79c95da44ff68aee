"""The dashboard as an operator sees it: a real gateway process in front of the scripted
Ollama-protocol server, the page open in headless Chromium (driven by playwright-core from
Node), every request the page makes recorded. A request made meanwhile shows up on the page
by itself; the page stays on the phone's width; an open stream never holds a SIGTERM up."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from tests.e2e.ollama_server import OllamaTestServer
from tests.e2e.processes import GatewayProcess

CLIENTS = Path(__file__).parent / "clients"
ADMIN = "admin-key-3f0c9e1d27ab"
TENANT = "tenant-key-84d1b6e05c3f"
GIVE_UP = 60.0
#: A grace so long that a shutdown waiting for the dashboard's stream would outlast GIVE_UP.
LONG_GRACE = 120


def _missing(message: str) -> None:
    if os.environ.get("NOMYO_E2E_REQUIRED"):
        pytest.fail(message)
    pytest.skip(message)


def _browser_pieces() -> tuple[Path, str, str]:
    """``node_modules`` with playwright-core, the chromium binary and node, or skip/fail saying which is missing."""
    clients = os.environ.get("NOMYO_NODE_CLIENTS")
    modules = Path(clients) / "node_modules" if clients else None
    if modules is None or not (modules / "playwright-core").is_dir():
        _missing("playwright-core is missing (NOMYO_NODE_CLIENTS): run `bash scripts/clients.sh` "
                 "(`bash scripts/test.sh` does)")
    chromium = os.environ.get("NOMYO_CHROMIUM") or shutil.which("chromium")
    if not (chromium and Path(chromium).exists()):
        _missing("chromium is missing (NOMYO_CHROMIUM): run `bash scripts/browser.sh` (`bash scripts/test.sh` does)")
    node = shutil.which("node")
    if node is None:
        _missing("node is not installed")
    return modules, chromium, node


@pytest.fixture
def backend():
    with OllamaTestServer(models=["tiny:latest"], loaded=["tiny:latest"]) as server:
        yield server


def _gateway(tmp_path: Path, backend: OllamaTestServer) -> GatewayProcess:
    return GatewayProcess(tmp_path, endpoints=[backend.url], admin_api_key=ADMIN, shutdown_grace=LONG_GRACE,
                          **{"nomyo-router-api-key": TENANT}).start()


class Driver:
    """The Node script, one JSON line each way (see ``clients/dashboard_browser.mjs``)."""

    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc

    async def hear(self) -> dict:
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), GIVE_UP)
            if not line:
                err = (await self.proc.stderr.read()).decode()[-3000:]
                raise AssertionError(f"the browser script ended early:\n{err}")
            if line.startswith(b"{"):
                return orjson.loads(line)

    async def say(self, data: dict) -> None:
        self.proc.stdin.write(json.dumps(data).encode() + b"\n")
        await self.proc.stdin.drain()


async def test_the_dashboard_in_a_real_browser(backend, tmp_path):
    modules, chromium, node = _browser_pieces()
    shots = Path(os.environ.get("NOMYO_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    work = tmp_path / "browser"
    work.mkdir()
    (work / "node_modules").symlink_to(modules)
    script = work / "dashboard_browser.mjs"
    script.write_text((CLIENTS / "dashboard_browser.mjs").read_text())
    gateway = _gateway(tmp_path, backend)
    driver = None
    try:
        proc = await asyncio.create_subprocess_exec(
            node, str(script), f"{gateway.url}/?api_key={ADMIN}", chromium, str(shots), cwd=work,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        driver = Driver(proc)
        ready = await driver.hear()
        assert len(ready["endpoints"]) == 1 and "reachable" in ready["endpoints"][0]
        assert "tiny:latest" in ready["endpoints"][0]

        async with httpx.AsyncClient(base_url=gateway.url, timeout=GIVE_UP,
                                     headers={"Authorization": f"Bearer {TENANT}"}) as http:
            reply = await http.post("/v1/responses", json={"model": "tiny", "input": "hi"},
                                    headers={"X-Request-Id": "browser-row-1"})
        assert reply.status_code == 200
        usage = reply.json()["usage"]
        await driver.say({"await": "browser-row-1"})
        seen = await driver.hear()                          # the row came by the stream: the page never reloaded
        assert "/v1/responses" in seen["row"] and "tiny" in seen["row"] and "200" in seen["row"]
        assert f"{usage['input_tokens']} / {usage['output_tokens']}" in seen["row"]
        assert "tiny:latest" in seen["tokens"]
        assert seen["problems"] == []                        # no CSP violation, no script error
        assert seen["overflow"] <= 0                         # nothing wider than the phone's screen
        for shot in seen["shots"]:
            assert Path(shot).stat().st_size > 10_000
            print(f"dashboard screenshot: {shot}")

        gateway.proc.send_signal(signal.SIGTERM)            # with the page's stream open
        await asyncio.to_thread(gateway.proc.wait, GIVE_UP)  # long before the grace ran out
        await driver.say({"await_offline": True})
        final = await driver.hear()
        proc.stdin.close()
        assert final["offline"] in ("offline, retrying", "reconnecting")
        origin = urlsplit(gateway.url)
        elsewhere = [r for r in final["requests"]
                     if not r["url"].startswith("data:") and urlsplit(r["url"])[:2] != origin[:2]]
        assert elsewhere == []                               # the page asked nothing but its gateway
        paths = {urlsplit(r["url"]).path for r in final["requests"]}
        assert {"/", "/api/usage-stream", "/api/config"} <= paths
        assert await asyncio.wait_for(proc.wait(), GIVE_UP) == 0
    finally:
        if driver is not None and driver.proc.returncode is None:
            driver.proc.kill()
            await driver.proc.wait()
        gateway.kill()


async def test_sigterm_with_an_open_dashboard_stream_stops_the_gateway_promptly(backend, tmp_path):
    gateway = _gateway(tmp_path, backend)
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=GIVE_UP) as http:
            async with http.stream("GET", "/api/usage-stream", params={"api_key": ADMIN}) as reply:
                assert reply.status_code == 200
                lines = reply.aiter_lines()
                async for line in lines:                     # the first snapshot: the stream is open
                    if line.startswith("data: "):
                        assert orjson.loads(line[6:])["endpoints"][0]["url"] == backend.url
                        break
                gateway.proc.send_signal(signal.SIGTERM)

                async def rest() -> list[str]:
                    return [line async for line in lines]
                await asyncio.wait_for(rest(), GIVE_UP)      # the server ended the stream, with its body closed
        # shutdown_grace is far longer than GIVE_UP: the stream did not hold the shutdown up.
        assert await asyncio.to_thread(gateway.proc.wait, GIVE_UP) == -signal.SIGTERM
    finally:
        gateway.kill()
