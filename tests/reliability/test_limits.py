"""Request limits and bad input: 413 for large bodies (also chunked), 400 for too many
items, deep nesting, oversized metadata and malformed items; never a 5xx, never a backend call."""

from __future__ import annotations

import httpx
import orjson
import pytest

from tests.e2e.ollama_server import DEFAULT_TEXT, OllamaTestServer
from tests.e2e.processes import GatewayProcess
from tests.reliability.helpers import assert_openai_error, nested_lists, usage

LIMIT = 4096


def body_of_size(size: int, **fields) -> bytes:
    """A valid create body of exactly ``size`` bytes (the input string padded)."""
    base = orjson.dumps({"model": "tiny", "input": "", **fields})
    pad = size - len(base)
    assert pad >= 0
    return orjson.dumps({"model": "tiny", "input": "x" * pad, **fields})


async def test_body_limit_boundary_with_content_length(app_factory, ollama):
    async with app_factory(endpoints=[ollama.url], max_body_bytes=LIMIT) as http:
        exact = body_of_size(LIMIT)
        assert len(exact) == LIMIT
        reply = await http.post("/v1/responses", content=exact, headers={"content-type": "application/json"})
        assert reply.status_code == 200 and reply.json()["output_text"] == DEFAULT_TEXT
        over = body_of_size(LIMIT + 1)
        reply = await http.post("/v1/responses", content=over, headers={"content-type": "application/json"})
        assert_openai_error(reply, 413, "request_too_large")
        huge = await http.post("/v1/responses", content=b"{" + b" " * 10_000_000 + b"}")
        assert_openai_error(huge, 413, "request_too_large")
        assert ollama.requests_total == 1


@pytest.fixture(scope="module")
def limited_gateway(tmp_path_factory):
    """The gateway under uvicorn with ``max_body_bytes`` 4096 and ``max_input_items`` 5."""
    with OllamaTestServer(models=["tiny:latest"], loaded=["tiny:latest"]) as server:
        proc = GatewayProcess(tmp_path_factory.mktemp("limits"), endpoints=[server.url],
                              max_body_bytes=LIMIT, max_input_items=5).start()
        try:
            yield proc, server
        finally:
            proc.stop()


def _chunks(data: bytes, size: int):
    async def gen():
        for start in range(0, len(data), size):
            yield data[start:start + size]
    return gen()


async def test_chunked_body_over_limit_is_413(limited_gateway):
    proc, server = limited_gateway
    before = server.requests_total
    async with httpx.AsyncClient(base_url=proc.url, timeout=10) as http:
        for size in (LIMIT + 1, LIMIT * 5):
            reply = await http.post("/v1/responses", content=_chunks(body_of_size(size), 512),
                                    headers={"content-type": "application/json"})
            assert "content-length" not in reply.request.headers
            assert reply.request.headers["transfer-encoding"] == "chunked"
            assert_openai_error(reply, 413, "request_too_large")
        exact = await http.post("/v1/responses", content=_chunks(body_of_size(LIMIT), 700),
                                headers={"content-type": "application/json"})
        assert exact.status_code == 200 and exact.json()["output_text"] == DEFAULT_TEXT
        assert server.requests_total == before + 1
        assert (await http.get("/health/live")).status_code == 200
        assert (await usage(http))["in_flight"] == 0


async def test_max_input_items_over_real_uvicorn(limited_gateway):
    proc, server = limited_gateway
    async with httpx.AsyncClient(base_url=proc.url, timeout=10) as http:
        items = [{"role": "user", "content": f"m{i}"} for i in range(6)]
        assert (await http.post("/v1/responses", json={"model": "tiny", "input": items[:5]})).status_code == 200
        error = assert_openai_error(await http.post("/v1/responses", json={"model": "tiny", "input": items}), 400)
        assert error["param"] == "input"


@pytest.mark.parametrize("raw", [
    nested_lists(100_000),
    b'{"model":"tiny","input":' + nested_lists(100_000) + b"}",
    b'{"model":"tiny","input":"x","metadata":{"a":' + nested_lists(100_000) + b"}}",
    b'{"model":"tiny","input":"x","tools":[' + nested_lists(100_000) + b"]}",
    b'{"model":"tiny","input":"x","extra":' + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"}",
], ids=["top-level", "input", "metadata", "tools", "objects-in-extra-field"])
async def test_deeply_nested_json_is_400(app_factory, ollama, raw):
    async with app_factory(endpoints=[ollama.url]) as http:
        reply = await http.post("/v1/responses", content=raw, headers={"content-type": "application/json"})
        assert_openai_error(reply, 400)
        assert (await http.post("/v1/responses", json={"model": "tiny", "input": "hi"})).status_code == 200
        assert ollama.requests_total == 1


def _deep(depth: int) -> bytes:
    return nested_lists(depth)


NESTED_300 = _deep(300)


@pytest.mark.parametrize("raw", [
    b'{"model":"tiny","input":"x","extra":' + NESTED_300 + b"}",
    b'{"model":"tiny","input":"x","tools":[{"type":"function","name":"f","parameters":'
    b'{"type":"object","x":' + _deep(200) + b"}}]}",
    b'{"model":"tiny","input":"x","background":true,"extra":' + NESTED_300 + b"}",
    b'{"model":"tiny","input":"x","tools":[{"type":"function","name":"f","parameters":'
                 b'{"type":"object","x":' + NESTED_300 + b"}}]}",
    b'{"model":"tiny","input":[{"role":"user","content":[{"type":"input_text","text":"x","y":'
                 + NESTED_300 + b"}]}]}",
    b'{"model":"tiny","input":"x","text":{"format":{"type":"json_schema","name":"n","schema":'
                 b'{"x":' + NESTED_300 + b"}}}}",
    b'{"model":"tiny","input":[{"type":"function_call_output","call_id":"c","output":'
                 b'[{"type":"input_text","text":"x","y":' + NESTED_300 + b"}]}]}",
], ids=["extra-field-300", "tool-parameters-200", "background-extra-field-300", "tool-parameters-300",
        "content-part-300", "json-schema-300", "tool-output-300"])
async def test_moderately_deep_json_is_never_a_5xx(app_factory, ollama, raw):
    async with app_factory(endpoints=[ollama.url]) as http:
        reply = await http.post("/v1/responses", content=raw, headers={"content-type": "application/json"})
        assert reply.status_code < 500, reply.text[:300]
        assert (await usage(http))["in_flight"] == 0


async def test_input_items_limit_boundary(app_factory, ollama):
    async with app_factory(endpoints=[ollama.url], max_input_items=5) as http:
        items = [{"role": "user", "content": f"m{i}"} for i in range(6)]
        assert (await http.post("/v1/responses", json={"model": "tiny", "input": items[:5]})).status_code == 200
        error = assert_openai_error(await http.post("/v1/responses", json={"model": "tiny", "input": items}), 400)
        assert error["param"] == "input"
        many = [{"role": "user", "content": "m"}] * 100_000
        assert_openai_error(await http.post("/v1/responses", json={"model": "tiny", "input": many}), 400)
        assert ollama.requests_total == 1


@pytest.mark.parametrize("metadata", [
    {f"k{i}": "v" for i in range(1000)},
    {f"k{i}": "v" * 512 for i in range(17)},
    {"k": "v" * 100_000},
    {"k" * 10_000: "v"},
    {"k": 5},
    {"k": {"nested": "v"}},
    {"k": None},
    ["k", "v"],
    "k=v",
], ids=["1000-keys", "17-full-keys", "100k-value", "10k-key", "int-value", "object-value", "null-value",
        "list", "string"])
async def test_oversized_or_mistyped_metadata_is_400(app_factory, ollama, metadata):
    async with app_factory(endpoints=[ollama.url]) as http:
        reply = await http.post("/v1/responses", json={"model": "tiny", "input": "x", "metadata": metadata})
        assert assert_openai_error(reply, 400)["param"] == "metadata"
        assert ollama.requests_total == 0


async def test_metadata_at_its_limits_is_accepted_and_echoed(app_factory, ollama):
    metadata = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    async with app_factory(endpoints=[ollama.url]) as http:
        reply = await http.post("/v1/responses", json={"model": "tiny", "input": "x", "metadata": metadata})
        assert reply.status_code == 200 and reply.json()["metadata"] == metadata


BAD_BODIES = [
    b"", b"null", b"5", b'"a string"', b"[]", b"{", b'{"model": "tiny", "input": "x"',
    b'{"model": "tiny", "input": "\xff\xfe"}', b'{"model": "tiny", "input": "\\ud800"}',
    b'{"model": "tiny", "input": NaN}', b'{"model": "tiny", "input": "x", "temperature": Infinity}',
    b'{"model": "tiny", "input": "x", "max_output_tokens": 100000000000000000000000}',
    b'{"model": "tiny", "input": "x", "max_output_tokens": -1}',
    b'{"model": "tiny", "input": "x", "max_output_tokens": 1.5}',
    b'{"model": "tiny", "input": "x", "stream": "true"}',
    b'{"model": "tiny", "input": "x", "store": 1}',
    b'{"model": "", "input": "x"}', b'{"model": null, "input": "x"}', b'{"model": ["tiny"], "input": "x"}',
    b'{"model": "' + b"m" * 300 + b'", "input": "x"}',
    b'{"model": "tiny", "input": {"role": "user"}}',
    b'{"model": "tiny", "input": [1, 2]}',
    b'{"model": "tiny", "input": [{"role": "robot", "content": "x"}]}',
    b'{"model": "tiny", "input": [{"role": "user"}]}',
    b'{"model": "tiny", "input": [{"role": "user", "content": 5}]}',
    b'{"model": "tiny", "input": [{"role": "user", "content": [5]}]}',
    b'{"model": "tiny", "input": [{"role": "user", "content": [{"type": "input_text"}]}]}',
    b'{"model": "tiny", "input": [{"role": "user", "content": [{"type": "input_image"}]}]}',
    b'{"model": "tiny", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}',
    b'{"model": "tiny", "input": [{"role": "user", "content": [{"type": "video"}]}]}',
    b'{"model": "tiny", "input": [{"type": "function_call", "call_id": "c", "name": "f"}]}',
    b'{"model": "tiny", "input": [{"type": "function_call_output", "call_id": 5, "output": "x"}]}',
    b'{"model": "tiny", "input": [{"type": "function_call_output", "call_id": "c", "output": 5}]}',
    b'{"model": "tiny", "input": [{"type": "item_reference"}]}',
    b'{"model": "tiny", "input": [{"type": "computer_call"}]}',
    b'{"model": "tiny", "input": "x", "tools": [{"type": "function"}]}',
    b'{"model": "tiny", "input": "x", "tools": [{"type": "no_such_tool"}]}',
    b'{"model": "tiny", "input": "x", "tools": "all"}',
    b'{"model": "tiny", "input": "x", "tool_choice": "sometimes"}',
    b'{"model": "tiny", "input": "x", "tool_choice": {"type": "web_search"}}',
    b'{"model": "tiny", "input": "x", "text": {"format": {"type": "yaml"}}}',
    b'{"model": "tiny", "input": "x", "text": {"format": {"type": "json_schema"}}}',
    b'{"model": "tiny", "input": "x", "truncation": "sometimes"}',
    b'{"model": "tiny", "input": "x", "previous_response_id": ""}',
    b'{"model": "tiny", "input": "x", "background": true, "store": false}',
    b'{"model": "tiny", "input": "x", "top_logprobs": 21}',
]


@pytest.mark.parametrize("raw", BAD_BODIES, ids=range(len(BAD_BODIES)))
async def test_bad_bodies_are_400_and_never_reach_a_backend(app_factory, ollama, raw):
    async with app_factory(endpoints=[ollama.url]) as http:
        reply = await http.post("/v1/responses", content=raw, headers={"content-type": "application/json"})
        assert_openai_error(reply, 400)
        assert ollama.requests_total == 0
        assert (await usage(http))["in_flight"] == 0


MALFORMED_ITEMS = [
    ("summary-part-without-text", {"input": [{"role": "user", "content": [{"type": "summary_text"}]}]}),
    ("reasoning-part-without-text", {"input": [{"role": "user", "content": [{"type": "reasoning_text"}]}]}),
    ("refusal-not-a-string", {"input": [{"role": "assistant", "content": [{"type": "refusal", "refusal": 5}]},
                                        {"role": "user", "content": "x"}]}),
    ("reasoning-summary-text-not-a-string", {"input": [
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": 5}]},
        {"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]}),
    ("reasoning-content-not-a-list", {"input": [{"type": "reasoning", "content": 5},
                                                {"role": "user", "content": "y"}]}),
    ("tool-output-part-text-not-a-string", {"input": [
        {"type": "function_call_output", "call_id": "c", "output": [{"type": "input_text", "text": 5}]}]}),
    ("allowed-tools-entry-not-an-object", {"input": "x", "tool_choice": {"type": "allowed_tools", "tools": [1]}}),
    ("allowed-tools-not-a-list", {"input": "x", "tool_choice": {"type": "allowed_tools", "tools": "abc"}}),
]


@pytest.mark.parametrize("body", [b for _, b in MALFORMED_ITEMS], ids=[n for n, _ in MALFORMED_ITEMS])
async def test_malformed_items_are_400_not_500(app_factory, ollama, body):
    async with app_factory(endpoints=[ollama.url]) as http:
        reply = await http.post("/v1/responses", json={"model": "tiny", **body})
        assert_openai_error(reply, 400)
        assert (await usage(http))["in_flight"] == 0


@pytest.mark.parametrize("after", ["99999999999999999999", "-99999999999999999999"])
async def test_huge_starting_after_is_not_a_5xx(app_factory, ollama, after):
    async with app_factory(endpoints=[ollama.url]) as http:
        rid = (await http.post("/v1/responses", json={"model": "tiny", "input": "x"})).json()["id"]
        reply = await http.get(f"/v1/responses/{rid}", params={"stream": "true", "starting_after": after})
        assert reply.status_code < 500, reply.text


@pytest.mark.parametrize("params", [
    {"stream": "maybe"}, {"stream": "true", "starting_after": "x"}, {"stream": "true", "starting_after": "1.5"},
])
async def test_bad_retrieve_parameters_are_400(app_factory, ollama, params):
    async with app_factory(endpoints=[ollama.url]) as http:
        rid = (await http.post("/v1/responses", json={"model": "tiny", "input": "x"})).json()["id"]
        assert_openai_error(await http.get(f"/v1/responses/{rid}", params=params), 400)


@pytest.mark.parametrize("params", [
    {"limit": "0"}, {"limit": "101"}, {"limit": "99999999999999999999"}, {"limit": "x"}, {"order": "up"},
    {"after": "msg_nope"},
])
async def test_bad_input_items_parameters_are_400(app_factory, ollama, params):
    async with app_factory(endpoints=[ollama.url]) as http:
        rid = (await http.post("/v1/responses", json={"model": "tiny", "input": "x"})).json()["id"]
        assert_openai_error(await http.get(f"/v1/responses/{rid}/input_items", params=params), 400)
