"""HTTP routes of the Responses API: create, retrieve, delete, cancel, input_items.

``POST /v1/responses`` validates the body, resolves ``previous_response_id`` and
``item_reference`` items from the store, answers from the cache when asked,
then picks an endpoint and runs the turn on the translated path (Chat
Completions) or the native path (an upstream Responses API). The backend
helpers are looked up in this module's namespace at call time.
"""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable

import orjson
from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from api.jobs import JobManager
from api.runs import (EventStreamResponse, ForegroundStream, Turn, Upstream, completion_to_response,
                      native_result_to_response, save)
from backends import (BackendUnavailable, _make_openai_client, choose_endpoint, create_chat_with_retries,
                      create_native_response, decrement_usage, get_registry, is_ext_openai_endpoint)
from cache import get_llm_cache
from db import ResponseStore
from errors import APIError
from metrics import BACKEND_ERRORS, CACHE_LOOKUPS
from requests.native import native_request
from requests.params import chat_request_params
from requests.responses import (InvalidInput, build_response_object, new_id,
                                normalize_input_items, normalize_output_item)
from requests.stream import response_to_events, sse_frame
from requests.validation import CreateResponseBody, validate_create_body

router = APIRouter()

CACHE_ROUTE = "openai_responses"
#: Create-body fields that change a model's answer, and so belong in a cache key.
_ANSWER_FIELDS = ("tools", "tool_choice", "parallel_tool_calls", "temperature", "top_p", "presence_penalty",
                  "frequency_penalty", "max_output_tokens", "max_tool_calls", "top_logprobs", "text",
                  "reasoning", "truncation")
_PREFIXES = {"message": "msg", "function_call": "fc", "reasoning": "rs"}


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _store(request: Request) -> ResponseStore:
    return request.app.state.store


def _jobs(request: Request) -> JobManager:
    return request.app.state.jobs


def _owner(request: Request) -> str | None:
    return getattr(request.state, "owner", None)


def _bad_input(exc: InvalidInput) -> APIError:
    return APIError(400, exc.message, param=exc.param, code=exc.code)


def _not_found(response_id: str) -> APIError:
    return APIError(404, f"No response found with id '{response_id}'.", param="response_id",
                    code="response_not_found")


# ── create ─────────────────────────────────────────────────────────────────────

async def _parse_body(request: Request) -> dict:
    raw = await request.body()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise APIError(400, f"The request body is not valid JSON: {exc}.", code="invalid_json") from None
    try:  # what cannot be written back (nested past orjson's 254 levels) cannot be stored or answered
        orjson.dumps(data)
    except orjson.JSONEncodeError:
        raise APIError(400, "The request body is nested too deeply.", code="invalid_json") from None
    settings = request.app.state.settings
    try:
        return validate_create_body(data, settings.max_input_items)
    except InvalidInput as exc:
        raise _bad_input(exc) from None


async def _resolve_references(store: ResponseStore, items: list[dict], owner: str | None) -> list[dict]:
    refs = [item["id"] for item in items if item["type"] == "item_reference"]
    if not refs:
        return items
    found = await store.find_items(refs, owner)
    missing = [ref for ref in refs if ref not in found]
    if missing:
        raise APIError(404, f"Item with id '{missing[0]}' not found.", param="input", code="item_not_found")
    return [found[item["id"]] if item["type"] == "item_reference" else item for item in items]


async def _prepare_turn(request: Request, body: dict) -> Turn:
    store, owner = _store(request), _owner(request)
    try:
        input_items = normalize_input_items(body.get("input"))
    except InvalidInput as exc:
        raise _bad_input(exc) from None
    input_items = await _resolve_references(store, input_items, owner)
    history: list[dict] = []
    previous = body.get("previous_response_id")
    if previous:
        chain = await store.get_chain_items(previous, owner)
        if chain is None:
            raise APIError(404, f"Previous response with id '{previous}' not found.",
                           param="previous_response_id", code="previous_response_not_found")
        history = chain
    turn = Turn(id=new_id("resp"), body=body, owner=owner, input_items=input_items, history=history)
    try:
        turn.messages  # translate now, so bad input is a 400 before any backend is asked
    except InvalidInput as exc:
        raise _bad_input(exc) from None
    return turn


async def open_upstream(turn: Turn) -> Upstream:
    """Choose an endpoint for ``turn`` and send it; fail over while endpoints are unreachable.

    Returns the :class:`Upstream` holding the endpoint's usage slot. Raises
    APIError (404 unknown model, 400 bad input, 502/504 backend faults, or the
    upstream's own 4xx/5xx).
    """
    excluded: set[str] = set()
    unavailable: BackendUnavailable | None = None
    while True:
        if excluded:
            try:
                endpoint, model = await choose_endpoint(turn.model, excluded)
            except APIError as exc:
                if exc.code == "backend_unavailable" and unavailable is not None:
                    raise unavailable from None  # the last endpoint's own failure says more
                raise
        else:
            endpoint, model = await choose_endpoint(turn.model)
        try:
            client = _make_openai_client(endpoint)
            native = is_ext_openai_endpoint(endpoint)
            if native:
                result = await create_native_response(
                    client, native_request(turn.body, turn.history + turn.input_items, model,
                                           stream=turn.stream))
            else:
                params = chat_request_params(turn.body, turn.messages, model, stream=turn.stream)
                result = await create_chat_with_retries(client, params)
        except InvalidInput as exc:
            await decrement_usage(endpoint, model)
            raise _bad_input(exc) from None
        except BackendUnavailable as exc:
            await decrement_usage(endpoint, model)
            BACKEND_ERRORS.labels(endpoint, "unavailable").inc()
            get_registry().mark_unreachable(endpoint, exc.message)
            excluded.add(endpoint)
            unavailable = exc
            continue
        except BaseException as exc:
            await decrement_usage(endpoint, model)
            if isinstance(exc, APIError):
                BACKEND_ERRORS.labels(endpoint, str(exc.status)).inc()
            raise
        return Upstream(endpoint=endpoint, model=model, native=native, result=result,
                        release=_release)


async def _release(endpoint: str, model: str) -> None:
    await decrement_usage(endpoint, model)


def _cache_options(turn: Turn) -> dict:
    """The key's options: what changes the answer, and the tenant (answers are never shared)."""
    options = {key: turn.body[key] for key in _ANSWER_FIELDS if turn.body.get(key) is not None}
    if turn.owner is not None:
        options["owner"] = turn.owner
    return options


async def _cache_lookup(turn: Turn) -> tuple[Callable[[dict], Awaitable[None]] | None, dict | None]:
    """``(write, cached Response object or None)``: ``write`` stores this request's
    answer under the same key; both are None when the request does not use the cache."""
    if not (turn.body.get("nomyo") or {}).get("cache") or turn.background:
        return None, None
    cache = get_llm_cache()
    if cache is None:
        return None, None
    options = _cache_options(turn)
    args = (CACHE_ROUTE, turn.model, turn.messages)
    hit = await (cache.get_chat(*args, options) if options else cache.get_chat(*args))
    CACHE_LOOKUPS.labels("hit" if hit else "miss").inc()

    async def write(response: dict) -> None:
        value = orjson.dumps(response)
        await (cache.set_chat(*args, value, options) if options else cache.set_chat(*args, value))
    return write, (orjson.loads(hit) if hit else None)


def _from_cache(turn: Turn, cached: dict) -> dict:
    items = [{**item, "id": new_id(_PREFIXES.get(item.get("type"), "item"))} for item in cached.get("output") or []]
    return turn.response("completed", items, usage=cached.get("usage"))


def _stream_of(events: Any) -> EventStreamResponse:
    async def body():
        for event in events:
            yield sse_frame(event)
    return EventStreamResponse(body())


_CREATE_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": CreateResponseBody.model_json_schema()}}}}


@router.post("/v1/responses", openapi_extra=_CREATE_BODY)
async def create_response(request: Request) -> Response:
    """Create a model response (OpenAI ``POST /v1/responses``)."""
    body = await _parse_body(request)
    turn = await _prepare_turn(request, body)
    store = _store(request)

    cache_write, cached = await _cache_lookup(turn)
    if cached is not None:
        response = _from_cache(turn, cached)
        if turn.store:
            await save(store, turn, response)
        return _stream_of(response_to_events(response)) if turn.stream else _json(response)

    if turn.background:
        queued = turn.response("queued", completed_at=None)
        await save(store, turn, queued)
        job = _jobs(request).start(turn)
        if turn.stream:
            async def follow():
                async for batch in job.follow():
                    yield b"".join([sse_frame(e) for e in batch])
            return EventStreamResponse(follow())
        return _json(queued)

    upstream = await open_upstream(turn)
    if turn.stream:
        try:
            if turn.store:
                await save(store, turn, turn.response("in_progress", completed_at=None))
            return ForegroundStream(store, turn, upstream, cache_write).response()
        except BaseException:
            await upstream.close()
            raise
    try:
        if upstream.native:
            response = native_result_to_response(turn, upstream.result)
        else:
            response = completion_to_response(turn, upstream.result)
    finally:
        await upstream.close()
    if turn.store:
        await save(store, turn, response)
    if cache_write is not None and response["status"] == "completed":
        await cache_write(response)
    return _json(response)


# ── retrieve, delete, cancel, input_items ─────────────────────────────────────

def _response_of(row: dict) -> dict:
    """The Response object of a stored row (rows written without one get a minimal object)."""
    if row["response"] is not None:
        return row["response"]
    return build_response_object(response_id=row["id"], model=row["model"], output_items=[],
                                 status=row["status"], created_at=row["created_at"],
                                 previous_response_id=row["previous_response_id"], completed_at=None,
                                 background=row["background"])


async def _row(request: Request, response_id: str) -> dict:
    row = await _store(request).get_response(response_id, _owner(request))
    if row is None:
        raise _not_found(response_id)
    return row


@router.get("/v1/responses/{response_id}")
async def retrieve_response(request: Request, response_id: str, stream: bool = False,
                            starting_after: int | None = Query(None, ge=-1, le=2**53)) -> Response:
    """Retrieve a stored response; with ``stream=true`` replay its events after
    ``starting_after`` and follow it while it runs (background responses)."""
    row = await _row(request, response_id)
    if not stream:
        return _json(_response_of(row))
    if not row["background"] and row["status"] in ("queued", "in_progress"):
        raise APIError(400, "Only background responses can be streamed while they run; retrieve this one "
                            "when it has finished.", param="stream", code="not_background")
    after = -1 if starting_after is None else starting_after
    job = _jobs(request).jobs.get(response_id)
    if job is not None and job.turn.stream:
        async def follow():
            async for batch in job.follow(after):
                yield b"".join([sse_frame(e) for e in batch])
        return EventStreamResponse(follow())
    if job is not None:
        await _jobs(request).wait(response_id)
        row = await _row(request, response_id)
    events = await _store(request).get_events(response_id, after)
    if not events:
        events = [e for e in response_to_events(_response_of(row), queued=row["background"])
                  if e["sequence_number"] > after]
    return _stream_of(events)


@router.delete("/v1/responses/{response_id}")
async def delete_response(request: Request, response_id: str) -> Response:
    """Delete a stored response (a running background job is cancelled first)."""
    await _row(request, response_id)
    await _jobs(request).cancel(response_id)
    if not await _store(request).delete_response(response_id, _owner(request)):
        raise _not_found(response_id)
    return _json({"id": response_id, "object": "response", "deleted": True})


@router.post("/v1/responses/{response_id}/cancel")
async def cancel_response(request: Request, response_id: str) -> Response:
    """Cancel a background response (OpenAI: only background responses can be cancelled).
    A response already finished is returned as it is."""
    row = await _row(request, response_id)
    if not row["background"]:
        raise APIError(400, "Only background responses can be cancelled.", param="response_id",
                       code="not_background")
    if row["status"] in ("queued", "in_progress"):
        if not await _jobs(request).cancel(response_id):
            response = {**_response_of(row), "status": "cancelled", "completed_at": None}
            await _store(request).update_response(response_id, response, only_if_active=True)
        row = await _row(request, response_id)
    return _json(_response_of(row))


@router.get("/v1/responses/{response_id}/input_items")
async def list_input_items(request: Request, response_id: str, limit: int = 20, order: str = "desc",
                           after: str | None = None) -> Response:
    """The input items of a response, as a list object (``first_id``, ``last_id``, ``has_more``)."""
    if not 1 <= limit <= 100:
        raise APIError(400, "'limit' must be between 1 and 100.", param="limit")
    if order not in ("asc", "desc"):
        raise APIError(400, "'order' must be 'asc' or 'desc'.", param="order")
    row = await _row(request, response_id)
    items = [normalize_output_item(item) if item.get("type") == "message" and item.get("role") == "assistant"
             else item for item in row["input_items"]]
    if order == "desc":
        items.reverse()
    if after is not None:
        ids = [item.get("id") for item in items]
        if after not in ids:
            raise APIError(400, f"No input item with id '{after}'.", param="after")
        items = items[ids.index(after) + 1:]
    page = items[:limit]
    return _json({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                  "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit})


@router.get("/v1/models")
async def list_models() -> Response:
    """Every model served by a reachable endpoint, in OpenAI's list shape."""
    now = int(time.time())
    data = [{"id": name, "object": "model", "created": now, "owned_by": "nomyo-router"}
            for name in get_registry().models()]
    return _json({"object": "list", "data": data})
