"""``client.responses.input_tokens.count(...)`` through the gateway, from the OpenAI SDK: exact on
a real llama-server (the same count it reports for the same prompt), its chain and tools
included; exact from a server with vLLM's ``/tokenize``; an estimate, said so, where the backend
has no tokenizer (Ollama); the errors."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest

from tests.e2e.conftest import LLAMA_MODEL
from tests.e2e.processes import GatewayProcess
from tests.e2e.test_gateway_e2e import WEATHER


def _count(oai, **params):
    counted = oai.responses.input_tokens.count(**params)
    assert counted.object == "response.input_tokens" and isinstance(counted.input_tokens, int)
    return counted


@pytest.mark.parametrize("params", [
    {"input": "hi"},
    {"input": "weather in Paris?", "tools": WEATHER, "instructions": "Answer briefly."},
    {"input": [{"type": "message", "role": "user", "content": "first"},
               {"type": "message", "role": "assistant", "content": "second"},
               {"type": "message", "role": "user", "content": "third"}]},
], ids=["plain", "tools-and-instructions", "items"])
def test_a_llama_server_count_is_what_llama_server_evaluates(oai, params):
    counted = _count(oai, model=LLAMA_MODEL, **params)
    assert counted.model_extra["nomyo"] == {"exact": True, "method": "llama.cpp tokenizer"}
    created = oai.responses.create(model=LLAMA_MODEL, max_output_tokens=1, store=False, **params)
    assert counted.input_tokens == created.usage.input_tokens        # llama-server's own prompt_tokens


def test_the_chain_is_counted_too(oai):
    first = oai.responses.create(model=LLAMA_MODEL, input="hi")
    alone = _count(oai, model=LLAMA_MODEL, input="and then?").input_tokens
    chained = _count(oai, model=LLAMA_MODEL, input="and then?", previous_response_id=first.id).input_tokens
    second = oai.responses.create(model=LLAMA_MODEL, input="and then?", previous_response_id=first.id,
                                  max_output_tokens=1)
    assert chained > alone and chained == second.usage.input_tokens


def test_a_conversation_is_counted_too(oai):
    conversation = oai.conversations.create(items=[{"type": "message", "role": "user", "content": "hello"}])
    oai.responses.create(model=LLAMA_MODEL, input="and you?", conversation=conversation.id, max_output_tokens=4)
    counted = _count(oai, model=LLAMA_MODEL, input="so?", conversation=conversation.id)
    turn = oai.responses.create(model=LLAMA_MODEL, input="so?", conversation=conversation.id, max_output_tokens=1)
    assert counted.input_tokens == turn.usage.input_tokens > _count(oai, model=LLAMA_MODEL, input="so?").input_tokens


def test_a_backend_without_a_tokenizer_gives_an_estimate_and_says_so(oai):
    counted = _count(oai, model="tiny", input="hello there, how are you?")
    assert counted.model_extra["nomyo"] == {"exact": False, "method": "estimate"}
    longer = _count(oai, model="tiny", input="hello there, how are you? " * 20)
    assert 0 < counted.input_tokens < longer.input_tokens
    unnamed = _count(oai, input="hello there, how are you?")               # no model: an estimate too
    assert unnamed.model_extra["nomyo"]["exact"] is False


def test_counting_errors(oai):
    with pytest.raises(openai.NotFoundError) as unknown:
        oai.responses.input_tokens.count(model="no-such-model", input="hi")
    assert unknown.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError) as chain:
        oai.responses.input_tokens.count(model=LLAMA_MODEL, input="hi", previous_response_id="resp_nope")
    assert chain.value.body["code"] == "previous_response_not_found"
    with pytest.raises(openai.NotFoundError) as conversation:
        oai.responses.input_tokens.count(model=LLAMA_MODEL, input="hi", conversation="conv_1")
    assert conversation.value.body["code"] == "conversation_not_found"
    with pytest.raises(openai.BadRequestError) as unknown_field:
        oai.responses.input_tokens.count(model=LLAMA_MODEL, input="hi", extra_body={"temperature": 1})
    assert unknown_field.value.body["code"] == "unknown_parameter"
    with pytest.raises(openai.BadRequestError) as personality:
        oai.responses.input_tokens.count(model=LLAMA_MODEL, input="hi", personality="friendly")
    assert personality.value.body["param"] == "personality"


class _TokenizingServer:
    """An OpenAI-compatible server on 127.0.0.1 with vLLM's ``POST /tokenize`` (its count: one token
    per word of the messages, plus 3), whose chat answers report the same ``prompt_tokens``; with
    ``tokenize=False`` the route is missing, as on servers without it."""

    def __init__(self, tokenize: bool = True):
        self.asked: list[dict] = []
        asked = self.asked

        def count(messages) -> int:
            return 3 + sum(len(str(m.get("content") or "").split()) for m in messages)

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status, data):
                body = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):  # noqa: N802
                self._send(200, {"object": "list", "data": [{"id": "vllm-model", "object": "model"}]})

            def do_POST(self):  # noqa: N802
                data = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/tokenize" and tokenize:
                    asked.append(data)
                    return self._send(200, {"count": count(data["messages"]), "tokens": [], "max_model_len": 4096})
                if self.path == "/v1/chat/completions":
                    n = count(data["messages"])
                    return self._send(200, {"id": "c", "object": "chat.completion", "created": 0, "model": "vllm-model",
                                            "choices": [{"index": 0, "finish_reason": "stop",
                                                         "message": {"role": "assistant", "content": "ok"}}],
                                            "usage": {"prompt_tokens": n, "completion_tokens": 1,
                                                      "total_tokens": n + 1}})
                self._send(404, {"detail": "Not Found"})

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("tokenize", [True, False])
def test_a_server_with_vllms_tokenize_route_counts_exactly(tmp_path, tokenize):
    backend = _TokenizingServer(tokenize)
    proc = GatewayProcess(tmp_path, endpoints=[f"{backend.url}/v1"]).start()
    try:
        with openai.OpenAI(base_url=f"{proc.url}/v1", api_key="unused", max_retries=0) as client:
            params = {"model": "vllm-model", "input": "one two three", "instructions": "be brief", "tools": WEATHER}
            counted = _count(client, **params)
            created = client.responses.create(**params)
    finally:
        proc.stop()
        backend.close()
    if tokenize:
        assert counted.model_extra["nomyo"] == {"exact": True, "method": "vLLM tokenizer"}
        assert counted.input_tokens == created.usage.input_tokens
        assert backend.asked[0]["add_generation_prompt"] is True and backend.asked[0]["tools"]
    else:
        assert counted.model_extra["nomyo"] == {"exact": False, "method": "estimate"}
