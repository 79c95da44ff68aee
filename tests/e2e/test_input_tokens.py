"""``client.responses.input_tokens.count(...)`` through the gateway, from the OpenAI SDK: exact on
a real llama-server (the same count it reports for the same prompt), its chain and tools
included; an estimate, said so, where the backend has no tokenizer (Ollama); the errors."""

from __future__ import annotations

import openai
import pytest

from tests.e2e.conftest import LLAMA_MODEL
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
