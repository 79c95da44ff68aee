"""Real processes for the end-to-end tier: the gateway under uvicorn, and llama-server.

Both listen on 127.0.0.1 at a free port and are stopped (or killed) by the tests.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout}s:\n{log.read_text()[-4000:]}")


class GatewayProcess:
    """The gateway (``serve.py``: uvicorn with the connection bounds) in its own process with a
    config of ``settings``."""

    def __init__(self, workdir: Path, *, request_log: bool = False, **settings):
        self.workdir = workdir
        self.request_log = request_log
        self.port = free_port()
        self.settings = {"db_path": str(workdir / "store.db"), "connect_timeout": 2, **settings}
        self.config = workdir / "config.yaml"
        self.log = workdir / "gateway.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20) -> "GatewayProcess":
        """Write the config, start uvicorn, wait until ``/health/live`` answers."""
        self.config.write_text(yaml.safe_dump(self.settings))
        env = {**os.environ, "NOMYO_ROUTER_CONFIG_PATH": str(self.config)}
        env.pop("NOMYO_ROUTER_DB_PATH", None)
        env.pop("NOMYO_ROUTER_API_KEY", None)
        self.proc = subprocess.Popen(
            [sys.executable, "serve.py", "--host", "127.0.0.1", "--port", str(self.port),
             *(() if self.request_log else ("--no-access-log",))],
            cwd=REPO, env=env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        try:
            _wait_http(f"{self.url}/health/live", self.proc, timeout, self.log)
        except BaseException:
            self.kill()  # one that never came up is not left running
            raise
        return self

    def stop(self) -> None:
        """Stop gracefully (SIGTERM), killing after a few seconds."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class LlamaServerProcess:
    """llama.cpp's ``llama-server`` serving ``model`` under the name ``alias``."""

    def __init__(self, binary: str, model: str, workdir: Path, alias: str = "tiny-llama"):
        self.binary, self.model, self.alias = binary, model, alias
        self.port = free_port()
        self.log = workdir / f"llama-server-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> "LlamaServerProcess":
        """Start the server and wait until ``/health`` says it is ready."""
        self.proc = subprocess.Popen(
            [self.binary, "-m", self.model, "--alias", self.alias, "--jinja", "--host", "127.0.0.1",
             "--port", str(self.port), "-c", "16384", "-np", "2", "-t", "1", "--no-webui",
             "--reasoning-format", "deepseek"],
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        _wait_http(f"{self.url}/health", self.proc, timeout, self.log)
        return self

    def stop(self) -> None:
        """Terminate the server."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
