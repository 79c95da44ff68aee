"""The turn engine: what reaches each kind of endpoint, the seam it reads, one slot per turn,
one final state per run, and the layering of the modules."""

from __future__ import annotations

import ast
import asyncio
import subprocess
import sys
from pathlib import Path
from unittest.mock import AsyncMock, patch

import pytest

import router
from conformance import (Backend, assert_openai_error, chat_completion, check_stream, create, create_stream,
                         text_chunks)
from test_conformance_native import message, upstream_response

ROOT = Path(__file__).resolve().parent.parent

#: A turn only an upstream Responses API can take: Chat Completions has no file ids.
FILE_ID_PARTS = [{"type": "input_text", "text": "Summarize the report and describe the chart."},
                 {"type": "input_file", "file_id": "file-report123"},
                 {"type": "input_image", "file_id": "file-chart456", "detail": "high"}]
FILE_ID_INPUT = [{"type": "message", "role": "user", "content": FILE_ID_PARTS}]


async def test_native_endpoint_receives_file_ids_unchanged(client):
    with Backend(upstream_response([message("A summary.")]), native=True, model="gpt-5-mini") as backend:
        obj = await create(client, {"model": "gpt-5-mini", "input": FILE_ID_INPUT, "instructions": "Be brief."})
    assert obj["output_text"] == "A summary."
    assert backend.chat.call_count == 0                                # no Chat Completions call was attempted
    sent = backend.native_params[0]
    assert sent["input"] == [{"type": "message", "role": "user", "content": FILE_ID_PARTS}]
    assert sent["instructions"] == "Be brief." and sent["store"] is False
    assert backend.decrement.call_count == 1


async def test_native_stream_with_file_ids_reaches_upstream(client):
    from test_conformance_native import upstream_events
    final = upstream_response([message("Streamed.")])
    with Backend(upstream_events(final), native=True, model="gpt-5-mini") as backend:
        events = await create_stream(client, {"model": "gpt-5-mini", "input": FILE_ID_INPUT, "store": False})
    summary = check_stream(events)
    assert summary.response["output_text"] == "Streamed."
    assert backend.native_params[0]["input"][0]["content"] == FILE_ID_PARTS
    assert backend.native_params[0]["stream"] is True
    assert backend.decrement.call_count == 1


async def test_chat_endpoint_answers_400_for_file_ids_and_gives_the_slot_back(client):
    with Backend(chat_completion("never")) as backend:
        reply = await client.post("/v1/responses", json={"model": "m", "input": FILE_ID_INPUT})
    error = assert_openai_error(reply, 400)
    assert error["param"].startswith("input") and "file_id" in error["message"]
    assert backend.chat.call_count == 0 and backend.decrement.call_count == 1


async def test_the_seam_is_read_at_call_time(client):
    """Patching ``api.responses`` after start-up changes what the running gateway calls."""
    import api.responses as api_responses
    with Backend(chat_completion("first")) as backend:
        assert (await create(client, {"model": "m", "input": "hi"}))["output_text"] == "first"
        replacement = AsyncMock(return_value=chat_completion("second"))
        with patch.object(api_responses, "create_chat_with_retries", replacement):
            assert (await create(client, {"model": "m", "input": "hi"}))["output_text"] == "second"
    assert backend.chat.call_count == 1 and replacement.call_count == 1
    assert router.app.state.gateway.calls is api_responses


@pytest.mark.parametrize("mode", ["plain", "stream", "background", "background-stream"])
@pytest.mark.parametrize("outcome", ["answer", "upstream-error", "broken-stream"])
async def test_one_slot_given_back_per_turn(client, mode, outcome):
    from backends import BackendStreamError
    from errors import APIError
    stream = "stream" in mode
    if outcome == "answer":
        result = text_chunks("Hi", " there") if stream else chat_completion("Hi there")
    elif outcome == "upstream-error":
        result = None
    else:
        result = text_chunks("Hi")[:1] + [BackendStreamError("dropped")] if stream else chat_completion("ok")
    body = {"model": "m", "input": "hi", "stream": stream, "background": "background" in mode}
    with Backend(*([] if result is None else [result])) as backend:
        if result is None:
            backend.chat.side_effect = APIError(503, "overloaded")
        reply = await client.post("/v1/responses", json=body)
        if "background" in mode:
            from conformance import parse_sse
            rid = parse_sse(reply.content)[0]["response"]["id"] if stream else reply.json()["id"]
            await router.app.state.gateway.jobs.wait(rid)
    assert backend.decrement.call_count == 1, (mode, outcome, reply.status_code)


async def test_a_run_settles_once(client):
    """However many of its followers end it, a run decides and records one final state."""
    from engine.runner import TurnRun
    from engine.turn import prepare_turn
    gateway = router.app.state.gateway
    turn = await prepare_turn(gateway.store, {"model": "m", "input": "hi", "stream": True}, None)
    with Backend(text_chunks("Hello", " you")) as backend:
        run = TurnRun(gateway, turn)
        await run.open()
        await run.begin_stream()
        batches = run.events()
        first = await batches.__anext__()
        assert [e["type"] for e in first] == ["response.created", "response.in_progress"]
        await batches.aclose()                                          # the follower left
        assert run.final["status"] == "cancelled"
        assert await run.settle(asyncio.CancelledError()) == run.closing
        assert await run.settle(None) == run.closing
    assert backend.decrement.call_count == 1
    row = await gateway.store.get_response(turn.id)
    assert row["status"] == "cancelled"


# ── layering ───────────────────────────────────────────────────────────────────

def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


APP_MODULES = {"router", "api", "engine", "backends", "db", "cache", "config", "errors", "metrics", "preflight"}


@pytest.mark.parametrize("path", sorted((ROOT / "requests").glob("*.py")), ids=lambda p: p.name)
def test_requests_imports_nothing_of_the_app(path):
    assert not (_imports(path) & (APP_MODULES | {"fastapi", "starlette", "anyio"}))


@pytest.mark.parametrize("path", sorted([*(ROOT / "engine").glob("*.py"), ROOT / "backends.py", ROOT / "db.py",
                                         ROOT / "cache.py", ROOT / "errors.py", ROOT / "config.py"]),
                         ids=lambda p: p.name)
def test_below_api_nothing_speaks_http_or_imports_upward(path):
    assert not (_imports(path) & {"fastapi", "starlette", "api", "router"})


def test_no_module_is_much_over_600_lines():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines())
             for p in [*ROOT.glob("*.py"), *ROOT.glob("api/*.py"), *ROOT.glob("engine/*.py"),
                       *ROOT.glob("requests/*.py")]}
    assert max(sizes.values()) <= 620, sizes


# ── the requests package ───────────────────────────────────────────────────────

def test_requests_is_this_projects_package():
    import requests
    import requests.responses
    assert Path(requests.__file__).resolve() == ROOT / "requests" / "__init__.py"
    assert hasattr(requests.responses, "responses_input_to_messages")


def test_start_up_stops_with_one_sentence_when_another_requests_wins(tmp_path):
    other = tmp_path / "requests"
    other.mkdir()
    (other / "__init__.py").write_text("")
    code = "import sys; sys.path.insert(0, sys.argv[1]); import router"
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(other) in lines[0] and "this project's requests/ package" in lines[0]


# ── model aliases ──────────────────────────────────────────────────────────────

async def test_a_model_alias_reaches_its_model_and_reports_the_name_asked_for(gateway_factory):
    from tests.e2e.ollama_server import DEFAULT_TEXT, OllamaTestServer
    with OllamaTestServer(models=["tiny:latest"], loaded=["tiny:latest"]) as ollama:
        async with gateway_factory(endpoints=[ollama.url], model_aliases={"gpt-5.1-codex": "tiny"}) as http:
            obj = await create(http, {"model": "gpt-5.1-codex", "input": "hi"})
            events = await create_stream(http, {"model": "gpt-5.1-codex", "input": "hi", "store": False})
            models = (await http.get("/v1/models")).json()["data"]
            unknown = await http.post("/v1/responses", json={"model": "gpt-5.1", "input": "hi"})
        asked = [body["model"] for body in ollama.requests]
    assert obj["model"] == "gpt-5.1-codex" and obj["output_text"] == DEFAULT_TEXT
    assert check_stream(events).response["model"] == "gpt-5.1-codex"
    assert asked == ["tiny:latest", "tiny:latest"]
    assert {"gpt-5.1-codex", "tiny:latest"} <= {m["id"] for m in models}
    assert assert_openai_error(unknown, 404)["code"] == "model_not_found"


async def test_an_aliased_native_model_reports_the_name_asked_for(client):
    router.app.state.gateway.settings.model_aliases["codex-local"] = "gpt-5-mini"
    try:
        with Backend(upstream_response([message("Hi.")]), native=True, model="gpt-5-mini") as backend:
            obj = await create(client, {"model": "codex-local", "input": "hi"})
        assert backend.choose_endpoint.call_args.args[1] == "gpt-5-mini"
    finally:
        del router.app.state.gateway.settings.model_aliases["codex-local"]
    assert obj["model"] == "codex-local"


def test_an_alias_may_not_point_at_another_alias():
    from config import Settings
    with pytest.raises(ValueError, match="points at another alias"):
        Settings(model_aliases={"a": "b", "b": "c"})


async def test_background_input_chat_cannot_express_is_400_without_native_endpoints(client):
    with Backend(chat_completion("never")) as backend:
        reply = await client.post("/v1/responses", json={"model": "m", "input": FILE_ID_INPUT, "background": True})
    assert assert_openai_error(reply, 400)["param"].startswith("input")
    assert backend.choose_endpoint.call_count == 0


async def test_a_store_that_cannot_be_written_still_ends_a_failed_stream(client, monkeypatch):
    from backends import BackendStreamError
    gateway = router.app.state.gateway

    async def locked(*args, **kwargs):
        raise RuntimeError("database is locked")
    with Backend(text_chunks("Hi")[:1] + [BackendStreamError("dropped")]):
        monkeypatch.setattr(gateway.store, "update_response", locked)
        events = await create_stream(client, {"model": "m", "input": "hi"})
    assert [e["type"] for e in events][-2:] == ["error", "response.failed"]


@pytest.mark.parametrize("bad", ["number-as-text", "string-token-count"])
async def test_a_malformed_chunk_ends_the_stream_failed(client, bad):
    from conformance import chat_usage, chunk
    broken = chunk(content=5) if bad == "number-as-text" else chunk(
        empty_choices=True, usage={**chat_usage(), "completion_tokens": "7"})
    chunks = [chunk(role="assistant", content=""), chunk(content="Hel"), broken, chunk(finish_reason="stop")]
    for background in (False, True):
        with Backend(chunks):
            body = {"model": "m", "input": "hi", "stream": True, "background": background}
            events = await create_stream(client, body)
            rid = events[0]["response"]["id"]
            await router.app.state.gateway.jobs.wait(rid)
        assert [e["type"] for e in events][-2:] == ["error", "response.failed"]
        assert events[-2]["code"] == "server_error" and "Chat Completions format" in events[-2]["message"]
        check_stream(events, queued=background)
        row = await router.app.state.gateway.store.get_response(rid)
        assert row["status"] == "failed", row["status"]
        assert row["response"]["output"][0]["content"][0]["text"] == "Hel", row["response"]["output"]


async def test_background_creates_past_the_limit_are_429(gateway_factory):
    from tests.e2e.ollama_server import OllamaTestServer
    with OllamaTestServer(models=["tiny:latest"], loaded=["tiny:latest"], first_byte_delay=2.0) as ollama:
        async with gateway_factory(endpoints=[ollama.url], max_background_jobs=2,
                                   max_concurrent_connections=4) as http:
            body = {"model": "tiny", "input": "hi", "background": True}
            accepted = [await http.post("/v1/responses", json=body) for _ in range(2)]
            refused = await http.post("/v1/responses", json=body)
            assert [r.status_code for r in accepted] == [200, 200]
            assert assert_openai_error(refused, 429)["code"] == "too_many_background_jobs"
            for reply in accepted:
                await router.app.state.gateway.jobs.wait(reply.json()["id"])
            assert (await http.post("/v1/responses", json=body)).status_code == 200


async def test_a_trickling_backend_cannot_hold_a_slot_past_the_deadline(gateway_factory):
    from tests.e2e.ollama_server import OllamaTestServer
    with OllamaTestServer(models=["tiny:latest"], loaded=["tiny:latest"], chunk_delay=0.2) as ollama:
        async with gateway_factory(endpoints=[ollama.url], upstream_deadline=1, request_timeout=30) as http:
            started = asyncio.get_running_loop().time()
            events = await create_stream(http, {"model": "tiny", "input": "[long]"})
            assert asyncio.get_running_loop().time() - started < 5
            assert [e["type"] for e in events][-2:] == ["error", "response.failed"]
            assert "upstream_deadline" in events[-2]["message"]
            ollama.chunk_delay, ollama.first_byte_delay = 0.0, 3.0
            whole = await http.post("/v1/responses", json={"model": "tiny", "input": "hi"})
            assert assert_openai_error(whole, 504)["code"] == "upstream_timeout"
            assert (await http.get("/api/usage")).json()["in_flight"] == 0


async def test_a_stream_is_not_reported_completed_before_its_final_state_is_stored(client, monkeypatch):
    gateway = router.app.state.gateway

    async def locked(*args, **kwargs):
        raise RuntimeError("database is locked")
    with Backend(text_chunks("Hi", " there")):
        monkeypatch.setattr(gateway.store, "update_response", locked)
        events = await create_stream(client, {"model": "m", "input": "hi"})
    summary = check_stream(events)
    assert [e["type"] for e in events][-2:] == ["error", "response.failed"]
    assert "could not be stored" in events[-2]["message"] and summary.items[0]["content"][0]["text"] == "Hi there"


# ── input the model refused ───────────────────────────────────────────────────

WEATHER_TOOL = [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}]
IMAGE_INPUT = [{"type": "message", "role": "user", "content": [
    {"type": "input_text", "text": "what is this"}, {"type": "input_image", "image_url": "http://i/x.png"}]}]


@pytest.mark.parametrize("stream", [False, True])
async def test_tools_a_model_refuses_are_left_out_and_the_response_says_so(client, stream):
    from conformance import aiter_chunks
    from errors import APIError
    answer = aiter_chunks(text_chunks("No tools here.")) if stream else chat_completion("No tools here.")
    body = {"model": "m", "input": "weather?", "tools": WEATHER_TOOL, "metadata": {"mine": "kept"}, "stream": stream}
    with Backend() as backend:
        backend.chat.side_effect = [APIError(400, "registry.ollama.ai/library/x does not support tools"), answer]
        obj = check_stream(await create_stream(client, body)).response if stream else await create(client, body)
    first, second = backend.chat_params
    assert "tools" in first and "tools" not in second and "tool_choice" not in second
    assert obj["output_text"] == "No tools here." and obj["status"] == "completed"
    assert obj["metadata"]["mine"] == "kept"
    assert "does not accept tools" in obj["metadata"]["nomyo_notice"]
    stored = (await client.get(f"/v1/responses/{obj['id']}")).json()
    assert stored["metadata"] == obj["metadata"]


async def test_images_a_model_refuses_are_left_out_and_the_response_says_so(client):
    from errors import APIError
    with Backend() as backend:
        backend.chat.side_effect = [APIError(500, "image input is not supported - hint: provide the mmproj"),
                                    chat_completion("A guess.")]
        obj = await create(client, {"model": "m", "input": IMAGE_INPUT})
    assert isinstance(backend.chat_params[0]["messages"][0]["content"], list)
    assert backend.chat_params[1]["messages"][0]["content"] == "what is this"
    assert "does not accept images" in obj["metadata"]["nomyo_notice"]


async def test_an_answer_given_everything_it_asked_for_has_no_notice(client):
    with Backend(chat_completion("Sunny.")):
        obj = await create(client, {"model": "m", "input": "weather?", "tools": WEATHER_TOOL})
    assert obj["metadata"] == {}


async def test_another_backend_error_is_not_taken_for_a_refusal(client):
    from errors import APIError
    with Backend() as backend:
        backend.chat.side_effect = [APIError(400, "the context is too long")]
        reply = await client.post("/v1/responses", json={"model": "m", "input": "x", "tools": WEATHER_TOOL})
    assert assert_openai_error(reply, 400)["message"] == "the context is too long"
    assert backend.chat.call_count == 1
