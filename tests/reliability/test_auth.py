"""Authentication on every route, unguessable ids, and tenant isolation of stored responses."""

from __future__ import annotations

import asyncio
import math
import re
from collections import Counter

import pytest

import router
from api.guard import ADMIN_PATHS
from tests.e2e.ollama_server import DEFAULT_TEXT
from tests.reliability.helpers import assert_openai_error, poll_status, sse, usage, wait_idle

KEY_A = "tenant-a-3f9c2e71d0b84a56"
KEY_B = "tenant-b-81d7a0c4e29f6b35"
ADMIN_KEY = "admin-5c1e9b07f3a24d68"
KEYS = {"nomyo-router-api-key": [KEY_A, KEY_B], "admin_api_key": ADMIN_KEY}
A = {"Authorization": f"Bearer {KEY_A}"}
B = {"Authorization": f"Bearer {KEY_B}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
FAKE_ID = "resp_" + "ab" * 24


def _flat_routes(routes, prefix: str = ""):
    """``(path, route)`` of every route, descending into included routers (which newer
    FastAPI keeps as ``_IncludedRouter`` entries of ``app.routes``)."""
    for route in routes:
        if hasattr(route, "path"):
            yield prefix + route.path, route
        else:
            context = getattr(route, "include_context", None)
            inner = getattr(route, "original_router", None) or getattr(route, "router", None)
            assert inner is not None, f"unknown route type {type(route).__name__}"
            yield from _flat_routes(inner.routes, prefix + (getattr(context, "prefix", "") or ""))


def app_route_calls() -> list[tuple[str, str]]:
    """``(method, path)`` for every route of the app, path parameters filled in."""
    calls = []
    for path, route in _flat_routes(router.app.routes):
        path = re.sub(r"\{[^}]+\}", FAKE_ID, path)
        methods = set(getattr(route, "methods", None) or {"GET"}) - {"HEAD", "OPTIONS"}
        calls.extend((method, path) for method in sorted(methods))
    return calls


ROUTE_CALLS = app_route_calls()
ADMIN_ROUTES = [call for call in ROUTE_CALLS if call[1] in ADMIN_PATHS]
PROTECTED = [call for call in ROUTE_CALLS if call[1] != "/health/live" and call not in ADMIN_ROUTES]


def test_route_inventory_is_complete():
    paths = {path for _, path in ROUTE_CALLS}
    for expected in ("/v1/responses", f"/v1/responses/{FAKE_ID}", f"/v1/responses/{FAKE_ID}/cancel",
                     f"/v1/responses/{FAKE_ID}/input_items", "/v1/models", "/health", "/health/live",
                     "/api/usage", "/v1/usage", "/metrics", "/openapi.json"):
        assert expected in paths
    assert ("DELETE", f"/v1/responses/{FAKE_ID}") in ROUTE_CALLS


async def test_every_route_but_liveness_needs_a_key(app_factory):
    async with app_factory(**KEYS) as http:
        assert (await http.get("/health/live")).status_code == 200
        for method, path in PROTECTED + [("GET", "/v1/unknown"), ("POST", "/v1/chat/completions")]:
            missing = await http.request(method, path)
            error = assert_openai_error(missing, 401, "missing_api_key")
            assert error["type"] == "authentication_error", (method, path)
            wrong_cases = [
                {"headers": {"Authorization": "Bearer not-a-key"}},
                {"headers": {"Authorization": f"Bearer {KEY_A[:-1]}"}},          # a prefix of a key
                {"headers": {"Authorization": f"Bearer {KEY_A}x"}},              # a key plus a suffix
                {"headers": {"Authorization": f"Bearer {KEY_A.upper()}"}},
                {"headers": {"Authorization": f"Basic {KEY_A}"}},                # not a bearer token
                {"headers": {"Authorization": "Bearer "}},
                {"params": {"api_key": "not-a-key"}},
            ]
            for wrong in wrong_cases:
                reply = await http.request(method, path, **wrong)
                error = assert_openai_error(reply, 401, "invalid_api_key")     # as OpenAI answers a wrong key
                assert error["type"] == "authentication_error", (method, path, wrong)
                assert "not-a-key" not in reply.text and KEY_A not in reply.text
            for right in ({"headers": A}, {"headers": B}, {"params": {"api_key": KEY_B}}):
                reply = await http.request(method, path, **right)
                assert reply.status_code not in (401, 403), (method, path, right, reply.text)
            assert_openai_error(await http.request(method, path, headers=ADMIN), 401, "invalid_api_key")


async def test_the_gateway_wide_routes_need_the_admin_key(app_factory):
    """/health, /api/usage, /metrics, the dashboard, the token statistics, the cache's routes and
    model management show (or change) every endpoint and every tenant's activity: tenant keys
    get 403, the admin key reads them, and without an admin key nobody does."""
    async with app_factory(**KEYS) as http:
        assert {("GET", "/health"), ("GET", "/api/usage"), ("GET", "/v1/usage"), ("GET", "/metrics")} <= set(ADMIN_ROUTES)
        for method, path in ADMIN_ROUTES:
            assert_openai_error(await http.request(method, path), 401, "missing_api_key")
            for headers in (A, B):
                reply = await http.request(method, path, headers=headers)
                assert_openai_error(reply, 403, "admin_key_required")
            wrong = await http.request(method, path, headers={"Authorization": "Bearer not-a-key"})
            assert_openai_error(wrong, 401, "invalid_api_key")
            if path == "/api/usage-stream":
                continue        # an endless stream: the dashboard's tests read it with the admin key
            reply = await http.request(method, path, headers=ADMIN)
            assert reply.status_code not in (401, 403), (path, reply.text)      # a 400 for a body left out
            assert "admin_key_required" not in reply.text
    async with app_factory(**{"nomyo-router-api-key": [KEY_A], "admin_api_key": None}) as http:
        for method, path in ADMIN_ROUTES:
            error = assert_openai_error(await http.request(method, path, headers=A), 403, "admin_key_required")
            assert "admin_api_key" in error["message"]


async def test_liveness_answers_with_any_or_no_key(app_factory):
    async with app_factory(**KEYS) as http:
        for headers in ({}, A, {"Authorization": "Bearer wrong"}):
            reply = await http.get("/health/live", headers=headers)
            assert reply.status_code == 200 and reply.json() == {"status": "ok"}


async def test_query_key_authenticates_a_create(app_factory, ollama):
    async with app_factory(endpoints=[ollama.url], **KEYS) as http:
        reply = await http.post("/v1/responses", params={"api_key": KEY_A}, json={"model": "tiny", "input": "hi"})
        assert reply.status_code == 200 and reply.json()["output_text"] == DEFAULT_TEXT
        rid = reply.json()["id"]
        assert (await http.get(f"/v1/responses/{rid}", headers=A)).status_code == 200
        assert (await http.get(f"/v1/responses/{rid}", params={"api_key": KEY_B})).status_code == 404


def _alphabet_size(tokens: list[str]) -> int:
    chars = set("".join(tokens))
    if chars <= set("0123456789abcdef") or chars <= set("0123456789ABCDEF"):
        return 16
    if chars <= set("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"):
        return 62
    return 64


def assert_unguessable(ids: list[str], prefix: str) -> None:
    """``ids`` carry >= 128 random bits: unique, long enough for their alphabet, and every
    position of the random part uniformly spread (no counter, clock or shared prefix)."""
    assert len(set(ids)) == len(ids)
    tokens = []
    for rid in ids:
        assert rid.startswith(prefix + "_"), rid
        tokens.append(rid[len(prefix) + 1:])
    lengths = {len(t) for t in tokens}
    assert len(lengths) == 1, lengths
    length = lengths.pop()
    alphabet = _alphabet_size(tokens)
    assert length * math.log2(alphabet) >= 128, (length, alphabet)
    n = len(tokens)
    for pos in range(length):
        seen = Counter(t[pos] for t in tokens)
        # n uniform draws from the alphabet leave few symbols unseen; a clock or counter digit would
        assert len(seen) >= min(alphabet, n) * 0.6, (pos, seen)
        assert max(seen.values()) <= n / alphabet * 3 + 8, (pos, seen)
    counts = Counter("".join(tokens))
    hex_digits = "0123456789abcdef" if set(counts) <= set("0123456789abcdef") else "0123456789ABCDEF"
    symbols = set(hex_digits) if alphabet == 16 else set(counts)
    expected = n * length / alphabet
    chi2 = sum((counts.get(c, 0) - expected) ** 2 / expected for c in symbols)
    assert chi2 < alphabet * 4 + 40, chi2          # far beyond any plausible value for uniform symbols
    # two random ids agree in about length/alphabet positions
    pairs = list(zip(tokens, tokens[1:]))
    mean_same = sum(sum(a == b for a, b in zip(x, y)) for x, y in pairs) / len(pairs)
    assert mean_same < length / alphabet * 2 + 1, mean_same


async def test_ids_are_unguessable(app_factory, ollama):
    async with app_factory(endpoints=[ollama.url], max_concurrent_connections=8, **KEYS) as http:
        response_ids, message_ids = [], []
        for i in range(256):
            body = {"model": "tiny", "input": f"hi {i}", "store": i % 2 == 0}
            obj = (await http.post("/v1/responses", headers=A if i % 3 else B, json=body)).json()
            response_ids.append(obj["id"])
            message_ids.append(obj["output"][0]["id"])
        assert_unguessable(response_ids, "resp")
        assert_unguessable(message_ids, "msg")


def test_id_checker_rejects_weak_ids():
    weak = [f"resp_{i:048x}" for i in range(256)]                       # a counter
    with pytest.raises(AssertionError):
        assert_unguessable(weak, "resp")
    short = [f"resp_{(i * 2654435761) % 2**64:016x}" for i in range(256)]  # 64 bits only
    with pytest.raises(AssertionError):
        assert_unguessable(short, "resp")


# ── ownership ──────────────────────────────────────────────────────────────────

async def test_other_tenant_cannot_cancel_or_stream_a_background_response(app_factory, ollama):
    ollama.first_byte_delay = 0.6
    async with app_factory(endpoints=[ollama.url], max_concurrent_connections=4, **KEYS) as http:
        body = {"model": "tiny", "input": "hi", "background": True}
        queued = (await http.post("/v1/responses", headers=A, json=body)).json()
        rid = queued["id"]
        await poll_status(http, rid, until=("in_progress",), headers=A)
        for kwargs in ({"headers": B}, {"params": {"api_key": KEY_B}}):
            assert_openai_error(await http.post(f"/v1/responses/{rid}/cancel", **kwargs), 404, "response_not_found")
            streamed = await http.get(f"/v1/responses/{rid}", params={"stream": "true", **kwargs.get("params", {})},
                                      headers=kwargs.get("headers"))
            assert_openai_error(streamed, 404, "response_not_found")
            replay = await http.get(f"/v1/responses/{rid}", headers=kwargs.get("headers"),
                                    params={"stream": "true", "starting_after": 0, **kwargs.get("params", {})})
            assert_openai_error(replay, 404)
            assert_openai_error(await http.get(f"/v1/responses/{rid}/input_items", **kwargs), 404)
            assert_openai_error(await http.delete(f"/v1/responses/{rid}", **kwargs), 404)
        assert (await usage(http, ADMIN))["background_jobs"] == 1         # still running for its owner
        done = await poll_status(http, rid, headers=A)
        assert done["status"] == "completed" and done["output_text"] == DEFAULT_TEXT
        events = sse((await http.get(f"/v1/responses/{rid}", headers=A, params={"stream": "true"})).text)
        assert events[-1]["type"] == "response.completed"
        await wait_idle(http, ollama, headers=ADMIN)


async def test_other_tenant_cannot_stream_a_running_background_stream(app_factory, ollama):
    ollama.chunk_delay = 0.05
    async with app_factory(endpoints=[ollama.url], max_concurrent_connections=4, **KEYS) as http:
        body = {"model": "tiny", "input": "hi", "background": True, "stream": True}
        owner = asyncio.create_task(http.post("/v1/responses", headers=A, json=body))
        for _ in range(200):
            if (await http.get("/api/usage", headers=ADMIN)).json()["background_jobs"]:
                break
            await asyncio.sleep(0.01)
        rid = next(iter(router.app.state.gateway.jobs.jobs))    # the running job, its stream not yet read
        reply = await http.get(f"/v1/responses/{rid}", headers=B, params={"stream": "true"})
        assert_openai_error(reply, 404, "response_not_found")
        assert_openai_error(await http.post(f"/v1/responses/{rid}/cancel", headers=B), 404)
        events = sse((await owner).text)
        assert events[0]["response"]["id"] == rid and events[-1]["type"] == "response.completed"
        await wait_idle(http, ollama, headers=ADMIN)


async def test_other_tenant_cannot_reference_items(app_factory, ollama):
    async with app_factory(endpoints=[ollama.url], **KEYS) as http:
        first = (await http.post("/v1/responses", headers=A, json={"model": "tiny", "input": "secret"})).json()
        input_item = (await http.get(f"/v1/responses/{first['id']}/input_items", headers=A)).json()["data"][0]
        for ref in (first["output"][0]["id"], input_item["id"]):
            body = {"model": "tiny", "input": [{"type": "item_reference", "id": ref}]}
            assert_openai_error(await http.post("/v1/responses", headers=B, json=body), 404, "item_not_found")
            assert (await http.post("/v1/responses", headers=A, json=body)).status_code == 200
        sent_for_b = [r for r in ollama.requests if any("secret" in str(m.get("content")) for m in r["messages"])]
        assert len(sent_for_b) == 2        # the original create and A's own reference, never B's


async def test_tenants_without_keys_and_with_keys_do_not_mix(config_path, app_factory, ollama):
    async with app_factory(endpoints=[ollama.url]) as http:        # no authentication: owner None
        open_id = (await http.post("/v1/responses", json={"model": "tiny", "input": "x"})).json()["id"]
    async with app_factory(endpoints=[ollama.url], **KEYS) as http:  # same store, keys now required
        assert_openai_error(await http.get(f"/v1/responses/{open_id}", headers=A), 404)
        chained = await http.post("/v1/responses", headers=A,
                                  json={"model": "tiny", "input": "y", "previous_response_id": open_id})
        assert_openai_error(chained, 404, "previous_response_not_found")


async def test_cached_answers_are_not_shared_between_tenants(app_factory, ollama):
    async with app_factory(endpoints=[ollama.url], cache_enabled=True, **KEYS) as http:
        body = {"model": "tiny", "input": "generate a one-time password for me", "nomyo": {"cache": True}}
        first_a = (await http.post("/v1/responses", headers=A, json=body)).json()
        second_a = (await http.post("/v1/responses", headers=A, json=body)).json()
        assert ollama.requests_total == 1 and second_a["output"][0]["id"] != first_a["output"][0]["id"]
        reply_b = await http.post("/v1/responses", headers=B, json=body)
        assert reply_b.status_code == 200
        assert ollama.requests_total == 2            # B's request is answered by the backend, not A's cache


def test_a_key_in_the_query_is_masked_in_the_access_log():
    import logging
    from router import RedactKeys
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "GET", "/v1/models?x=1&api_key=sk-secret-123&y=2", "1.1", 200),
                               None)
    RedactKeys().filter(record)
    assert record.getMessage() == '127.0.0.1:5000 - "GET /v1/models?x=1&api_key=***&y=2 HTTP/1.1" 200'


# ── tenants ────────────────────────────────────────────────────────────────────

async def test_a_tenant_keeps_its_history_when_its_keys_rotate(app_factory, ollama):
    old, new = {"Authorization": "Bearer team-old-1"}, {"Authorization": "Bearer team-new-2"}
    async with app_factory(endpoints=[ollama.url], tenants={"team": {"keys": ["team-old-1"]},
                                                            "other": {"keys": [KEY_B]}}) as http:
        rid = (await http.post("/v1/responses", headers=old, json={"model": "tiny", "input": "hi"})).json()["id"]
    async with app_factory(endpoints=[ollama.url], tenants={"team": {"keys": ["team-new-2"]},
                                                            "other": {"keys": [KEY_B]}}) as http:
        assert_openai_error(await http.get(f"/v1/responses/{rid}", headers=old), 401, "invalid_api_key")
        assert (await http.get(f"/v1/responses/{rid}", headers=new)).status_code == 200
        assert_openai_error(await http.get(f"/v1/responses/{rid}", headers=B), 404, "response_not_found")
        chained = await http.post("/v1/responses", headers=new, json={"model": "tiny", "input": "more",
                                                                      "previous_response_id": rid})
        assert chained.status_code == 200


async def test_a_plain_key_moved_into_a_tenant_keeps_its_history(app_factory, ollama):
    async with app_factory(endpoints=[ollama.url], **{"nomyo-router-api-key": [KEY_A, KEY_B]}) as http:
        rid = (await http.post("/v1/responses", headers=A, json={"model": "tiny", "input": "hi"})).json()["id"]
    async with app_factory(endpoints=[ollama.url], **{"nomyo-router-api-key": [KEY_B]},
                           tenants={"alpha": {"keys": [KEY_A, "alpha-second-key"]}}) as http:
        for headers in (A, {"Authorization": "Bearer alpha-second-key"}):
            assert (await http.get(f"/v1/responses/{rid}", headers=headers)).status_code == 200
        assert_openai_error(await http.get(f"/v1/responses/{rid}", headers=B), 404)


def test_a_key_given_to_two_tenants_is_a_config_error(tmp_path):
    from config import ConfigError, load_settings
    path = tmp_path / "c.yaml"
    path.write_text("tenants:\n  a: {keys: [same]}\n  b: {keys: [same]}\n")
    with pytest.raises(ConfigError, match="also another tenant"):
        load_settings(path)
