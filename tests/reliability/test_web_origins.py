"""What a web page can make a browser send to a gateway on 127.0.0.1, over real sockets: a
``text/plain`` POST (no preflight), a request through a DNS name of its own (rebinding), a
cross-origin request. Each is refused unless the operator allowed it; CORS answers only
``cors_allowed_origins``."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.ollama_server import DEFAULT_TEXT, OllamaTestServer
from tests.e2e.processes import GatewayProcess
from tests.reliability.helpers import assert_openai_error

BODY = '{"model": "tiny", "input": "hi"}'
APP = "https://app.example"


@pytest.fixture(scope="module")
def backend():
    with OllamaTestServer(models=["tiny:latest"], loaded=["tiny:latest"]) as server:
        yield server


@pytest.fixture(scope="module")
def open_gateway(backend, tmp_path_factory):
    """No router key, the default hosts, one allowed web origin."""
    proc = GatewayProcess(tmp_path_factory.mktemp("web"), endpoints=[backend.url],
                          cors_allowed_origins=[APP]).start()
    yield proc
    proc.stop()


async def test_a_json_post_from_a_local_client_is_served(open_gateway):
    async with httpx.AsyncClient(base_url=open_gateway.url, timeout=10) as http:
        reply = await http.post("/v1/responses", content=BODY,
                                headers={"Content-Type": "application/json; charset=utf-8"})
        assert reply.status_code == 200 and reply.json()["output_text"] == DEFAULT_TEXT
        for host in ("localhost", f"localhost:{open_gateway.port}", f"127.0.0.1:{open_gateway.port}"):
            assert (await http.get("/v1/models", headers={"Host": host})).status_code == 200


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", None])
async def test_a_post_body_that_is_not_json_is_a_415(open_gateway, backend, content_type):
    backend.reset()
    headers = {} if content_type is None else {"Content-Type": content_type}
    async with httpx.AsyncClient(base_url=open_gateway.url, timeout=10) as http:
        request = http.build_request("POST", "/v1/responses", content=BODY.encode(), headers=headers)
        if content_type is None:
            request.headers.pop("Content-Type", None)
        reply = await http.send(request)
    error = assert_openai_error(reply, 415, "unsupported_media_type")
    assert "application/json" in error["message"]
    assert backend.requests == []


async def test_curl_d_to_an_ollama_route_is_served_but_a_page_form_post_is_not(open_gateway, backend):
    """``curl -d '{...}'`` (Ollama's documented usage) sends its JSON as a form post with no
    ``Origin``: served on ``/api/...``. A web page's form post always carries an ``Origin``:
    refused, as a form post to any other route is."""
    backend.reset()
    chat = b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": false}'
    form = {"Content-Type": "application/x-www-form-urlencoded", "User-Agent": "curl/8.14.1"}
    async with httpx.AsyncClient(base_url=open_gateway.url, timeout=10) as http:
        reply = await http.post("/api/chat", content=chat, headers=form)
        assert reply.status_code == 200 and reply.json()["message"]["content"] == DEFAULT_TEXT
        for origin in (APP, "https://attacker.example"):
            refused = await http.post("/api/chat", content=chat, headers={**form, "Origin": origin})
            assert refused.status_code in (403, 415), (origin, refused.text)
        assert (await http.post("/v1/responses", content=BODY, headers=form)).status_code == 415
    assert len(backend.requests) == 1


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:12434", "gateway.internal"])
async def test_a_host_the_gateway_does_not_answer_to_is_refused(open_gateway, backend, host):
    """DNS rebinding: the page's own name resolves to 127.0.0.1; the Host header still names it."""
    backend.reset()
    async with httpx.AsyncClient(base_url=open_gateway.url, timeout=10) as http:
        for method, path in (("POST", "/v1/responses"), ("GET", "/v1/models"), ("GET", "/health")):
            reply = await http.request(method, path, content=BODY, headers={"Host": host,
                                                                            "Content-Type": "application/json"})
            error = assert_openai_error(reply, 400, "host_not_allowed")
            assert "allowed_hosts" in error["message"]
    assert backend.requests == []


async def test_a_cross_origin_request_is_refused_unless_allowed(open_gateway, backend):
    backend.reset()
    json_headers = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=open_gateway.url, timeout=10) as http:
        evil = await http.post("/v1/responses", content=BODY,
                               headers={**json_headers, "Origin": "https://evil.example"})
        assert_openai_error(evil, 403, "origin_not_allowed")
        assert "access-control-allow-origin" not in evil.headers
        assert backend.requests == []

        preflight = await http.options("/v1/responses", headers={
            "Origin": APP, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, authorization"})
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == APP
        assert "POST" in preflight.headers["access-control-allow-methods"]
        denied = await http.options("/v1/responses", headers={"Origin": "https://evil.example",
                                                               "Access-Control-Request-Method": "POST"})
        assert denied.status_code == 403 and "access-control-allow-origin" not in denied.headers

        allowed = await http.post("/v1/responses", content=BODY, headers={**json_headers, "Origin": APP})
        assert allowed.status_code == 200 and allowed.json()["output_text"] == DEFAULT_TEXT
        assert allowed.headers["access-control-allow-origin"] == APP


async def test_allowed_hosts_and_a_router_key_widen_the_hosts(backend, tmp_path):
    (tmp_path / "named").mkdir()
    (tmp_path / "keyed").mkdir()
    named = GatewayProcess(tmp_path / "named", endpoints=[backend.url], allowed_hosts=["gateway.internal"]).start()
    keyed = GatewayProcess(tmp_path / "keyed", endpoints=[backend.url], **{"nomyo-router-api-key": "k-1"})
    try:
        keyed.start()
        async with httpx.AsyncClient(base_url=named.url, timeout=10) as http:
            assert (await http.get("/v1/models", headers={"Host": "gateway.internal:80"})).status_code == 200
            assert_openai_error(await http.get("/v1/models", headers={"Host": "localhost"}), 400, "host_not_allowed")
        async with httpx.AsyncClient(base_url=keyed.url, timeout=10,
                                     headers={"Authorization": "Bearer k-1"}) as http:
            assert (await http.get("/v1/models", headers={"Host": "gateway.internal"})).status_code == 200
    finally:
        named.stop()
        keyed.stop()
