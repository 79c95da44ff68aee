"""The Conversations API and ``conversation`` on create, over the Ollama-protocol server on a real socket.

Every object is validated strictly as its ``openai.types.conversations`` type; the
OpenAI SDK's ``client.conversations`` is the client where it can be.
"""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
from openai.types.conversations import Conversation, ConversationDeletedResource, ConversationItemList
from openai.types.conversations.conversation_item import ConversationItem
from pydantic import TypeAdapter

import router
from tests.conformance import assert_openai_error, check_response
from tests.e2e.ollama_server import DEFAULT_TEXT

_ITEM = TypeAdapter(ConversationItem)


@pytest.fixture
async def gw(gateway_factory, ollama):
    async with gateway_factory(endpoints=[ollama.url], max_concurrent_connections=8) as http:
        yield http


def sdk(api_key: str = "none") -> openai.AsyncOpenAI:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=router.app), base_url="http://gateway")
    return openai.AsyncOpenAI(base_url="http://gateway/v1", api_key=api_key, http_client=http, max_retries=0)


def check_list(body: dict) -> ConversationItemList:
    listed = ConversationItemList.model_validate(body, strict=True)
    for item in body["data"]:
        _ITEM.validate_python(item, strict=True)
    return listed


def texts(items: list[dict]) -> list[str]:
    return [part.get("text") for item in items if item["type"] == "message" for part in item["content"]]


async def test_the_sdk_creates_reads_updates_and_deletes_a_conversation(gw):
    client = sdk()
    made = await client.conversations.create(metadata={"topic": "demo"},
                                             items=[{"type": "message", "role": "user", "content": "hello"}])
    raw = (await gw.get(f"/v1/conversations/{made.id}")).json()
    Conversation.model_validate(raw, strict=True)
    assert raw["id"].startswith("conv_") and raw["metadata"] == {"topic": "demo"}

    updated = await client.conversations.update(made.id, metadata={"topic": "changed"})
    assert updated.metadata == {"topic": "changed"}
    assert (await client.conversations.retrieve(made.id)).metadata == {"topic": "changed"}

    added = await client.conversations.items.create(made.id, items=[
        {"type": "message", "role": "assistant", "content": "hi there"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "how are you"}]}])
    assert [item.type for item in added.data] == ["message", "message"]

    listed = (await gw.get(f"/v1/conversations/{made.id}/items", params={"order": "asc"})).json()
    check_list(listed)
    assert texts(listed["data"]) == ["hello", "hi there", "how are you"]
    assert listed["data"][1]["content"][0]["annotations"] == []  # an assistant message read as output

    one = await client.conversations.items.retrieve(listed["data"][0]["id"], conversation_id=made.id)
    assert one.id == listed["data"][0]["id"]
    after = await client.conversations.items.delete(listed["data"][0]["id"], conversation_id=made.id)
    assert isinstance(after, Conversation) and after.id == made.id
    gone = await gw.get(f"/v1/conversations/{made.id}/items/{listed['data'][0]['id']}")
    assert assert_openai_error(gone, 404)["code"] == "item_not_found"

    deleted = await gw.delete(f"/v1/conversations/{made.id}")
    ConversationDeletedResource.model_validate(deleted.json(), strict=True)
    assert deleted.json() == {"id": made.id, "object": "conversation.deleted", "deleted": True}
    assert assert_openai_error(await gw.get(f"/v1/conversations/{made.id}"), 404)["code"] == "conversation_not_found"
    assert (await gw.get(f"/v1/conversations/{made.id}/items")).status_code == 404


async def test_items_page_with_after_limit_and_order(gw):
    made = (await gw.post("/v1/conversations", json={"items": [
        {"role": "user", "content": f"message {n}"} for n in range(5)]})).json()
    ids = [item["id"] for item in (await gw.get(f"/v1/conversations/{made['id']}/items",
                                                params={"order": "asc"})).json()["data"]]
    first = (await gw.get(f"/v1/conversations/{made['id']}/items", params={"limit": 2})).json()
    check_list(first)
    assert [i["id"] for i in first["data"]] == ids[::-1][:2] and first["has_more"] is True
    assert first["first_id"] == ids[4] and first["last_id"] == ids[3]
    rest = (await gw.get(f"/v1/conversations/{made['id']}/items",
                         params={"limit": 10, "after": first["last_id"]})).json()
    assert [i["id"] for i in rest["data"]] == ids[::-1][2:] and rest["has_more"] is False
    ascending = (await gw.get(f"/v1/conversations/{made['id']}/items",
                              params={"order": "asc", "after": ids[1], "limit": 2})).json()
    assert [i["id"] for i in ascending["data"]] == ids[2:4]
    for params in ({"limit": 0}, {"limit": 101}, {"order": "sideways"}, {"after": "msg_unknown"},
                   {"include": "no.such.value"}):
        assert_openai_error(await gw.get(f"/v1/conversations/{made['id']}/items", params=params), 400)
    empty = (await gw.post("/v1/conversations", json={})).json()
    listed = (await gw.get(f"/v1/conversations/{empty['id']}/items")).json()
    check_list(listed)
    assert listed["data"] == [] and listed["has_more"] is False


@pytest.mark.parametrize("body, param", [
    ({"items": [{"role": "user", "content": "x"}] * 21}, "items"),
    ({"metadata": {"k": 1}}, "metadata"),
    ({"metadata": {f"k{n}": "v" for n in range(17)}}, "metadata"),
    ({"items": [{"type": "message", "role": "wizard", "content": "x"}]}, "items[0].role"),
    ({"items": [{"type": "item_reference", "id": "msg_nowhere"}]}, "input"),
    ({"colour": "blue"}, "colour"),
])
async def test_a_bad_create_body_is_a_400_naming_the_field(gw, body, param):
    reply = await gw.post("/v1/conversations", json=body)
    assert reply.status_code in (400, 404)
    assert assert_openai_error(reply, reply.status_code)["param"] == param


async def test_update_needs_metadata_and_items_need_items(gw):
    made = (await gw.post("/v1/conversations", json={})).json()
    assert assert_openai_error(await gw.post(f"/v1/conversations/{made['id']}", json={}), 400)["param"] == "metadata"
    cleared = await gw.post(f"/v1/conversations/{made['id']}", json={"metadata": None})
    assert cleared.json()["metadata"] == {}
    assert assert_openai_error(await gw.post(f"/v1/conversations/{made['id']}/items", json={"items": []}),
                               400)["param"] == "items"
    missing = await gw.post("/v1/conversations/conv_nowhere/items", json={"items": [{"role": "user", "content": "x"}]})
    assert assert_openai_error(missing, 404)["code"] == "conversation_not_found"


async def test_turns_on_a_conversation_read_it_and_append_to_it(gw, ollama):
    made = (await gw.post("/v1/conversations", json={"items": [
        {"role": "user", "content": "My name is Ada."}]})).json()
    first = await gw.post("/v1/responses", json={"model": "tiny", "input": "What is my name?",
                                                 "conversation": made["id"]})
    assert first.status_code == 200, first.text
    check_response(first.json())
    assert first.json()["conversation"] == {"id": made["id"]}
    sent = ollama.requests[-1]["messages"]
    assert [m["content"] for m in sent] == ["My name is Ada.", "What is my name?"]

    second = await gw.post("/v1/responses", json={"model": "tiny", "input": "And again?",
                                                  "conversation": {"id": made["id"]}, "stream": True})
    assert second.status_code == 200 and "response.completed" in second.text
    assert [m["content"] for m in ollama.requests[-1]["messages"]] == [
        "My name is Ada.", "What is my name?", DEFAULT_TEXT, "And again?"]

    items = (await gw.get(f"/v1/conversations/{made['id']}/items", params={"order": "asc"})).json()
    check_list(items)
    assert texts(items["data"]) == ["My name is Ada.", "What is my name?", DEFAULT_TEXT, "And again?", DEFAULT_TEXT]
    assert items["data"][2]["id"] == first.json()["output"][0]["id"]
    # the response keeps its own input items
    own = (await gw.get(f"/v1/responses/{first.json()['id']}/input_items")).json()
    assert texts(own["data"]) == ["What is my name?"]


async def test_conversation_and_previous_response_id_together_is_a_400(gw):
    made = (await gw.post("/v1/conversations", json={})).json()
    earlier = (await gw.post("/v1/responses", json={"model": "tiny", "input": "hi"})).json()
    reply = await gw.post("/v1/responses", json={"model": "tiny", "input": "x", "conversation": made["id"],
                                                 "previous_response_id": earlier["id"]})
    error = assert_openai_error(reply, 400)
    assert error["param"] == "conversation" and error["code"] == "mutually_exclusive_parameters"
    for bad in ({"id": 3}, {"id": "conv_x", "extra": 1}, ""):
        assert_openai_error(await gw.post("/v1/responses", json={"model": "tiny", "input": "x",
                                                                 "conversation": bad}), 400)


async def test_an_unknown_conversation_is_a_404_and_holds_nothing(gw):
    reply = await gw.post("/v1/responses", json={"model": "tiny", "input": "x", "conversation": "conv_nowhere"})
    error = assert_openai_error(reply, 404)
    assert error["code"] == "conversation_not_found" and error["param"] == "conversation"


async def test_a_failed_turn_appends_nothing_and_frees_the_conversation(gw, ollama):
    made = (await gw.post("/v1/conversations", json={"items": [{"role": "user", "content": "start"}]})).json()
    ollama.fail_status, ollama.fail_count = 400, 1
    failed = await gw.post("/v1/responses", json={"model": "tiny", "input": "this fails", "conversation": made["id"]})
    assert failed.status_code == 400
    listed = (await gw.get(f"/v1/conversations/{made['id']}/items")).json()
    assert texts(listed["data"]) == ["start"]
    ok = await gw.post("/v1/responses", json={"model": "tiny", "input": "now", "conversation": made["id"]})
    assert ok.status_code == 200, ok.text  # the failure left the conversation free


async def test_a_second_turn_while_one_runs_is_a_409_and_never_interleaves(gw, ollama):
    made = (await gw.post("/v1/conversations", json={})).json()
    ollama.first_byte_delay = 1.0
    slow = asyncio.create_task(gw.post("/v1/responses", json={"model": "tiny", "input": "first",
                                                              "conversation": made["id"]}))
    while ollama.in_flight == 0:  # the first turn holds the conversation once its call is out
        await asyncio.sleep(0.01)
    second = await gw.post("/v1/responses", json={"model": "tiny", "input": "second", "conversation": made["id"]})
    error = assert_openai_error(second, 409)
    assert error["code"] == "conversation_locked" and error["param"] == "conversation"
    assert (await slow).status_code == 200
    ollama.first_byte_delay = 0.0
    third = await gw.post("/v1/responses", json={"model": "tiny", "input": "third", "conversation": made["id"]})
    assert third.status_code == 200
    listed = (await gw.get(f"/v1/conversations/{made['id']}/items", params={"order": "asc"})).json()
    assert texts(listed["data"]) == ["first", DEFAULT_TEXT, "third", DEFAULT_TEXT]


async def test_a_background_turn_appends_when_it_finishes(gw, ollama):
    made = (await gw.post("/v1/conversations", json={})).json()
    queued = (await gw.post("/v1/responses", json={"model": "tiny", "input": "later", "background": True,
                                                   "conversation": made["id"]})).json()
    for _ in range(1500):  # as long as a loaded machine may need; the loop ends at the first final status
        got = (await gw.get(f"/v1/responses/{queued['id']}")).json()
        if got["status"] not in ("queued", "in_progress"):
            break
        await asyncio.sleep(0.02)
    assert got["status"] == "completed" and got["conversation"] == {"id": made["id"]}
    # The items are appended just after the final state is stored (two writes, not one: a reader
    # may come between them), so the conversation is read until they are there.
    for _ in range(500):
        listed = (await gw.get(f"/v1/conversations/{made['id']}/items", params={"order": "asc"})).json()
        if listed["data"]:
            break
        await asyncio.sleep(0.02)
    assert texts(listed["data"]) == ["later", DEFAULT_TEXT]


async def test_tenants_see_only_their_own_conversations(gateway_factory, ollama):
    keys = {"a": {"keys": ["key-a"]}, "b": {"keys": ["key-b"]}}
    async with gateway_factory(endpoints=[ollama.url], tenants=keys) as http:
        a, b = {"Authorization": "Bearer key-a"}, {"Authorization": "Bearer key-b"}
        made = (await http.post("/v1/conversations", json={"items": [{"role": "user", "content": "secret"}]},
                                headers=a)).json()
        item_id = (await http.get(f"/v1/conversations/{made['id']}/items", headers=a)).json()["data"][0]["id"]
        for method, path, body in (("GET", f"/v1/conversations/{made['id']}", None),
                                   ("POST", f"/v1/conversations/{made['id']}", {"metadata": {}}),
                                   ("DELETE", f"/v1/conversations/{made['id']}", None),
                                   ("GET", f"/v1/conversations/{made['id']}/items", None),
                                   ("POST", f"/v1/conversations/{made['id']}/items",
                                    {"items": [{"role": "user", "content": "x"}]}),
                                   ("GET", f"/v1/conversations/{made['id']}/items/{item_id}", None),
                                   ("DELETE", f"/v1/conversations/{made['id']}/items/{item_id}", None),
                                   ("POST", "/v1/responses", {"model": "tiny", "input": "x",
                                                              "conversation": made["id"]})):
            reply = await http.request(method, path, json=body, headers=b)
            assert reply.status_code == 404, (method, path, reply.text)
        # nor can another tenant reach its items by reference
        ref = await http.post("/v1/responses", headers=b, json={"model": "tiny", "input": [
            {"type": "item_reference", "id": item_id}]})
        assert assert_openai_error(ref, 404)["code"] == "item_not_found"
        mine = await http.post("/v1/responses", headers=a, json={"model": "tiny", "input": [
            {"type": "item_reference", "id": item_id}]})
        assert mine.status_code == 200
        assert (await http.get(f"/v1/conversations/{made['id']}/items", headers=a)).json()["data"][0]["id"] == item_id


async def test_include_on_reads(gw, ollama):
    made = (await gw.post("/v1/conversations", json={})).json()
    answer = (await gw.post("/v1/responses", json={"model": "tiny", "input": "[think] hi", "top_logprobs": 2,
                                                   "conversation": made["id"]})).json()
    kinds = [item["type"] for item in answer["output"]]
    assert kinds == ["reasoning", "message"]

    plain = (await gw.get(f"/v1/conversations/{made['id']}/items", params={"order": "asc"})).json()
    reasoning = next(i for i in plain["data"] if i["type"] == "reasoning")
    assert "encrypted_content" not in reasoning or reasoning["encrypted_content"] is None
    sealed = (await gw.get(f"/v1/conversations/{made['id']}/items",
                           params={"order": "asc", "include[]": "reasoning.encrypted_content"})).json()
    check_list(sealed)
    blob = next(i for i in sealed["data"] if i["type"] == "reasoning")["encrypted_content"]
    assert isinstance(blob, str) and blob
    # the sealed item goes back as input and opens: the model gets its reasoning back
    again = await gw.post("/v1/responses", json={"model": "tiny", "input": [
        {"type": "reasoning", "summary": [], "encrypted_content": blob},
        {"role": "user", "content": "more"}]})
    assert again.status_code == 200, again.text
    tampered = blob[:-6] + ("AAAAAA" if not blob.endswith("AAAAAA") else "BBBBBB")
    bad = await gw.post("/v1/responses", json={"model": "tiny", "input": [
        {"type": "reasoning", "summary": [], "encrypted_content": tampered}, {"role": "user", "content": "x"}]})
    assert assert_openai_error(bad, 400)["code"] == "invalid_encrypted_content"

    item = await gw.get(f"/v1/conversations/{made['id']}/items/{reasoning['id']}",
                        params={"include": "reasoning.encrypted_content"})
    assert item.json()["encrypted_content"]
    assert_openai_error(await gw.get(f"/v1/conversations/{made['id']}/items/{reasoning['id']}",
                                     params={"include": "everything"}), 400)

    with_logprobs = (await gw.get(f"/v1/responses/{answer['id']}",
                                  params={"include[]": ["message.output_text.logprobs",
                                                        "reasoning.encrypted_content"]})).json()
    check_response(with_logprobs)
    assert next(i for i in with_logprobs["output"] if i["type"] == "reasoning")["encrypted_content"]
    assert_openai_error(await gw.get(f"/v1/responses/{answer['id']}", params={"include": "nope"}), 400)
    assert_openai_error(await gw.get(f"/v1/responses/{answer['id']}/input_items", params={"include": "nope"}), 400)
    listed = (await gw.get(f"/v1/responses/{answer['id']}/input_items",
                           params={"include": "message.input_image.image_url"})).json()
    assert texts(listed["data"]) == ["[think] hi"]


async def test_a_turn_the_store_cannot_record_adds_nothing_and_frees_the_conversation_later(gw, ollama):
    """The final write fails (another writer holds the store's lock): the client is told 503, the
    conversation gets none of the turn's items, and it is freed once the store takes writes again."""
    import sqlite3
    store = router.app.state.gateway.store
    if store.shared:
        pytest.skip("holds the SQLite store's write lock from outside")
    made = (await gw.post("/v1/conversations", json={})).json()
    await store.conn.execute("PRAGMA busy_timeout=200")
    ollama.first_byte_delay = 0.5
    turn = asyncio.create_task(gw.post("/v1/responses", json={"model": "tiny", "input": "lost",
                                                             "conversation": made["id"]}))
    while ollama.in_flight == 0:          # the conversation is claimed; the answer is on its way
        await asyncio.sleep(0.01)
    blocker = sqlite3.connect(store.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        refused = await turn
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        ollama.first_byte_delay = 0.0
    assert refused.status_code == 503, refused.text
    for _ in range(300):                  # the release is retried until the store takes it
        if await store.conversation_holder(made["id"]) is None:
            break
        await asyncio.sleep(0.05)
    assert await store.conversation_holder(made["id"]) is None
    ok = await gw.post("/v1/responses", json={"model": "tiny", "input": "kept", "conversation": made["id"]})
    assert ok.status_code == 200
    listed = (await gw.get(f"/v1/conversations/{made['id']}/items", params={"order": "asc"})).json()
    assert texts(listed["data"]) == ["kept", DEFAULT_TEXT]
