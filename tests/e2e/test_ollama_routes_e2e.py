"""Ollama's API on the gateway under uvicorn, driven by the official ``ollama`` Python client
unchanged: natively over the scripted Ollama-protocol server, translated over the real
llama-server (the tiny model's text is gibberish: shapes, ``done`` and counts are checked,
not content), model management, and a client that leaves a stream."""

from __future__ import annotations

import asyncio
import subprocess

import httpx
import ollama
import pytest

from tests.e2e.conftest import LLAMA_MODEL, _llama_paths
from tests.e2e.ollama_server import DEFAULT_TEXT, OLLAMA_VERSION, OllamaTestServer, embedding_of
from tests.e2e.processes import GatewayProcess, LlamaServerProcess, _wait_http

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def client(gateway):
    """The official Ollama client pointed at the gateway."""
    made = ollama.AsyncClient(host=gateway.url, timeout=30)
    yield made
    await made.close()


async def test_chat_plain_and_streamed(client):
    answer = await client.chat(model="tiny", messages=HI)
    assert answer.message.content == DEFAULT_TEXT and answer.done and answer.eval_count == 6
    parts = [part async for part in await client.chat(model="tiny", messages=HI, stream=True)]
    assert "".join(p.message.content for p in parts) == DEFAULT_TEXT
    assert parts[-1].done and parts[-1].done_reason == "stop" and not any(p.done for p in parts[:-1])


async def test_generate_and_embed(client):
    answer = await client.generate(model="tiny", prompt="hi")
    assert answer.response == DEFAULT_TEXT and answer.done
    parts = [part async for part in await client.generate(model="tiny", prompt="hi", stream=True)]
    assert "".join(p.response for p in parts) == DEFAULT_TEXT and parts[-1].done
    made = await client.embed(model="tiny", input=["one", "two"])
    assert [list(v) for v in made.embeddings] == [embedding_of("one"), embedding_of("two")]


async def test_list_ps_show_version(client, gateway):
    names = [m.model for m in (await client.list()).models]
    assert {"tiny:latest", "slow:latest", LLAMA_MODEL} <= set(names) and len(names) == len(set(names))
    running = [m.name for m in (await client.ps()).models]
    assert {"tiny:latest", "slow:latest", LLAMA_MODEL} <= set(running)
    shown = await client.show("tiny")
    assert shown.modelfile.startswith("FROM tiny:latest") and "completion" in shown.capabilities
    async with httpx.AsyncClient(base_url=gateway.url) as http:   # the ollama client has no version() of its own
        assert (await http.get("/api/version")).json() == {"version": OLLAMA_VERSION}


async def test_errors_reach_the_client_as_ollamas(client):
    with pytest.raises(ollama.ResponseError) as refused:
        await client.chat(model="nope", messages=HI)
    assert refused.value.status_code == 404 and isinstance(refused.value.error, str) and "nope" in refused.value.error
    with pytest.raises(ollama.ResponseError) as refused:
        await client.show(LLAMA_MODEL)
    assert refused.value.status_code == 501 and "OpenAI-compatible" in refused.value.error


async def test_chat_translated_over_the_real_llama_server(client):
    answer = await client.chat(model=LLAMA_MODEL, messages=HI, options={"temperature": 0, "num_predict": 16})
    assert answer.done and answer.done_reason in ("stop", "length") and isinstance(answer.message.content, str)
    assert answer.prompt_eval_count > 0 and answer.eval_count > 0 and answer.eval_duration is not None
    parts = [p async for p in await client.chat(model=LLAMA_MODEL, messages=HI, stream=True, think=True)]
    assert parts[-1].done and parts[-1].eval_count > 0 and not any(p.done for p in parts[:-1])
    assert all(p.model == LLAMA_MODEL for p in parts)


async def test_generate_translated_over_the_real_llama_server(client):
    answer = await client.generate(model=LLAMA_MODEL, prompt="hi", options={"num_predict": 8})
    assert answer.done and isinstance(answer.response, str) and answer.prompt_eval_count > 0
    parts = [p async for p in await client.generate(model=LLAMA_MODEL, prompt="hi", stream=True)]
    assert parts[-1].done and parts[-1].prompt_eval_count > 0
    with pytest.raises(ollama.ResponseError) as refused:
        await client.generate(model=LLAMA_MODEL, prompt="hi", system="be brief")
    assert refused.value.status_code == 400 and "'system'" in refused.value.error


async def test_embed_on_a_llama_server_without_embeddings_says_so(client):
    with pytest.raises(ollama.ResponseError) as refused:
        await client.embed(model=LLAMA_MODEL, input="hi")
    assert refused.value.status_code == 501 and "--embeddings" in refused.value.error      # llama-server's own words


class _EmbeddingLlama(LlamaServerProcess):
    """llama-server with ``--embeddings`` (mean pooling), so ``/v1/embeddings`` answers."""

    def start(self, timeout: float = 60) -> "_EmbeddingLlama":
        self.proc = subprocess.Popen(
            [self.binary, "-m", self.model, "--alias", self.alias, "--host", "127.0.0.1", "--port", str(self.port),
             "-c", "2048", "-np", "1", "-t", "1", "--no-webui", "--embeddings", "--pooling", "mean"],
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        _wait_http(f"{self.url}/health", self.proc, timeout, self.log)
        return self


@pytest.fixture(scope="module")
def embedding_gateway(tmp_path_factory):
    binary, model = _llama_paths()
    server = _EmbeddingLlama(binary, model, tmp_path_factory.mktemp("llama-embed"), alias="tiny-embed").start()
    proc = GatewayProcess(tmp_path_factory.mktemp("gateway-embed"), llama_server_endpoints=[f"{server.url}/v1"])
    try:
        yield proc.start()
    finally:
        proc.stop()
        server.stop()


async def test_embed_translated_over_a_llama_server_with_embeddings(embedding_gateway):
    async with ollama.AsyncClient(host=embedding_gateway.url, timeout=30) as client:
        made = await client.embed(model="tiny-embed", input=["hello there", "x"])
        assert len(made.embeddings) == 2 and len(made.embeddings[0]) == len(made.embeddings[1]) > 0
        assert made.prompt_eval_count > 0
        legacy = await client.embeddings(model="tiny-embed", prompt="hello")
        assert len(legacy.embedding) == len(made.embeddings[0])


async def test_model_management_through_the_client(tmp_path):
    with OllamaTestServer(models=["tiny:latest"]) as first, OllamaTestServer(models=["tiny:latest"]) as second:
        proc = GatewayProcess(tmp_path, endpoints=[first.url, second.url]).start()
        try:
            async with ollama.AsyncClient(host=proc.url, timeout=30) as client:
                progress = [p async for p in await client.pull("fresh", stream=True)]
                assert progress[-1].status == "success"
                assert [p.status for p in progress].count("success") == 2        # one per endpoint, in turn
                assert [m["op"] for m in first.managed + second.managed] == ["pull", "pull"]
                assert (await client.copy("fresh", "twin")).status == "success"
                assert (await client.delete("twin")).status == "success"
                assert "fresh:latest" in [m.model for m in (await client.list()).models]
                answer = await client.chat(model="fresh", messages=HI)
                assert answer.message.content == DEFAULT_TEXT
                with pytest.raises(ollama.ResponseError) as refused:
                    await client.delete("twin")
                assert refused.value.status_code == 404 and first.url in refused.value.error
        finally:
            proc.stop()


async def test_a_client_that_leaves_an_ollama_stream_closes_the_upstream_one(gateway, slow_ollama):
    before = slow_ollama.disconnects
    body = {"model": "slow", "messages": [{"role": "user", "content": "[long] go on"}]}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        async with http.stream("POST", "/api/chat", json=body) as reply:
            assert reply.status_code == 200 and reply.headers["content-type"].startswith("application/x-ndjson")
            seen = 0
            async for line in reply.aiter_lines():
                seen += bool(line)
                if seen >= 2:
                    break
        for _ in range(200):
            if slow_ollama.disconnects > before:
                break
            await asyncio.sleep(0.05)
        assert slow_ollama.disconnects > before
        for _ in range(200):
            if (await http.get("/api/usage")).json()["in_flight"] == 0:
                break
            await asyncio.sleep(0.05)
        assert (await http.get("/api/usage")).json()["in_flight"] == 0
