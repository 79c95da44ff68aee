"""Conversations, compaction and file inputs through the gateway under uvicorn, from the OpenAI SDK,
over the real llama-server (the tiny model writes the summaries) and the Ollama-protocol server."""

from __future__ import annotations

import base64

import openai
import pytest
from openai.types.conversations import Conversation
from openai.types.responses import ResponseCompactionItem

from tests.conformance import check_response
from tests.e2e.conftest import LLAMA_MODEL
from tests.test_file_inputs import make_pdf


@pytest.mark.parametrize("model", [LLAMA_MODEL, "tiny"])
def test_a_conversation_across_turns(oai, model):
    conversation = oai.conversations.create(metadata={"model": model},
                                            items=[{"type": "message", "role": "user", "content": "My name is Ada."}])
    Conversation.model_validate(conversation.model_dump(), strict=True)
    first = oai.responses.create(model=model, input="Say hello.", conversation=conversation.id, max_output_tokens=8)
    check_response(first.model_dump(mode="json", exclude_unset=True), spec=False)
    assert first.conversation.id == conversation.id
    second = oai.responses.create(model=model, input="Again.", conversation={"id": conversation.id},
                                  max_output_tokens=8, stream=False)
    assert second.usage.input_tokens > first.usage.input_tokens
    items = oai.conversations.items.list(conversation.id, order="asc").data
    assert [(item.type, getattr(item, "role", None)) for item in items] == [
        ("message", "user"), ("message", "user"), ("message", "assistant"), ("message", "user"),
        ("message", "assistant")]
    assert items[2].id == first.output[-1].id
    with pytest.raises(openai.BadRequestError) as both:
        oai.responses.create(model=model, input="x", conversation=conversation.id, previous_response_id=first.id)
    assert both.value.body["code"] == "mutually_exclusive_parameters"
    assert oai.conversations.delete(conversation.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        oai.responses.create(model=model, input="x", conversation=conversation.id)


def test_compact_on_llama_server_and_continue(oai):
    first = oai.responses.create(model=LLAMA_MODEL, input="Remember: the code word is 'teal'.", max_output_tokens=8)
    compacted = oai.responses.compact(model=LLAMA_MODEL, previous_response_id=first.id, input="What was it?")
    assert compacted.object == "response.compaction"
    assert [item.type for item in compacted.output] == ["message", "message", "compaction"]
    item = compacted.output[-1]
    ResponseCompactionItem.model_validate(item.model_dump(exclude_unset=True), strict=True)
    assert compacted.usage.output_tokens > 0 and compacted.usage.input_tokens > 0
    follow = oai.responses.create(model=LLAMA_MODEL, max_output_tokens=8,
                                  input=[*[entry.model_dump(exclude_unset=True, warnings=False) for entry in compacted.output],
                                         {"role": "user", "content": "Go on."}])
    assert follow.status == "completed" or follow.status == "incomplete"
    with pytest.raises(openai.BadRequestError) as tampered:
        oai.responses.create(model=LLAMA_MODEL, input=[
            {"type": "compaction", "encrypted_content": item.encrypted_content[:-4] + "AAAA"},
            {"role": "user", "content": "x"}])
    assert tampered.value.body["code"] == "invalid_encrypted_content"


def test_context_management_compacts_on_llama_server(oai):
    first = oai.responses.create(model=LLAMA_MODEL, input="Tell me about the sea.", max_output_tokens=16)
    second = oai.responses.create(model=LLAMA_MODEL, input="And rivers?", previous_response_id=first.id,
                                  max_output_tokens=8, context_management=[{"type": "compaction",
                                                                            "compact_threshold": 10}])
    assert [item.type for item in second.output][0] == "compaction"
    third = oai.responses.create(model=LLAMA_MODEL, input="Thanks.", previous_response_id=second.id,
                                 max_output_tokens=4)
    assert third.status in ("completed", "incomplete")


def test_a_pdf_reaches_llama_server_as_text(oai):
    pdf = base64.b64encode(make_pdf("The launch date is March 3.")).decode()
    counted_without = oai.responses.input_tokens.count(model=LLAMA_MODEL, input="Read it.").input_tokens
    part = {"type": "input_file", "filename": "plan.pdf", "file_data": f"data:application/pdf;base64,{pdf}"}
    message = [{"role": "user", "content": [{"type": "input_text", "text": "Read it."}, part]}]
    counted = oai.responses.input_tokens.count(model=LLAMA_MODEL, input=message).input_tokens
    created = oai.responses.create(model=LLAMA_MODEL, input=message, max_output_tokens=1)
    assert counted == created.usage.input_tokens > counted_without
    with pytest.raises(openai.BadRequestError) as refused:
        oai.responses.create(model=LLAMA_MODEL, input=[{"role": "user", "content": [
            {"type": "input_file", "file_url": "http://127.0.0.1:9/secret.txt"}]}])
    assert refused.value.body["code"] == "file_url_not_allowed"
