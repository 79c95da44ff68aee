"""HTTP routes of the Responses API: create, retrieve, delete, cancel, input_items, models.

Parse, call the turn engine, shape the reply; nothing else. ``POST
/v1/responses`` prepares the turn (``engine.turn``), answers from the LLM cache
when asked, hands background turns to the jobs, and otherwise runs the turn
with ``engine.runner.TurnRun``.

This module is also the gateway's seam to its backends: the runner calls
``choose_endpoint``, ``decrement_usage``, ``is_ext_openai_endpoint``,
``_make_openai_client``, ``create_chat_with_retries`` and ``get_llm_cache``
through this module's namespace, read at call time (``router`` passes the
module as the gateway's ``calls``), so patching them here takes effect at once.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable

import orjson
from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from api.sse import EventStreamResponse, sse_of_batches, sse_of_events
from backends import (  # noqa: F401  (the seam: see the module docstring)
    _make_openai_client, choose_endpoint, create_chat_with_retries, decrement_usage, is_ext_openai_endpoint)
from cache import get_llm_cache  # noqa: F401  (the seam)
from db import ResponseStore
from engine.gateway import Gateway
from engine.runner import TurnRun
from engine.tokens import count_input_tokens, estimate_input_tokens
from engine.turn import bad_input, prepare_turn
from errors import APIError
from requests.responses import InvalidInput, build_response_object, normalize_output_item
from requests.stream import response_to_events
from requests.validation import CreateResponseBody, validate_create_body, validate_input_tokens_body

router = APIRouter()


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


def _store(request: Request) -> ResponseStore:
    return request.app.state.gateway.store


def _owner(request: Request) -> str | None:
    return getattr(request.state, "owner", None)


def _not_found(response_id: str) -> APIError:
    return APIError(404, f"No response found with id '{response_id}'.", param="response_id",
                    code="response_not_found")


# ── create ─────────────────────────────────────────────────────────────────────

async def _parse_json(request: Request) -> Any:
    raw = await request.body()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise APIError(400, f"The request body is not valid JSON: {exc}.", code="invalid_json") from None
    try:  # what cannot be written back (nested past orjson's 254 levels) cannot be stored or answered
        orjson.dumps(data)
    except orjson.JSONEncodeError:
        raise APIError(400, "The request body is nested too deeply.", code="invalid_json") from None
    return data


async def _parse_body(request: Request) -> dict:
    try:
        return validate_create_body(await _parse_json(request), _gateway(request).settings.max_input_items)
    except InvalidInput as exc:
        raise bad_input(exc) from None


class ClientGone(Exception):
    """The client closed its connection while the gateway waited for the backend."""


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_client_leaves(request: Request, work: Awaitable[Any]) -> Any:
    """Await ``work`` while watching the connection: a client that leaves cancels it at once
    (the upstream call, its usage slot, the backend's generation) and raises :class:`ClientGone`.
    ``work`` runs in this task; only the watch has a task of its own."""
    task = asyncio.current_task()
    gone = False

    async def watch() -> None:
        nonlocal gone
        await _wait_for_disconnect(request)
        gone = True
        task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if gone:
            task.uncancel()
            raise ClientGone() from None
        raise
    finally:
        watcher.cancel()


_CREATE_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": CreateResponseBody.model_json_schema()}}}}


@router.post("/v1/responses", openapi_extra=_CREATE_BODY)
async def create_response(request: Request) -> Response:
    """Create a model response (OpenAI ``POST /v1/responses``)."""
    gateway = _gateway(request)
    turn = await prepare_turn(gateway.store, await _parse_body(request), _owner(request),
                              gateway.settings.model_aliases, gateway.seal, gateway.chain_bounds)
    run = TurnRun(gateway, turn)

    cached = await run.from_cache()
    if cached is not None:
        return EventStreamResponse(sse_of_events(response_to_events(cached))) if turn.stream else _json(cached)

    if turn.background:
        if not gateway.registry.has_native_endpoints():
            try:  # only Chat endpoints: input Chat cannot express is a 400 now, not a failed job later
                turn.messages
            except InvalidInput as exc:
                raise bad_input(exc) from None
        job = await gateway.jobs.submit(turn)
        if turn.stream:
            return EventStreamResponse(sse_of_batches(job.follow()))
        return _json(job.queued)

    if not turn.stream:  # the run opens its upstream itself: one watch covers both waits
        return _json(await _unless_client_leaves(request, run.answer()))
    await _unless_client_leaves(request, run.open())
    try:
        await run.begin_stream()
    except BaseException:
        await run.settle(asyncio.CancelledError())
        raise
    return EventStreamResponse(sse_of_batches(run.events()), on_close=lambda: run.settle(asyncio.CancelledError()))


@router.post("/v1/responses/input_tokens")
async def count_input_tokens_route(request: Request) -> Response:
    """How many input tokens a create body would be (OpenAI ``POST /v1/responses/input_tokens``),
    its chain included; ``nomyo.exact`` says whether the backend's tokenizer counted them."""
    gateway = _gateway(request)
    try:
        body = validate_input_tokens_body(await _parse_json(request), gateway.settings.max_input_items)
    except InvalidInput as exc:
        raise bad_input(exc) from None
    named = body.get("model") is not None
    turn = await prepare_turn(gateway.store, body if named else {**body, "model": ""}, _owner(request),
                              gateway.settings.model_aliases, gateway.seal, gateway.chain_bounds)
    try:
        count = await count_input_tokens(gateway, turn) if named else estimate_input_tokens(turn)
    except InvalidInput as exc:
        raise bad_input(exc) from None
    return _json(count.body())


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
    job = _gateway(request).jobs.jobs.get(response_id)
    if job is not None and job.turn.stream:
        return EventStreamResponse(sse_of_batches(job.follow(after)))
    if job is not None:
        await _gateway(request).jobs.wait(response_id)
        row = await _row(request, response_id)
    events = await _store(request).get_events(response_id, after)
    if not events:
        events = [e for e in response_to_events(_response_of(row), queued=row["background"])
                  if e["sequence_number"] > after]
    return EventStreamResponse(sse_of_events(events))


@router.delete("/v1/responses/{response_id}")
async def delete_response(request: Request, response_id: str) -> Response:
    """Delete a stored response (a running background job is cancelled first)."""
    await _row(request, response_id)
    await _gateway(request).jobs.cancel(response_id)
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
        if not await _gateway(request).jobs.cancel(response_id):
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
async def list_models(request: Request) -> Response:
    """Every model served by a reachable endpoint, in OpenAI's list shape."""
    now = int(time.time())
    data = [{"id": name, "object": "model", "created": now, "owned_by": "nomyo-router"}
            for name in _gateway(request).registry.models()]
    return _json({"object": "list", "data": data})
