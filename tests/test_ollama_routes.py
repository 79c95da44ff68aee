"""Ollama's API on the gateway's routing (``api.ollama_routes``), in front of the scripted
Ollama-protocol server: natively to Ollama endpoints, translated for OpenAI-compatible ones
(the same server's ``/v1`` as a llama.cpp or OpenAI-compatible endpoint), the listings,
model management fanned out, slots, disconnects, keys and the cache."""

from __future__ import annotations

import asyncio
import base64

import orjson
import pytest

from tests.e2e.ollama_server import DEFAULT_TEXT, THINK_TEXT, TOOL_RESULT_PREFIX, OllamaTestServer, embedding_of

import router

HI = [{"role": "user", "content": "hi"}]
WEATHER = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                             "parameters": {"type": "object",
                                                            "properties": {"city": {"type": "string"}}}}}]
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(24)).decode()


def lines(reply) -> list[dict]:
    """The NDJSON objects of a whole streamed reply (checked to be NDJSON)."""
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("application/x-ndjson")
    return [orjson.loads(line) for line in reply.text.splitlines() if line]


def ollama_error(reply, status: int, *words: str) -> str:
    """Check ``reply`` is an error in Ollama's shape ``{"error": "..."}`` naming ``words``."""
    assert reply.status_code == status, (reply.status_code, reply.text)
    body = reply.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    for word in words:
        assert word in body["error"], body
    return body["error"]


def gateway():
    return router.app.state.gateway


@pytest.fixture
async def gw(gateway_factory, ollama):
    async with gateway_factory(endpoints=[ollama.url], max_concurrent_connections=1,
                               model_aliases={"my-alias": "tiny"}) as http:
        yield http


@pytest.fixture
async def llama_gw(gateway_factory, ollama):
    """The scripted server's OpenAI layer as a llama.cpp server endpoint: every request translated."""
    async with gateway_factory(llama_server_endpoints=[f"{ollama.url}/v1"]) as http:
        yield http


# ── natively to Ollama endpoints ───────────────────────────────────────────────

async def test_chat_streams_by_default_and_goes_natively(gw, ollama):
    body = {"model": "tiny", "messages": HI, "options": {"num_ctx": 512}, "keep_alive": "1m",
            "nomyo": {"cache": False}}
    got = lines(await gw.post("/api/chat", json=body))
    assert "".join(line["message"]["content"] for line in got) == DEFAULT_TEXT
    assert [line["done"] for line in got] == [False] * (len(got) - 1) + [True]
    assert got[-1]["done_reason"] == "stop" and got[-1]["eval_count"] == 6
    sent = ollama.requests[-1]
    assert sent == {"model": "tiny:latest", "messages": HI, "options": {"num_ctx": 512}, "keep_alive": "1m"}


async def test_chat_plain(gw, ollama):
    reply = await gw.post("/api/chat", json={"model": "tiny", "messages": HI, "stream": False})
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
    answer = reply.json()
    assert answer["message"] == {"role": "assistant", "content": DEFAULT_TEXT} and answer["done"] is True
    assert answer["prompt_eval_count"] == 1 and answer["eval_count"] == 6
    assert gateway().token_stats.totals[(ollama.url, "tiny:latest")] == [1, 6]


async def test_generate_plain_and_streamed(gw, ollama):
    plain = (await gw.post("/api/generate", json={"model": "tiny", "prompt": "hi", "stream": False})).json()
    assert plain["response"] == DEFAULT_TEXT and plain["done"] is True and plain["context"] == [1, 2, 3]
    got = lines(await gw.post("/api/generate", json={"model": "tiny", "prompt": "hi [think]"}))
    assert "".join(line.get("thinking", "") for line in got) == THINK_TEXT
    assert "".join(line["response"] for line in got) == DEFAULT_TEXT and got[-1]["done"] is True
    assert ollama.requests[-1] == {"model": "tiny:latest", "prompt": "hi [think]"}


async def test_embed_and_embeddings(gw, ollama):
    embed = (await gw.post("/api/embed", json={"model": "tiny", "input": ["one", "two"]})).json()
    assert embed["embeddings"] == [embedding_of("one"), embedding_of("two")] and embed["prompt_eval_count"] == 2
    legacy = (await gw.post("/api/embeddings", json={"model": "tiny", "prompt": "one"})).json()
    assert legacy == {"embedding": embedding_of("one")}


async def test_an_alias_reaches_its_model(gw, ollama):
    answer = (await gw.post("/api/chat", json={"model": "my-alias", "messages": HI, "stream": False})).json()
    assert answer["message"]["content"] == DEFAULT_TEXT and ollama.requests[-1]["model"] == "tiny:latest"
    names = [m["name"] for m in (await gw.get("/api/tags")).json()["models"]]
    assert names == ["tiny:latest", "my-alias"]


async def test_a_stream_that_breaks_ends_with_an_error_line(gw, ollama):
    ollama.drop_after_chunks = 2
    got = lines(await gw.post("/api/chat", json={"model": "tiny", "messages": HI}))
    assert [line["message"]["content"] for line in got[:2]] == ["Hello", " from"]
    assert set(got[-1]) == {"error"} and "stream" in got[-1]["error"]
    assert gateway().registry.usage == {}


# ── translated for OpenAI-compatible endpoints ─────────────────────────────────

async def test_chat_translated_plain(llama_gw, ollama):
    body = {"model": "tiny:latest", "messages": HI, "stream": False, "format": "json", "keep_alive": 0,
            "options": {"temperature": 0.2, "num_predict": 50, "top_k": 5, "stop": ["x"]}}
    answer = (await llama_gw.post("/api/chat", json=body)).json()
    assert answer["model"] == "tiny:latest" and answer["done"] is True and answer["done_reason"] == "stop"
    assert answer["message"] == {"role": "assistant", "content": DEFAULT_TEXT}
    assert answer["prompt_eval_count"] == 1 and answer["eval_count"] == 6 and answer["total_duration"] > 0
    assert answer["created_at"].endswith("Z")
    assert ollama.requests[-1] == {"model": "tiny:latest", "messages": HI, "stream": False, "temperature": 0.2,
                                   "max_tokens": 50, "top_k": 5, "stop": ["x"],
                                   "response_format": {"type": "json_object"}}


async def test_chat_translated_streamed_with_thinking(llama_gw, ollama):
    got = lines(await llama_gw.post("/api/chat", json={"model": "tiny:latest", "think": True, "messages": [
        {"role": "user", "content": "hm [think]"}]}))
    assert "".join(line["message"].get("thinking", "") for line in got) == THINK_TEXT
    assert "".join(line["message"]["content"] for line in got) == DEFAULT_TEXT
    assert got[-1]["done"] is True and got[-1]["eval_count"] == 9 and all(not line["done"] for line in got[:-1])
    sent = ollama.requests[-1]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["chat_template_kwargs"] == {"enable_thinking": True}
    assert gateway().token_stats.totals[(f"{ollama.url}/v1", "tiny:latest")] == [2, 9]


async def test_tools_images_and_tool_results_translated(llama_gw, ollama):
    ask = {"model": "tiny:latest", "tools": WEATHER, "stream": False,
           "messages": [{"role": "user", "content": "weather?", "images": [PNG]}]}
    answer = (await llama_gw.post("/api/chat", json=ask)).json()
    call = answer["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather" and call["function"]["arguments"] == {"city": "Paris"}
    sent = ollama.requests[-1]
    assert sent["messages"][0]["content"] == [{"type": "text", "text": "weather?"}, {
        "type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]
    assert sent["tools"] == WEATHER
    history = [*ask["messages"], answer["message"], {"role": "tool", "tool_name": "get_weather", "content": "sunny"}]
    streamed = lines(await llama_gw.post("/api/chat", json={**ask, "stream": True, "messages": history}))
    assert "".join(line["message"]["content"] for line in streamed) == TOOL_RESULT_PREFIX + "sunny"
    sent = ollama.requests[-1]["messages"]
    assert sent[1]["tool_calls"][0]["function"]["arguments"] == '{"city":"Paris"}'
    assert sent[2] == {"role": "tool", "content": "sunny", "tool_call_id": sent[1]["tool_calls"][0]["id"]}


async def test_streamed_tool_calls_translated(llama_gw):
    got = lines(await llama_gw.post("/api/chat", json={"model": "tiny:latest", "tools": WEATHER, "messages": HI}))
    calls = [c for line in got for c in line["message"].get("tool_calls", [])]
    assert calls == [{"id": calls[0]["id"], "function": {"index": 0, "name": "get_weather",
                                                         "arguments": {"city": "Paris"}}}]
    assert got[-1]["done"] is True


async def test_generate_translated(llama_gw, ollama):
    plain = (await llama_gw.post("/api/generate", json={"model": "tiny:latest", "prompt": "hi", "raw": True,
                                                        "stream": False})).json()
    assert plain["response"] == DEFAULT_TEXT and plain["done"] is True and plain["eval_count"] == 6
    assert ollama.requests[-1] == {"model": "tiny:latest", "prompt": "hi", "stream": False}
    got = lines(await llama_gw.post("/api/generate", json={"model": "tiny:latest", "prompt": "hi"}))
    assert "".join(line["response"] for line in got) == DEFAULT_TEXT
    assert got[-1]["done"] is True and got[-1]["eval_count"] == 6


async def test_embeddings_translated(llama_gw, ollama):
    embed = (await llama_gw.post("/api/embed", json={"model": "tiny:latest", "input": "one",
                                                     "truncate": False})).json()
    assert embed["embeddings"] == [embedding_of("one")] and embed["prompt_eval_count"] == 1
    assert ollama.requests[-1] == {"model": "tiny:latest", "input": "one"}
    legacy = (await llama_gw.post("/api/embeddings", json={"model": "tiny:latest", "prompt": "two"})).json()
    assert legacy == {"embedding": embedding_of("two")}


async def test_a_request_that_only_loads_is_answered_at_once(llama_gw, ollama):
    answer = (await llama_gw.post("/api/generate", json={"model": "tiny:latest", "stream": False})).json()
    assert answer["done"] is True and answer["done_reason"] == "load"
    assert ollama.requests == []


@pytest.mark.parametrize("body, param", [
    ({"options": {"num_ctx": 4096}}, "options.num_ctx"),
    ({"format": "yaml"}, "format"),
    ({"think": "very"}, "think"),
    ({"options": {"num_predict": -2}}, "options.num_predict"),
    ({"messages": [{"role": "user", "content": "hi", "images": ["bm90IGFuIGltYWdl"]}]}, "messages[0].images[0]"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ({"unheard": 1}, "unheard"),
])
async def test_what_cannot_be_translated_is_named(llama_gw, ollama, body, param):
    reply = await llama_gw.post("/api/chat", json={"model": "tiny:latest", "messages": HI, **body})
    ollama_error(reply, 400, f"'{param}'")
    assert ollama.requests == [] and gateway().registry.usage == {}


@pytest.mark.parametrize("route, body, param", [
    ("generate", {"prompt": "hi", "system": "be brief"}, "system"),
    ("generate", {"prompt": "hi", "context": [1, 2]}, "context"),
    ("generate", {"prompt": "hi", "template": "{{ .Prompt }}"}, "template"),
    ("generate", {"prompt": "hi", "suffix": "end"}, "suffix"),
    ("generate", {"prompt": "hi", "raw": False}, "raw"),
    ("embed", {"input": "x", "truncate": True}, "truncate"),
    ("embed", {"input": "x", "options": {"temperature": 1}}, "options.temperature"),
])
async def test_generate_and_embed_fields_without_a_counterpart(llama_gw, route, body, param):
    ollama_error(await llama_gw.post(f"/api/{route}", json={"model": "tiny:latest", **body}), 400, f"'{param}'")


async def test_an_untranslatable_request_goes_to_the_models_ollama_endpoint(gateway_factory, ollama):
    async with gateway_factory(endpoints=[f"{ollama.url}/v1", ollama.url]) as http:
        answer = (await http.post("/api/chat", json={"model": "tiny", "stream": False, "messages": HI,
                                                     "options": {"num_ctx": 64}})).json()
        assert answer["message"]["content"] == DEFAULT_TEXT
        assert ollama.requests[-1]["options"] == {"num_ctx": 64}       # Ollama's own shape: sent natively


async def test_an_openai_compatible_endpoint_takes_the_openai_fields_only(gateway_factory, ollama):
    async with gateway_factory(endpoints=[f"{ollama.url}/v1"]) as http:
        answer = (await http.post("/api/chat", json={"model": "tiny:latest", "messages": HI, "stream": False,
                                                     "think": "high", "format": {"type": "object"}})).json()
        assert answer["message"]["content"] == DEFAULT_TEXT
        sent = ollama.requests[-1]
        assert sent["reasoning_effort"] == "high" and sent["response_format"] == {
            "type": "json_schema", "json_schema": {"name": "response", "schema": {"type": "object"}, "strict": True}}
        ollama_error(await http.post("/api/chat", json={"model": "tiny:latest", "messages": HI,
                                                        "options": {"top_k": 3}}), 400, "'options.top_k'")
        done = (await http.post("/api/generate", json={"model": "tiny:latest", "prompt": "a", "suffix": "z",
                                                       "stream": False})).json()
        assert done["response"] == DEFAULT_TEXT and ollama.requests[-1]["suffix"] == "z"


def test_logprobs_and_reasoning_come_back_in_ollamas_shape():
    from engine.ollama_translate import StreamLines, chat_answer, chat_request
    sent = chat_request({"model": "m", "messages": [{"role": "assistant", "content": "", "thinking": "hm",
                                                     "tool_calls": [{"function": {"name": "f", "arguments": {}}}]},
                                                    {"role": "tool", "content": "ok", "tool_call_id": "given"}],
                         "top_logprobs": 2}, "llama_server")
    assert sent["logprobs"] is True and sent["top_logprobs"] == 2
    assert sent["messages"][0] == {"role": "assistant", "content": None, "reasoning_content": "hm", "tool_calls": [
        {"id": "call_0_0", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
    assert sent["messages"][1]["tool_call_id"] == "given"
    logprobs = {"content": [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105],
                             "top_logprobs": [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105]}]}]}
    whole = chat_answer({"choices": [{"message": {"content": "Hi", "reasoning_content": "r"}, "logprobs": logprobs,
                                      "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 3,
                                                                                "completion_tokens": 1},
                         "timings": {"prompt_ms": 1.5, "predicted_ms": 2}}, "m", 10)
    assert whole["message"] == {"role": "assistant", "content": "Hi", "thinking": "r"}
    assert whole["logprobs"] == [{"token": "Hi", "logprob": -0.5, "top_logprobs": [{"token": "Hi", "logprob": -0.5}]}]
    assert (whole["done_reason"], whole["prompt_eval_count"], whole["eval_count"]) == ("stop", 3, 1)
    assert (whole["prompt_eval_duration"], whole["eval_duration"], whole["total_duration"]) == (1_500_000, 2_000_000, 10)
    stream = StreamLines("chat", "m")
    assert stream.feed({"choices": [{"delta": {"content": "Hi"}, "logprobs": logprobs}]})[0]["logprobs"][0]["token"] \
        == "Hi"
    assert stream.feed({"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "c", "function": {
        "name": "f", "arguments": "{\"a\":"}}]}}]}) == []
    stream.feed({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]},
                              "finish_reason": "tool_calls"}]})
    calls, done = stream.finish(5)
    assert calls["message"]["tool_calls"] == [{"id": "c", "function": {"index": 0, "name": "f", "arguments": {"a": 1}}}]
    assert done["done"] is True and done["done_reason"] == "stop" and done["total_duration"] == 5


def test_tool_call_arguments_that_are_not_an_object_are_a_backend_fault():
    from engine.ollama_translate import chat_answer
    from errors import APIError
    with pytest.raises(APIError) as fault:
        chat_answer({"choices": [{"message": {"tool_calls": [{"function": {"name": "f", "arguments": "[1"}}]}}]},
                    "m", 1)
    assert fault.value.status == 502


# ── routing, slots, disconnects ─────────────────────────────────────────────────

async def test_ollama_chat_and_responses_share_the_model_slots(gw, ollama):
    ollama.first_byte_delay = 0.3
    answers = await asyncio.gather(
        gw.post("/api/chat", json={"model": "tiny", "messages": [{"role": "user", "content": "a"}]}),
        gw.post("/v1/responses", json={"model": "tiny", "input": "b"}),
        gw.post("/api/generate", json={"model": "tiny", "prompt": "c", "stream": False}))
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert ollama.requests_total == 3 and ollama.peak_in_flight == 1
    assert gateway().registry.usage == {}


async def _leave_after_first_line(path: str, body: dict) -> bytes:
    """Send ``body`` to the running app over ASGI and leave once the first stream bytes came."""
    payload = orjson.dumps(body)
    came = asyncio.Event()
    received: list[bytes] = []
    pending = [{"type": "http.request", "body": payload, "more_body": False}]

    async def receive() -> dict:
        if pending:
            return pending.pop(0)
        await came.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            received.append(message["body"])
            came.set()

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80), "state": {},
             "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(payload)).encode())]}
    await asyncio.wait_for(router.app(scope, receive, send), 30)
    return b"".join(received)


async def _until(check, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("translated", [False, True])
async def test_a_client_that_leaves_a_stream_closes_the_upstream_one(gateway_factory, ollama, translated):
    ollama.chunk_delay = 0.05                               # the whole answer would take 50 s
    settings = {"llama_server_endpoints": [f"{ollama.url}/v1"]} if translated else {"endpoints": [ollama.url]}
    async with gateway_factory(**settings):
        seen = await _leave_after_first_line("/api/chat", {"model": "tiny:latest", "messages": [
            {"role": "user", "content": "[long]"}]})
        assert orjson.loads(seen.splitlines()[0])["done"] is False
        await _until(lambda: ollama.disconnects == 1 and ollama.in_flight == 0)
        await _until(lambda: gateway().registry.usage == {})


async def test_failover_while_an_endpoint_cannot_be_reached(gateway_factory, ollama):
    dead = OllamaTestServer(models=["tiny:latest"], loaded=["tiny:latest"]).start()
    async with gateway_factory(endpoints=[dead.url, ollama.url]) as http:
        dead.stop()
        for _ in range(2):
            answer = (await http.post("/api/chat", json={"model": "tiny", "messages": HI, "stream": False})).json()
            assert answer["message"]["content"] == DEFAULT_TEXT
        assert gateway().registry.usage == {}


# ── keys ───────────────────────────────────────────────────────────────────────

async def test_keys_tenants_and_the_admin_key(gateway_factory, ollama):
    async with gateway_factory(endpoints=[ollama.url], tenants={"a": {"keys": ["k"]}}, admin_api_key="adm") as http:
        chat = {"model": "tiny", "messages": HI, "stream": False}
        assert (await http.post("/api/chat", json=chat)).status_code == 401
        assert (await http.post("/api/chat", json=chat, headers={"Authorization": "Bearer nope"})).status_code == 401
        served = await http.post("/api/chat", json=chat, headers={"Authorization": "Bearer k"})
        assert served.json()["message"]["content"] == DEFAULT_TEXT
        assert (await http.get("/api/tags", headers={"Authorization": "Bearer k"})).status_code == 200
        pull = {"model": "other", "stream": False}
        assert (await http.post("/api/pull", json=pull, headers={"Authorization": "Bearer k"})).status_code == 403
        assert ollama.managed == []
        done = await http.post("/api/pull", json=pull, headers={"Authorization": "Bearer adm"})
        assert done.status_code == 200 and done.json()["status"] == "success"


async def test_a_router_key_is_asked_for(gateway_factory, ollama):
    async with gateway_factory(endpoints=[ollama.url], router_api_key="sekrit") as http:
        assert (await http.post("/api/generate", json={"model": "tiny", "prompt": "hi"})).status_code == 401
        served = await http.post("/api/generate", json={"model": "tiny", "prompt": "hi", "stream": False},
                                 headers={"Authorization": "Bearer sekrit"})
        assert served.json()["response"] == DEFAULT_TEXT


# ── bad requests ───────────────────────────────────────────────────────────────

async def test_bad_requests_are_named_in_ollamas_shape(gw, ollama):
    ollama_error(await gw.post("/api/chat", json={"messages": HI}), 400, "'model'")
    ollama_error(await gw.post("/api/chat", json={"model": "tiny", "messages": HI, "stream": "yes"}), 400, "'stream'")
    ollama_error(await gw.post("/api/embed", json={"model": "tiny", "input": "x", "stream": True}), 400, "stream")
    ollama_error(await gw.post("/api/chat", json={"model": "tiny", "messages": HI, "nomyo": {"cache": 1}}), 400,
                 "'nomyo'")
    ollama_error(await gw.post("/api/embed", json={"model": "tiny", "input": "x", "nomyo": {"cache": True}}), 400,
                 "cache")
    ollama_error(await gw.post("/api/chat?model=tiny", json={"model": "tiny", "messages": HI}), 400, "'model'")
    ollama_error(await gw.post("/api/chat", content=b"[1]", headers={"Content-Type": "application/json"}), 400,
                 "JSON object")
    ollama_error(await gw.post("/api/chat", json={"model": "nope", "messages": HI}), 404, "'nope'")
    ollama_error(await gw.post("/api/show", json={}), 400, "'model'")
    ollama_error(await gw.post("/api/copy", json={"source": "tiny"}), 400, "'destination'")
    ollama_error(await gw.post("/api/copy", json={"source": "tiny", "destination": "x", "stream": True}), 400,
                 "does not stream")
    ollama_error(await gw.request("DELETE", "/api/delete", json={"model": "tiny", "stream": True}), 400,
                 "does not stream")
    assert ollama.requests == [] and ollama.managed == []


async def test_an_upstream_error_keeps_its_status_and_message(gw, ollama):
    ollama.fail_status = 503
    ollama_error(await gw.post("/api/chat", json={"model": "tiny", "messages": HI}), 503, "scripted failure")
    assert gateway().registry.usage == {}


# ── listings and show ──────────────────────────────────────────────────────────

async def test_tags_ps_version_show_over_every_endpoint(gateway_factory, ollama):
    with OllamaTestServer(models=["tiny:latest", "big:7b"], loaded=["big:7b"], version="0.9.0") as second, \
            OllamaTestServer(models=["served-by-llama"]) as llama:
        async with gateway_factory(endpoints=[ollama.url, second.url],
                                   llama_server_endpoints=[f"{llama.url}/v1"]) as http:
            listed = (await http.get("/api/tags")).json()["models"]
            assert [m["name"] for m in listed] == ["tiny:latest", "big:7b", "served-by-llama"]
            assert listed[1]["details"]["parameter_size"] == "7B" and listed[2]["digest"] == ""
            running = (await http.get("/api/ps")).json()["models"]
            assert [m["name"] for m in running] == ["tiny:latest", "big:7b", "served-by-llama"]
            details = (await http.get("/api/ps_details")).json()["models"]
            assert [(m["name"], m["endpoint"]) for m in details] == [
                ("tiny:latest", ollama.url), ("big:7b", second.url), ("served-by-llama", f"{llama.url}/v1")]
            assert (await http.get("/api/version")).json() == {"version": "0.9.0"}
            shown = (await http.post("/api/show", json={"model": "big:7b"})).json()
            assert shown["modelfile"] == "FROM big:7b\n" and second.requests[-1] == {"model": "big:7b"}
            ollama_error(await http.post("/api/show", json={"model": "served-by-llama"}), 501, "OpenAI-compatible")
            ollama_error(await http.post("/api/show", json={"model": "nowhere"}), 404, "nowhere")


async def test_version_without_an_ollama_endpoint(llama_gw):
    ollama_error(await llama_gw.get("/api/version"), 503, "No Ollama endpoint")
    ollama_error(await llama_gw.post("/api/pull", json={"model": "x"}), 501, "not available")


# ── model management ───────────────────────────────────────────────────────────

@pytest.fixture
async def two(gateway_factory, ollama):
    """A gateway over two scripted Ollama servers and a llama.cpp endpoint: ``(http, first, second, llama url)``."""
    with OllamaTestServer(models=["tiny:latest"]) as second, OllamaTestServer(models=["x"]) as llama:
        async with gateway_factory(endpoints=[ollama.url, second.url], llama_server_endpoints=[f"{llama.url}/v1"],
                                   admin_api_key="adm", headers={"Authorization": "Bearer adm"}) as http:
            yield http, ollama, second, f"{llama.url}/v1"


async def test_pull_streams_every_endpoints_progress_in_turn(two):
    http, first, second, _ = two
    got = lines(await http.post("/api/pull", json={"model": "fresh"}))
    endpoints = [line["endpoint"] for line in got]
    assert endpoints == sorted(endpoints, key=[first.url, second.url].index) and set(endpoints) == {first.url,
                                                                                                   second.url}
    assert [line["status"] for line in got if line["endpoint"] == second.url][-1] == "success"
    assert first.managed == second.managed == [{"op": "pull", "model": "fresh", "stream": True}]
    answer = (await http.post("/api/chat", json={"model": "fresh", "messages": HI, "stream": False})).json()
    assert answer["message"]["content"] == DEFAULT_TEXT          # discovered again after the pull


async def test_management_combined_and_failing(two):
    http, first, second, _ = two
    done = await http.post("/api/pull", json={"model": "fresh", "stream": False})
    assert done.status_code == 200 and done.json() == {"status": "success", "endpoints": [
        {"endpoint": first.url, "status": "success"}, {"endpoint": second.url, "status": "success"}]}
    second.unpullable = {"broken:latest"}
    failed = await http.post("/api/pull", json={"model": "broken", "stream": False})
    assert failed.status_code == 500
    assert second.url in failed.json()["error"] and first.url not in failed.json()["error"]
    assert failed.json()["endpoints"][1] == {"endpoint": second.url, "status_code": 500,
                                             "error": "pull model manifest: file does not exist"}
    streamed = lines(await http.post("/api/pull", json={"model": "broken"}))
    assert streamed[-1] == {"error": "pull model manifest: file does not exist", "endpoint": second.url}
    copied = await http.post("/api/copy", json={"source": "tiny", "destination": "twin"})
    assert copied.status_code == 200 and "twin:latest" in second.models
    gone = await http.request("DELETE", "/api/delete", json={"model": "twin"})
    assert gone.status_code == 200 and "twin:latest" not in first.models + second.models
    missing = await http.request("DELETE", "/api/delete", json={"model": "twin"})
    assert missing.status_code == 404 and set(missing.json()) == {"error", "endpoints"}


async def test_management_on_one_endpoint(two):
    http, first, second, llama = two
    created = await http.post(f"/api/create?endpoint={second.url}", json={"model": "mine", "from": "tiny",
                                                                         "stream": False})
    assert created.json()["endpoints"] == [{"endpoint": second.url, "status": "success"}]
    assert first.managed == [] and second.managed[-1]["op"] == "create"
    assert "mine:latest" in gateway().registry.endpoints[second.url].models
    pushed = lines(await http.post(f"/api/push?endpoint={first.url}", json={"model": "tiny"}))
    assert pushed[-1] == {"status": "success", "endpoint": first.url}
    ollama_error(await http.post("/api/pull?endpoint=http://127.0.0.1:9", json={"model": "m"}), 400, "configured")
    ollama_error(await http.post(f"/api/pull?endpoint={llama}", json={"model": "m"}), 501, "not available")


# ── the cache ──────────────────────────────────────────────────────────────────

async def test_cache_answers_identical_requests_once(gateway_factory, ollama):
    async with gateway_factory(endpoints=[ollama.url], cache_enabled=True) as http:
        body = {"model": "tiny", "messages": HI, "stream": False, "nomyo": {"cache": True}}
        first = (await http.post("/api/chat", json=body)).json()
        again = (await http.post("/api/chat", json=body)).json()
        assert ollama.requests_total == 1 and "nomyo" not in ollama.requests[0]
        assert again["message"] == first["message"] and again["eval_count"] == first["eval_count"]
        replayed = lines(await http.post("/api/chat", json={**body, "stream": True}))
        assert [line["done"] for line in replayed] == [False, True]
        assert replayed[0]["message"]["content"] == DEFAULT_TEXT and ollama.requests_total == 1
        other = (await http.post("/api/chat", json={**body, "options": {"temperature": 0}})).json()
        assert other["done"] is True and ollama.requests_total == 2       # options are in the key


async def test_a_streamed_answer_is_cached_once_it_finished(gateway_factory, ollama):
    async with gateway_factory(llama_server_endpoints=[f"{ollama.url}/v1"], cache_enabled=True) as http:
        body = {"model": "tiny:latest", "prompt": "hi", "nomyo": {"cache": True}}
        streamed = lines(await http.post("/api/generate", json=body))
        plain = (await http.post("/api/generate", json={**body, "stream": False})).json()
        assert plain["response"] == "".join(line["response"] for line in streamed) == DEFAULT_TEXT
        assert plain["done"] is True and len(ollama.requests) == 1


async def test_a_moe_model_is_a_clear_501(gateway_factory, ollama):
    """NOMYO Router's ``moe-<model>`` names are not served: the answer says so and names the model."""
    async with gateway_factory(endpoints=[ollama.url]) as http:
        reply = await http.post("/api/chat", json={"model": "moe-tiny", "stream": False,
                                                   "messages": [{"role": "user", "content": "hi"}]})
        assert reply.status_code == 501 and "'tiny' itself" in reply.json()["error"]
        assert ollama.requests_total == 0
