"""The OpenAI routes passed through by the gateway under uvicorn: to the real llama-server,
and a client that leaves a stream closes the upstream one."""

from __future__ import annotations

import asyncio

import httpx

from tests.e2e.conftest import LLAMA_MODEL


def test_chat_completions_from_the_real_llama_server(oai):
    completion = oai.chat.completions.create(model=LLAMA_MODEL, messages=[{"role": "user", "content": "hi"}])
    assert completion.choices[0].message.content == "Hello from the tiny model."
    with oai.chat.completions.create(model=LLAMA_MODEL, messages=[{"role": "user", "content": "hi"}],
                                     stream=True) as stream:
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "Hello from the tiny model."


async def test_a_client_that_leaves_a_stream_closes_the_upstream_one(gateway, slow_ollama):
    before = slow_ollama.disconnects
    body = {"model": "slow", "stream": True, "messages": [{"role": "user", "content": "[long] go on"}]}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        async with http.stream("POST", "/v1/chat/completions", json=body) as reply:
            assert reply.status_code == 200
            seen = 0
            async for line in reply.aiter_lines():
                seen += line.startswith("data: ")
                if seen >= 2:
                    break
        for _ in range(200):
            if slow_ollama.disconnects > before:
                break
            await asyncio.sleep(0.05)
        assert slow_ollama.disconnects > before
        usage = (await http.get("/api/usage")).json()
        assert usage["in_flight"] == 0                     # its slot came back
