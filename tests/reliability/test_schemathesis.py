"""Schemathesis against the app's own OpenAPI for the Responses routes, over the gateway
under uvicorn: no generated request (valid or not) gets a 5xx or a dropped connection.

Schemathesis runs in a child process (``schemathesis_runner.py``) outside the
repository's ``sys.path``, because the gateway's ``requests`` package shadows the
HTTP library of that name. It is found in the venv, or in the directory named by
``NOMYO_SCHEMATHESIS_PATH`` (default ``.venv/schemathesis-target``, a
``pip install --target`` of schemathesis kept off the venv's path so its pytest
plugin is not loaded into this process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

import router
from tests.e2e.ollama_server import OllamaTestServer
from tests.e2e.processes import REPO, GatewayProcess
from tests.reliability.helpers import sse, store_rows, wait_idle

RUNNER = Path(__file__).with_name("schemathesis_runner.py")
MAX_EXAMPLES = 100
BUDGET_SECONDS = 50


def _runner_env() -> dict | None:
    """The environment in which the runner can import schemathesis, or None."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    target = os.environ.get("NOMYO_SCHEMATHESIS_PATH") or str(REPO / ".venv" / "schemathesis-target")
    for extra in ([target] if Path(target).is_dir() else []) + [None]:
        trial = dict(env, PYTHONPATH=extra) if extra else env
        probe = subprocess.run([sys.executable, "-c", "import schemathesis, requests.adapters"], cwd="/",
                               env=trial, capture_output=True)
        if probe.returncode == 0:
            return trial
    return None


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory):
    env = _runner_env()
    if env is None:
        message = "schemathesis is not installed (scripts/test.sh installs it; see the module docstring)"
        if os.environ.get("NOMYO_E2E_REQUIRED"):
            pytest.fail(message)
        pytest.skip(message)
    with OllamaTestServer(models=["tiny:latest"], loaded=["tiny:latest"]) as server:
        workdir = tmp_path_factory.mktemp("schemathesis")
        proc = GatewayProcess(workdir, endpoints=[server.url], max_concurrent_connections=16).start()
        try:
            yield proc, server, env, workdir
        finally:
            proc.stop()


async def test_no_generated_request_gets_a_5xx(fuzz_target):
    proc, server, env, workdir = fuzz_target
    async with httpx.AsyncClient(base_url=proc.url, timeout=10) as http:
        ids, item_ids = [], []
        for body in ({"input": "a"}, {"input": "b", "stream": True}, {"input": "c", "background": True},
                     {"input": "d", "background": True, "stream": True}, {"input": "[think] e"},
                     {"input": "f", "previous_response_id": None}):
            if "previous_response_id" in body:
                body["previous_response_id"] = ids[0]
            reply = await http.post("/v1/responses", json={"model": "tiny", **body})
            obj = sse(reply.text)[-1]["response"] if body.get("stream") else reply.json()
            ids.append(obj["id"])
            item_ids += [item["id"] for item in obj["output"]]
    schema = workdir / "openapi.json"
    schema.write_text(json.dumps(router.app.openapi()))
    fixtures = json.dumps({"response_ids": ids, "item_ids": item_ids, "model": "tiny"})
    run = subprocess.run([sys.executable, str(RUNNER), str(schema), proc.url, str(MAX_EXAMPLES),
                          str(BUDGET_SECONDS), fixtures], cwd=workdir, env=env, capture_output=True, text=True,
                         timeout=BUDGET_SECONDS + 60)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    operations = result["operations"]
    examples = sum(op["examples"] for op in operations.values())
    server_errors = {key: op["server_errors"] for key, op in operations.items() if op["server_errors"]}
    transport = {key: op["transport_errors"] for key, op in operations.items() if op["transport_errors"]}
    print(f"\nRELIABILITY-FIGURES schemathesis: examples={examples} elapsed={result['elapsed']:.1f}s "
          f"statuses={ {k: (op['statuses'], op.get('unsatisfiable')) for k, op in operations.items()} }")
    assert proc.proc.poll() is None
    assert not transport, json.dumps(transport, indent=1)[:4000]
    assert not server_errors, json.dumps(server_errors, indent=1)[:6000]
    assert len(operations) == 10 and examples >= 500
    async with httpx.AsyncClient(base_url=proc.url, timeout=10) as http:
        await wait_idle(http, server, timeout=10)
    assert not [rid for rid, (status, _) in store_rows(workdir / "store.db").items()
                if status in ("queued", "in_progress")]
