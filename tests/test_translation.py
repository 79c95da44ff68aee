"""The pure translation layer (requests/): inputs, outputs, tools, options, native inputs."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

import requests
from requests import params as rp, responses as rt
from requests.native import native_input, native_request
from requests.responses import InvalidInput


def test_requests_package_is_ours():
    assert Path(requests.__file__).resolve().parent == Path(__file__).resolve().parent.parent / "requests"
    assert not hasattr(requests, "get")  # not the HTTP library of the same name


def test_normalize_string_and_easy_messages():
    items = rt.normalize_input_items([{"role": "developer", "content": "rules"},
                                      {"role": "assistant", "content": "earlier"}])
    assert items[0]["type"] == "message" and items[0]["id"].startswith("msg_")
    assert items[0]["content"] == [{"type": "input_text", "text": "rules"}]
    assert items[1]["content"] == [{"type": "output_text", "text": "earlier", "annotations": []}]
    assert all(item["status"] == "completed" for item in items)
    [only] = rt.normalize_input_items("hello")
    assert only["role"] == "user" and only["content"][0]["text"] == "hello"


@pytest.mark.parametrize("bad, param", [
    (["text"], "input[0]"),
    ([{"role": "wizard", "content": "x"}], "input[0].role"),
    ([{"role": "user", "content": 3}], "input[0].content"),
    ([{"role": "user", "content": [{"type": "input_audio"}]}], "input[0].content[0].type"),
    ([{"type": "function_call", "name": "f", "arguments": "{}"}], "input[0].call_id"),
    ([{"type": "function_call_output", "call_id": "c"}], "input[0].output"),
    ([{"type": "web_search_call"}], "input[0].type"),
])
def test_normalize_rejects_bad_items(bad, param):
    with pytest.raises(InvalidInput) as info:
        rt.normalize_input_items(bad)
    assert info.value.param == param


def test_developer_becomes_system_and_parts_map():
    data_url = "data:image/png;base64," + base64.b64encode(b"\x89PNG").decode()
    msgs = rt.responses_input_to_messages([
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "be terse"}]},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "see"},
            {"type": "input_image", "image_url": data_url, "detail": "low"}]},
    ])
    assert msgs[0] == {"role": "system", "content": "be terse"}
    assert msgs[1]["content"][1] == {"type": "image_url", "image_url": {"url": data_url, "detail": "low"}}


def test_input_file_text_is_inlined_and_binary_refused():
    text = base64.b64encode("a,b\n1,2\n".encode()).decode()
    [msg] = rt.responses_input_to_messages([{"role": "user", "content": [
        {"type": "input_file", "filename": "t.csv", "file_data": f"data:text/csv;base64,{text}"}]}])
    assert msg["content"] == "t.csv:\na,b\n1,2\n"
    with pytest.raises(InvalidInput):
        rt.responses_input_to_messages([{"role": "user", "content": [
            {"type": "input_file", "file_data": "data:application/pdf;base64,AAAA"}]}])
    with pytest.raises(InvalidInput):
        rt.responses_input_to_messages([{"role": "user", "content": [{"type": "input_file", "file_id": "f1"}]}])


def test_parallel_calls_share_one_assistant_message_and_reasoning_rides_along():
    msgs = rt.responses_input_to_messages([
        {"role": "user", "content": "two things"},
        {"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "hmm"}]},
        {"type": "function_call", "call_id": "a", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "b", "name": "g", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "a", "output": "1"},
        {"type": "function_call_output", "call_id": "b", "output": [{"type": "input_text", "text": "2"}]},
    ])
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "tool"]
    assert [c["id"] for c in msgs[1]["tool_calls"]] == ["a", "b"]
    assert msgs[1]["reasoning_content"] == "hmm"
    assert msgs[3]["content"] == "2"


def test_text_then_call_in_one_turn_is_one_assistant_message():
    msgs = rt.responses_input_to_messages([
        {"role": "user", "content": "q"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "let me look"}]},
        {"type": "function_call", "call_id": "a", "name": "f", "arguments": "{}"},
    ])
    assert len(msgs) == 2 and msgs[1]["content"] == "let me look" and msgs[1]["tool_calls"][0]["id"] == "a"


def test_unresolved_item_reference_is_refused():
    with pytest.raises(InvalidInput):
        rt.responses_input_to_messages([{"type": "item_reference", "id": "msg_1"}])


def test_messages_round_trip_keeps_roles_content_and_call_ids():
    messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": None,
                 "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "out"},
                {"role": "assistant", "content": "done"}]
    instructions, items = rt.messages_to_responses_input(messages)
    assert rt.responses_input_to_messages(items, instructions) == messages


def test_output_items_reasoning_message_and_calls():
    items = rt.chat_message_to_output_items({
        "role": "assistant", "content": "ok", "reasoning": "why",
        "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "{}"}},
                       {"function": {"name": "g", "arguments": "{\"x\":1}"}}]})
    assert [i["type"] for i in items] == ["reasoning", "message", "function_call", "function_call"]
    assert items[3]["call_id"].startswith("call_") and items[3]["call_id"] != "a"
    assert len({i["id"] for i in items}) == 4


def test_usage_details_follow_the_backend():
    assert rt.usage_chat_to_responses(None) is None
    full = rt.usage_chat_to_responses({"prompt_tokens": 5, "completion_tokens": 2,
                                       "prompt_tokens_details": {"cached_tokens": 3},
                                       "completion_tokens_details": None})
    assert full["input_tokens_details"]["cached_tokens"] == 3
    assert full["output_tokens_details"] == {"reasoning_tokens": 0}


@pytest.mark.parametrize("choice, expected_choice, names", [
    ("auto", "auto", ["f", "g"]),
    ("required", "required", ["f", "g"]),
    ({"type": "function", "name": "g"}, {"type": "function", "function": {"name": "g"}}, ["f", "g"]),
    ({"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "g"}]},
     "required", ["g"]),
])
def test_tool_choice_mapping(choice, expected_choice, names):
    tools = rt.tools_responses_to_chat([{"type": "function", "name": "f"}, {"type": "function", "name": "g",
                                                                          "strict": True}])
    mapped, kept = rp.tool_choice_to_chat(choice, tools)
    assert mapped == expected_choice and [t["function"]["name"] for t in kept] == names


def test_chat_request_params():
    body = {"model": "m", "max_output_tokens": 50, "temperature": 0.2, "top_p": 0.9,
            "tools": [{"type": "function", "name": "f"}], "tool_choice": "none", "parallel_tool_calls": False,
            "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"},
                                "strict": True}},
            "reasoning": {"effort": "low"}}
    params = rp.chat_request_params(body, [{"role": "user", "content": "q"}], "m:latest", stream=True)
    assert params["model"] == "m:latest" and params["max_tokens"] == 50
    assert params["temperature"] == 0.2 and params["top_p"] == 0.9
    assert "tools" not in params  # tool_choice none sends no tools
    assert params["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object"}, "strict": True}}
    assert params["reasoning_effort"] == "low"
    assert params["stream_options"] == {"include_usage": True}
    assert rp.text_format_to_response_format({"format": {"type": "json_object"}}) == {"type": "json_object"}


def test_build_response_object_defaults():
    obj = rt.build_response_object(response_id="resp_x", model="m", output_items=[
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "a"}]}])
    assert obj["output"][0]["id"].startswith("msg_") and obj["output"][0]["status"] == "completed"
    assert obj["output"][0]["content"][0] == {"type": "output_text", "text": "a", "annotations": [],
                                              "logprobs": []}
    assert (obj["tools"], obj["tool_choice"], obj["truncation"], obj["text"]) == (
        [], "auto", "disabled", {"format": {"type": "text"}})
    assert obj["temperature"] == 1.0 and obj["top_p"] == 1.0 and obj["store"] is True


def test_native_input_is_stateless():
    items = [{"type": "message", "id": "msg_1", "role": "user", "status": "completed",
              "content": [{"type": "input_text", "text": "q"}]},
             {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "t"}]},
             {"type": "reasoning", "id": "rs_2", "summary": [], "encrypted_content": "zzz"},
             {"type": "function_call", "id": "fc_1", "call_id": "c", "name": "f", "arguments": "{}",
              "status": "completed"}]
    out = native_input(items)
    assert out == [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "q"}]},
                   {"type": "reasoning", "id": "rs_2", "summary": [], "encrypted_content": "zzz"},
                   {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}]
    params = native_request({"model": "m", "nomyo": {}, "previous_response_id": "r", "background": True,
                             "temperature": 0.1}, items[:1], "gpt", stream=True)
    assert params["store"] is False and params["stream"] is True and params["model"] == "gpt"
    assert "nomyo" not in params and "previous_response_id" not in params and "background" not in params


def test_native_request_sends_only_responses_fields():
    body = {"model": "client-model", "input": "hi", "temperature": 0.2, "client_metadata": {"a": "1"},
            "extra_headers": {"X-Evil": "1"}, "extra_query": {"q": "1"}, "extra_body": {"store": True},
            "timeout": 0.001, "background": True, "store": True, "stream": True, "nomyo": {"cache": True},
            "previous_response_id": "resp_1", "conversation": "conv_1"}
    params = native_request(body, [{"type": "message", "role": "user", "content": "hi"}], "gpt-5", stream=False)
    assert params == {"temperature": 0.2, "extra_body": {"client_metadata": {"a": "1"}}, "model": "gpt-5",
                      "input": [{"type": "message", "role": "user", "content": "hi"}], "store": False}
