"""The log an operator reads, from a real process: one JSON summary line per request with its
id, tenant, route, models, endpoint, status, latency, tokens and error; ``X-Request-Id`` taken
from the client or made, and returned on every answer, streamed ones included."""

from __future__ import annotations

import time

import httpx
import orjson
import pytest

from tests.e2e.ollama_server import OllamaTestServer
from tests.e2e.processes import GatewayProcess

KEY = "tenant-key-0c9d2f4b7a18"


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    with OllamaTestServer(models=["tiny:latest"], loaded=["tiny:latest"]) as server:
        proc = GatewayProcess(tmp_path_factory.mktemp("logs"), request_log=True, endpoints=[server.url],
                              log_format="json", max_chain_items=2, **{"nomyo-router-api-key": KEY}).start()
        try:
            yield proc, server
        finally:
            proc.stop()


def _lines(proc: GatewayProcess) -> list[dict]:
    return [orjson.loads(line) for line in proc.log.read_text().splitlines() if line.startswith("{")]


def _summary(proc: GatewayProcess, request_id: str) -> dict:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = [line for line in _lines(proc) if line["logger"] == "nomyo_router.request"
                 and line["request_id"] == request_id]
        if found:
            assert len(found) == 1
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no summary line for {request_id}")


async def test_a_request_id_from_the_client_is_returned_and_logged(logged):
    proc, server = logged
    async with httpx.AsyncClient(base_url=proc.url, timeout=10, headers={"Authorization": f"Bearer {KEY}"}) as http:
        reply = await http.post("/v1/responses", json={"model": "tiny", "input": "hi"},
                                headers={"X-Request-Id": "client-id-42"})
    assert reply.status_code == 200 and reply.headers["x-request-id"] == "client-id-42"
    line = _summary(proc, "client-id-42")
    assert (line["method"], line["route"], line["status"]) == ("POST", "/v1/responses", 200)
    assert line["model"] == "tiny" and line["upstream_model"] == "tiny:latest" and line["endpoint"] == server.url
    assert line["response_id"] == reply.json()["id"] and line["response_status"] == "completed"
    assert line["input_tokens"] == reply.json()["usage"]["input_tokens"]
    assert line["output_tokens"] == reply.json()["usage"]["output_tokens"]
    assert line["latency_ms"] > 0 and len(line["tenant"]) == 8 and KEY not in proc.log.read_text()


async def test_a_streamed_answer_gets_an_id_and_its_time_to_first_byte(logged):
    proc, _server = logged
    async with httpx.AsyncClient(base_url=proc.url, timeout=10, headers={"Authorization": f"Bearer {KEY}"}) as http:
        async with http.stream("POST", "/v1/responses", json={"model": "tiny", "input": "hi", "stream": True}) as reply:
            request_id = reply.headers["x-request-id"]
            await reply.aread()
    assert request_id.startswith("req_") and len(request_id) == 28
    line = _summary(proc, request_id)
    assert 0 < line["ttfb_ms"] <= line["latency_ms"] and line["output_tokens"] > 0


async def test_errors_are_logged_with_their_cause_and_odd_ids_are_replaced(logged):
    proc, _server = logged
    async with httpx.AsyncClient(base_url=proc.url, timeout=10, headers={"Authorization": f"Bearer {KEY}"}) as http:
        reply = await http.post("/v1/responses", json={"model": "no-such-model", "input": "hi"},
                                headers={"X-Request-Id": "bad id <script>"})
        refused = await http.get("/v1/models", headers={"Authorization": "Bearer wrong"})
    assert reply.status_code == 404
    made = reply.headers["x-request-id"]
    assert made.startswith("req_")
    assert _summary(proc, made)["error"] == "model_not_found"
    assert refused.headers["x-request-id"].startswith("req_")
    assert _summary(proc, refused.headers["x-request-id"])["status"] == 401


async def test_lines_logged_inside_a_request_carry_its_id(logged):
    """The engine's own line (a chain truncated past max_chain_items) names the request."""
    proc, _server = logged
    async with httpx.AsyncClient(base_url=proc.url, timeout=10, headers={"Authorization": f"Bearer {KEY}"}) as http:
        previous = None
        for n in range(3):
            body = {"model": "tiny", "input": f"turn {n}", "truncation": "auto"}
            if previous:
                body["previous_response_id"] = previous
            reply = await http.post("/v1/responses", json=body, headers={"X-Request-Id": f"chained-{n}"})
            assert reply.status_code == 200
            previous = reply.json()["id"]
    _summary(proc, "chained-2")
    inside = [line for line in _lines(proc) if line["request_id"] == "chained-2"]
    assert [line["logger"] for line in inside] == ["nomyo_router.turn", "nomyo_router.request"]
    assert "truncation auto" in inside[0]["message"]
