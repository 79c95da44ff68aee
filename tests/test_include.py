"""requests.include: what each ``include`` value does to items read back."""

from __future__ import annotations

import pytest

from reasoning_seal import ReasoningSeal
from requests.common import InvalidInput
from requests.include import INCLUDABLE, check_include, view_items, view_response

SEAL = ReasoningSeal(b"k" * 32)
LOGPROBS = [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}]
MESSAGE = {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
           "content": [{"type": "output_text", "text": "Hi", "annotations": [], "logprobs": LOGPROBS}]}
REASONING = {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "hm"}]}
IMAGE = {"type": "message", "id": "msg_2", "role": "user", "status": "completed",
         "content": [{"type": "input_image", "image_url": "data:image/png;base64,AA==", "detail": "auto"}]}


def test_without_include_logprobs_are_left_out_and_nothing_is_sealed():
    message, reasoning, image = view_items([MESSAGE, REASONING, IMAGE], frozenset(), SEAL.seal)
    assert message["content"][0]["logprobs"] == [] and MESSAGE["content"][0]["logprobs"] == LOGPROBS
    assert "encrypted_content" not in reasoning
    assert image is IMAGE                                   # images are always read whole


def test_each_value_adds_what_it_names():
    message, reasoning = view_items([MESSAGE, REASONING], check_include(INCLUDABLE), SEAL.seal)
    assert message["content"][0]["logprobs"] == LOGPROBS
    assert SEAL.open(reasoning["encrypted_content"]) == REASONING["content"]


def test_a_response_is_viewed_through_its_output():
    response = {"id": "resp_1", "object": "response", "output": [MESSAGE]}
    assert view_response(response, frozenset({"message.output_text.logprobs"}), None) is response
    assert view_response(response, frozenset(), None)["output"][0]["content"][0]["logprobs"] == []


def test_an_unknown_value_is_refused():
    with pytest.raises(InvalidInput) as refused:
        check_include(["reasoning.encrypted_content", "message.everything"])
    assert refused.value.param == "include" and refused.value.code == "invalid_include"
