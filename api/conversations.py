"""HTTP routes of the Conversations API (OpenAI ``/v1/conversations``, ``openai.types.conversations``).

A conversation is a stored list of items a tenant owns; ``POST /v1/responses``
with ``conversation`` reads it as the turn's history and appends the turn's items
(``engine.turn``, ``engine.runner``). Parse, call the store, shape the reply.
Items sent here are normalized as a create's ``input`` is (ids given where they have
none, ``item_reference`` resolved, the gateway's own sealed reasoning opened).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from api.common import check_page, gateway_of, include_of, json_response, owner_of, parse_json, store_of
from engine.turn import bad_input, resolve_input
from errors import APIError
from requests.common import new_id
from requests.include import view_items
from requests.responses import InvalidInput, stored_items_view
from requests.validation import (ConversationCreateBody, ConversationItemsBody, ConversationUpdateBody,
                                 validate_body)

router = APIRouter()


def _not_found(conversation_id: str) -> APIError:
    return APIError(404, f"Conversation with id '{conversation_id}' not found.", param="conversation_id",
                    code="conversation_not_found")


def _item_not_found(item_id: str) -> APIError:
    return APIError(404, f"Item with id '{item_id}' not found.", param="item_id", code="item_not_found")


async def _body(request: Request, model: type) -> dict:
    try:
        return validate_body(model, await parse_json(request))
    except InvalidInput as exc:
        raise bad_input(exc) from None


async def _items(request: Request, raw: list | None) -> list[dict]:
    """The body's ``items`` as stored (normalized, references resolved, sealed reasoning opened)."""
    gateway = gateway_of(request)
    return await resolve_input(gateway.store, raw or [], owner_of(request), gateway.seal, param="items")


def _item_list(items: list[dict], has_more: bool) -> dict:
    """A ``ConversationItemList``; an empty one has empty ``first_id``/``last_id`` (the SDK types them str)."""
    return {"object": "list", "data": items, "first_id": items[0]["id"] if items else "",
            "last_id": items[-1]["id"] if items else "", "has_more": has_more}


def _view(request: Request, items: list[dict], include: frozenset[str]) -> list[dict]:
    return view_items(stored_items_view(items), include, gateway_of(request).seal.seal)


@router.post("/v1/conversations")
async def create_conversation(request: Request) -> Response:
    """Create a conversation with up to 20 ``items`` and ``metadata``; its Conversation object."""
    body = await _body(request, ConversationCreateBody)
    items = await _items(request, body.get("items"))
    conversation = await store_of(request).create_conversation(new_id("conv"), owner_of(request),
                                                               body.get("metadata") or {}, items)
    return json_response(conversation)


@router.get("/v1/conversations/{conversation_id}")
async def retrieve_conversation(request: Request, conversation_id: str) -> Response:
    """The Conversation object (404 ``conversation_not_found`` for another tenant's)."""
    conversation = await store_of(request).get_conversation(conversation_id, owner_of(request))
    if conversation is None:
        raise _not_found(conversation_id)
    return json_response(conversation)


@router.post("/v1/conversations/{conversation_id}")
async def update_conversation(request: Request, conversation_id: str) -> Response:
    """Replace the conversation's ``metadata`` (required; null clears it)."""
    body = await _body(request, ConversationUpdateBody)
    conversation = await store_of(request).update_conversation(conversation_id, owner_of(request),
                                                               body["metadata"] or {})
    if conversation is None:
        raise _not_found(conversation_id)
    return json_response(conversation)


@router.delete("/v1/conversations/{conversation_id}")
async def delete_conversation(request: Request, conversation_id: str) -> Response:
    """Delete the conversation and its items (responses made on it stay)."""
    if not await store_of(request).delete_conversation(conversation_id, owner_of(request)):
        raise _not_found(conversation_id)
    return json_response({"id": conversation_id, "object": "conversation.deleted", "deleted": True})


@router.get("/v1/conversations/{conversation_id}/items")
async def list_conversation_items(request: Request, conversation_id: str, limit: int = 20, order: str = "desc",
                                  after: str | None = None) -> Response:
    """A page of the conversation's items (``limit`` 1..100, ``order`` asc|desc, ``after`` an item id),
    ``include`` applied."""
    check_page(limit, order)
    include = include_of(request)
    try:
        page = await store_of(request).list_conversation_items(conversation_id, owner_of(request), limit=limit,
                                                               order=order, after=after)
    except KeyError:
        raise APIError(400, f"No item with id '{after}' in this conversation.", param="after") from None
    if page is None:
        raise _not_found(conversation_id)
    return json_response(_item_list(_view(request, page.items, include), page.has_more))


@router.post("/v1/conversations/{conversation_id}/items")
async def create_conversation_items(request: Request, conversation_id: str) -> Response:
    """Append up to 20 ``items``; the list of those added, ``include`` applied."""
    include = include_of(request)
    body = await _body(request, ConversationItemsBody)
    items = await _items(request, body["items"])
    if not await store_of(request).add_conversation_items(conversation_id, owner_of(request), items):
        raise _not_found(conversation_id)
    return json_response(_item_list(_view(request, items, include), False))


@router.get("/v1/conversations/{conversation_id}/items/{item_id}")
async def retrieve_conversation_item(request: Request, conversation_id: str, item_id: str) -> Response:
    """One item of the conversation, ``include`` applied."""
    include = include_of(request)
    store, owner = store_of(request), owner_of(request)
    item = await store.get_conversation_item(conversation_id, owner, item_id)
    if item is None:
        if await store.get_conversation(conversation_id, owner) is None:
            raise _not_found(conversation_id)
        raise _item_not_found(item_id)
    return json_response(_view(request, [item], include)[0])


@router.delete("/v1/conversations/{conversation_id}/items/{item_id}")
async def delete_conversation_item(request: Request, conversation_id: str, item_id: str) -> Response:
    """Remove one item; the Conversation object (as OpenAI answers)."""
    store, owner = store_of(request), owner_of(request)
    conversation = await store.get_conversation(conversation_id, owner)
    if conversation is None:
        raise _not_found(conversation_id)
    if not await store.delete_conversation_item(conversation_id, owner, item_id):
        raise _item_not_found(item_id)
    return json_response(conversation)
