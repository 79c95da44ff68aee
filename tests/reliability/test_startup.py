"""Start-up as an operator meets it, with real processes: a failure exits at once, non-zero,
naming the file or key; a backend that accepts connections and never answers holds up
neither start-up nor /health nor a request; a model asked while no backend can be reached is
a 502, not a 404; the start-up summary names what was loaded."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading

import httpx
import pytest
import yaml

from tests.e2e.ollama_server import OllamaTestServer
from tests.e2e.processes import REPO, GatewayProcess
from tests.reliability.helpers import assert_openai_error

#: Far longer than start-up takes; a process still running after it hangs.
GIVE_UP = 30


def _serve(tmp_path, config: dict | str) -> subprocess.CompletedProcess:
    path = tmp_path / "config.yaml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    return subprocess.run([sys.executable, "serve.py", "--config", str(path), "--port", "0"], cwd=REPO,
                          capture_output=True, text=True, timeout=GIVE_UP)


def test_an_unopenable_cache_stops_start_up_naming_the_file(tmp_path):
    done = _serve(tmp_path, {"endpoints": [], "db_path": str(tmp_path / "s.db"), "cache_enabled": True,
                             "cache_backend": "sqlite", "cache_db_path": "/nonexistent/dir/cache.db"})
    assert done.returncode == 3, done.stderr
    assert "cannot open the response cache /nonexistent/dir/cache.db (cache_db_path)" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unopenable_store_stops_start_up_naming_the_file(tmp_path):
    done = _serve(tmp_path, {"endpoints": [], "db_path": "/nonexistent/dir/store.db"})
    assert done.returncode == 3 and "/nonexistent/dir/store.db" in done.stderr, done.stderr


def test_an_unreachable_postgresql_store_stops_start_up_naming_the_key(tmp_path):
    done = _serve(tmp_path, {"endpoints": [], "store_url": "postgresql://nomyo:hunter2@127.0.0.1:1/nomyo"})
    assert done.returncode == 3, done.stderr
    assert "cannot open the PostgreSQL store (store_url)" in done.stderr
    assert "hunter2" not in done.stderr and "Traceback" not in done.stderr


def test_a_postgresql_server_that_never_answers_does_not_hold_start_up(tmp_path):
    """A server that accepts the connection and says nothing: start-up gives up (the store's
    connect timeout) and exits naming the key, well before the test's limit."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        done = _serve(tmp_path, {"endpoints": [], "store_url": f"postgresql://nomyo@127.0.0.1:{port}/nomyo"})
    assert done.returncode == 3, done.stderr
    assert "cannot open the PostgreSQL store (store_url)" in done.stderr


def test_a_bad_config_is_one_line_and_exit_2(tmp_path):
    done = _serve(tmp_path, "endpoints: []\nmax_body_bytes: -5\n")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "max_body_bytes" in done.stderr
    assert "Traceback" not in done.stderr


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never says a word."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self):
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def silent():
    server = SilentServer()
    yield server
    server.close()


async def test_a_silent_endpoint_holds_nothing_up_past_connect_timeout(silent, tmp_path):
    with OllamaTestServer(models=["tiny:latest"], loaded=["tiny:latest"]) as ollama:
        proc = GatewayProcess(tmp_path, request_log=True, endpoints=[silent.url, ollama.url],
                              connect_timeout=1).start(timeout=GIVE_UP)
        try:
            async with httpx.AsyncClient(base_url=proc.url, timeout=GIVE_UP) as http:
                health = (await http.get("/health")).json()
                [down] = [ep for ep in health["endpoints"] if ep["url"] == silent.url]
                assert down["reachable"] is False and "connect_timeout (1 s)" in down["error"]
                assert health["status"] == "ok"                     # the other endpoint answers
                unknown = await http.post("/v1/responses", json={"model": "nope", "input": "hi"})
                assert_openai_error(unknown, 404, "model_not_found")
                served = await http.post("/v1/responses", json={"model": "tiny", "input": "hi"})
                assert served.status_code == 200
        finally:
            proc.stop()
    log = proc.log.read_text()
    assert f"endpoint {silent.url} (ollama): NOT reachable: no answer within connect_timeout" in log
    assert f"endpoint {ollama.url} (ollama): reachable, models: tiny:latest" in log
    assert "auth: OFF" in log and f"store: {tmp_path / 'store.db'}" in log


async def test_a_model_asked_while_no_backend_can_be_reached_is_a_502(silent, tmp_path):
    proc = GatewayProcess(tmp_path, endpoints=[silent.url], connect_timeout=1).start(timeout=GIVE_UP)
    try:
        async with httpx.AsyncClient(base_url=proc.url, timeout=GIVE_UP) as http:
            reply = await http.post("/v1/responses", json={"model": "llama3.2", "input": "hi"})
        error = assert_openai_error(reply, 502, "backend_unavailable")
        assert silent.url in error["message"] and "connect_timeout" in error["message"]
    finally:
        proc.stop()
