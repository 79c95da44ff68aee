"""Input token counts (OpenAI ``POST /v1/responses/input_tokens``): how many tokens a create
request's input would be for its model, the chain before it, instructions and tools included.

Exact where the backend can tokenize: llama.cpp's ``llama-server`` renders the messages (and
tools) with the model's own chat template (``/apply-template``) and tokenizes that prompt
(``/tokenize``), the same prompt its chat endpoint would evaluate; an OpenAI-compatible server
with vLLM's ``POST /tokenize`` (messages, tools, the generation prompt) counts them itself; an
upstream Responses API (OpenAI) is asked itself. Elsewhere (Ollama, servers without
``/tokenize``) the count is an estimate: one token per 4 bytes of the Chat request's messages
and tools, as UTF-8 JSON, rounded up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
import openai
import orjson

from backends import backend_error
from engine.turn import Turn
from errors import APIError, BackendUnavailable
from requests.common import plain
from requests.native import native_input
from requests.params import chat_request_params

if TYPE_CHECKING:
    from engine.gateway import Gateway

__all__ = ["TokenCount", "count_input_tokens", "estimate_input_tokens", "ESTIMATE_BYTES_PER_TOKEN"]

#: Bytes of Chat request JSON counted as one token when no tokenizer is at hand.
ESTIMATE_BYTES_PER_TOKEN = 4
#: Create fields an upstream Responses API's count takes.
_NATIVE_COUNT_FIELDS = ("instructions", "parallel_tool_calls", "personality", "reasoning", "text", "tool_choice",
                        "tools", "truncation")


@dataclass(frozen=True)
class TokenCount:
    """``input_tokens``, whether the count is ``exact``, and how it was made (``method``:
    ``llama.cpp tokenizer``, ``vLLM tokenizer``, ``upstream``, ``estimate``)."""

    input_tokens: int
    exact: bool
    method: str

    def body(self) -> dict:
        """The answer: ``InputTokenCountResponse`` plus ``nomyo: {exact, method}``."""
        return {"object": "response.input_tokens", "input_tokens": self.input_tokens,
                "nomyo": {"exact": self.exact, "method": self.method}}


def _estimate(params: dict) -> TokenCount:
    size = len(orjson.dumps({"messages": params["messages"], "tools": params.get("tools") or []}))
    return TokenCount(math.ceil(size / ESTIMATE_BYTES_PER_TOKEN), False, "estimate")


async def _llama_server(http: httpx.AsyncClient, server: str, params: dict, timeout: float) -> TokenCount:
    """The prompt llama-server would evaluate for ``params``, tokenized by it."""
    template = {key: params[key] for key in ("messages", "tools", "tool_choice") if key in params}
    try:
        rendered = await http.post(f"{server}/apply-template", content=orjson.dumps(template), timeout=timeout,
                                   headers={"content-type": "application/json"})
        rendered.raise_for_status()
        prompt = orjson.loads(rendered.content)["prompt"]
        tokens = await http.post(f"{server}/tokenize", timeout=timeout, headers={"content-type": "application/json"},
                                 content=orjson.dumps({"content": prompt, "add_special": True,
                                                       "parse_special": True}))
        tokens.raise_for_status()
        return TokenCount(len(orjson.loads(tokens.content)["tokens"]), True, "llama.cpp tokenizer")
    except httpx.HTTPStatusError as exc:
        raise APIError(502, f"llama-server at {server} could not count the tokens: {exc.response.status_code} "
                            f"{exc.response.text[:300]}", code="bad_upstream_response", type="server_error") from None
    except (httpx.TransportError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
        raise BackendUnavailable(server, f"{type(exc).__name__}: {exc}") from None


#: Servers that answered vLLM's ``/tokenize`` with "no such route": not asked again.
_WITHOUT_TOKENIZE: set[str] = set()


async def _tokenize_route(http: httpx.AsyncClient, server: str, model: str, params: dict, timeout: float,
                          api_key: str | None) -> TokenCount | None:
    """vLLM's count of the chat prompt of ``params`` (``POST /tokenize`` with ``messages``), or None
    when ``server`` has no such route (then it is not asked again)."""
    if server in _WITHOUT_TOKENIZE:
        return None
    body = {"model": model, "messages": params["messages"], "add_generation_prompt": True}
    if params.get("tools"):
        body["tools"] = params["tools"]
    headers = {"content-type": "application/json"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    try:
        reply = await http.post(f"{server}/tokenize", content=orjson.dumps(body), timeout=timeout, headers=headers)
    except httpx.TransportError as exc:
        raise BackendUnavailable(server, f"{type(exc).__name__}: {exc}") from None
    if reply.status_code in (404, 405, 501):
        _WITHOUT_TOKENIZE.add(server)
        return None
    try:
        reply.raise_for_status()
        count = orjson.loads(reply.content)["count"]
    except (httpx.HTTPStatusError, KeyError, TypeError, orjson.JSONDecodeError):
        return None  # a /tokenize of another kind: the estimate stands
    return TokenCount(int(count), True, "vLLM tokenizer") if isinstance(count, int) else None


def estimate_input_tokens(turn: Turn) -> TokenCount:
    """The estimate for ``turn`` without any backend (no model named)."""
    return _estimate(chat_request_params(turn.body, turn.messages, "", stream=False))


async def count_input_tokens(gateway: Gateway, turn: Turn) -> TokenCount:
    """The input token count of ``turn`` on an endpoint serving its model (no usage slot is
    taken: nothing is generated). Raises APIError 404 ``model_not_found`` (no endpoint
    serves it), 400 for input the endpoint's protocol cannot express, 502 when the backend
    fails or cannot be reached, or the upstream's own error."""
    registry = gateway.registry
    candidates = [(ep, name) for ep, name in await registry.find(turn.routed_model) if ep.reachable is not False]
    if not candidates:
        raise APIError(404, f"The model '{turn.model}' does not exist or is not served by any reachable endpoint.",
                       param="model", code="model_not_found")
    endpoint, name = candidates[0]
    if endpoint.native:
        client = gateway.calls._make_openai_client(registry, endpoint.url)
        fields = {key: turn.body[key] for key in _NATIVE_COUNT_FIELDS if turn.body.get(key) is not None}
        try:
            counted = await client.responses.input_tokens.count(model=name, input=native_input(turn.native_items),
                                                             **fields)
        except openai.APIError as exc:  # as the create path maps the SDK's errors
            raise backend_error(client, exc) from None
        return TokenCount(int(plain(counted)["input_tokens"]), True, "upstream")
    if turn.body.get("personality") is not None:
        raise APIError(400, "'personality' applies only on an upstream Responses API; this model's backend "
                            "speaks Chat Completions.", param="personality", code="unsupported_parameter")
    await turn.load_files()
    params = chat_request_params(turn.body, turn.messages, name, stream=False,
                                 hosted_policy=registry.settings.hosted_tool_policy)
    server = endpoint.base_url[:-3] if endpoint.base_url.endswith("/v1") else endpoint.base_url
    if endpoint.kind == "llama_server":
        return await _llama_server(registry.http, server, params, registry.settings.request_timeout)
    if endpoint.kind == "openai":
        counted = await _tokenize_route(registry.http, server, name, params, registry.settings.request_timeout,
                                        endpoint.api_key)
        if counted is not None:
            return counted
    return _estimate(params)
