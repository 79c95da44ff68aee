"""HTTP routes of the Responses API: create, input_tokens, compact, retrieve, delete, cancel,
input_items, models.

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

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from api.common import check_page, gateway_of, include_of, json_response, owner_of, parse_json, store_of
from api.sse import EventStreamResponse, sse_of_batches, sse_of_events
from backends import (  # noqa: F401  (the seam: see the module docstring)
    _make_openai_client, choose_endpoint, create_chat_with_retries, decrement_usage, is_ext_openai_endpoint)
from cache import get_llm_cache  # noqa: F401  (the seam)
from db import ACTIVE
from engine.eventlog import follow_stored
from engine.runner import TurnRun
from engine.tokens import count_input_tokens, estimate_input_tokens
from engine.compaction import compact
from engine.gateway import Gateway
from engine.turn import Turn, bad_input, prepare_turn, release_conversation
from errors import APIError
from requests.include import view_items, view_response
from requests.responses import InvalidInput, build_response_object, stored_items_view
from requests.stream import response_to_events
from logs import note
from requests.validation import (CreateResponseBody, validate_compact_body, validate_create_body,
                                 validate_input_tokens_body)

router = APIRouter()


def _not_found(response_id: str) -> APIError:
    return APIError(404, f"No response found with id '{response_id}'.", param="response_id",
                    code="response_not_found")


# ── create ─────────────────────────────────────────────────────────────────────

async def _parse_body(request: Request) -> dict:
    try:
        return validate_create_body(await parse_json(request), gateway_of(request).settings.max_input_items)
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
    """Create a model response (OpenAI ``POST /v1/responses``). A turn on a ``conversation`` holds
    it until the turn ends; whatever ends the request before its run settles frees it here."""
    gateway = gateway_of(request)
    turn = await prepare_turn(gateway.store, await _parse_body(request), owner_of(request),
                              gateway.settings.model_aliases, gateway.seal, gateway.chain_bounds, files=gateway.files)
    try:
        return await _run(request, gateway, turn)
    except BaseException:
        await release_conversation(gateway.store, turn)
        raise


async def _run(request: Request, gateway: Gateway, turn: Turn) -> Response:
    run = TurnRun(gateway, turn)
    cached = await run.from_cache()
    if cached is not None:
        return EventStreamResponse(sse_of_events(response_to_events(cached))) if turn.stream else json_response(cached)

    if turn.background:
        if not gateway.registry.has_native_endpoints():
            try:  # only Chat endpoints: input Chat cannot express is a 400 now, not a failed job later
                await turn.load_files()
                turn.messages
            except InvalidInput as exc:
                raise bad_input(exc) from None
        job = await gateway.jobs.submit(turn)
        if turn.stream:
            return EventStreamResponse(sse_of_batches(job.follow()))
        return json_response(job.queued)

    if not turn.stream:  # the run opens its upstream itself: one watch covers both waits
        return json_response(await _unless_client_leaves(request, run.answer()))
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
    gateway = gateway_of(request)
    try:
        body = validate_input_tokens_body(await parse_json(request), gateway.settings.max_input_items)
    except InvalidInput as exc:
        raise bad_input(exc) from None
    named = body.get("model") is not None
    turn = await prepare_turn(gateway.store, body if named else {**body, "model": ""}, owner_of(request),
                              gateway.settings.model_aliases, gateway.seal, gateway.chain_bounds, claim=False,
                              files=gateway.files)
    try:
        if not named:
            await turn.load_files()
        count = await count_input_tokens(gateway, turn) if named else estimate_input_tokens(turn)
    except InvalidInput as exc:
        raise bad_input(exc) from None
    return json_response(count.body())


@router.post("/v1/responses/compact")
async def compact_route(request: Request) -> Response:
    """Compact a context (OpenAI ``POST /v1/responses/compact``): its user messages, then one
    ``compaction`` item holding the model's summary of it (see ``engine.compaction``). Not stored."""
    gateway = gateway_of(request)
    try:
        body = validate_compact_body(await parse_json(request), gateway.settings.max_input_items)
    except InvalidInput as exc:
        raise bad_input(exc) from None
    turn = await prepare_turn(gateway.store, {**body, "store": False,
                                              "max_output_tokens": gateway.settings.compaction_max_tokens},
                              owner_of(request), gateway.settings.model_aliases, gateway.seal, gateway.chain_bounds,
                              files=gateway.files)
    turn.compacting = True
    note(model=turn.model, response_id=turn.id)
    return json_response(await _unless_client_leaves(request, compact(gateway, turn)))


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
    row = await store_of(request).get_response(response_id, owner_of(request))
    if row is None:
        raise _not_found(response_id)
    return row


@router.get("/v1/responses/{response_id}")
async def retrieve_response(request: Request, response_id: str, stream: bool = False,
                            starting_after: int | None = Query(None, ge=-1, le=2**53)) -> Response:
    """Retrieve a stored response (``include`` applied, see ``requests.include``); with
    ``stream=true`` replay its events after ``starting_after`` and follow it while it runs
    (background responses)."""
    include = include_of(request)
    row = await _row(request, response_id)
    if not stream:
        return json_response(view_response(_response_of(row), include, gateway_of(request).seal.seal))
    if not row["background"] and row["status"] in ("queued", "in_progress"):
        raise APIError(400, "Only background responses can be streamed while they run; retrieve this one "
                            "when it has finished.", param="stream", code="not_background")
    after = -1 if starting_after is None else starting_after
    gateway = gateway_of(request)
    job = gateway.jobs.jobs.get(response_id)
    if job is not None and job.turn.stream:
        return EventStreamResponse(sse_of_batches(job.follow(after)))
    if job is not None:
        await gateway.jobs.wait(response_id)
    # Whatever runs it elsewhere (another replica) writes its events to the store as it goes.
    return EventStreamResponse(sse_of_batches(follow_stored(gateway.store, response_id, after, gateway.waiter())))


@router.delete("/v1/responses/{response_id}")
async def delete_response(request: Request, response_id: str) -> Response:
    """Delete a stored response (a running background job is cancelled first, wherever it runs)."""
    row = await _row(request, response_id)
    gateway = gateway_of(request)
    if not await gateway.jobs.cancel(response_id) and row["background"] and row["status"] in ACTIVE:
        await gateway.cancel_elsewhere(row)
    if not await store_of(request).delete_response(response_id, owner_of(request)):
        raise _not_found(response_id)
    return json_response({"id": response_id, "object": "response", "deleted": True})


@router.post("/v1/responses/{response_id}/cancel")
async def cancel_response(request: Request, response_id: str) -> Response:
    """Cancel a background response (OpenAI: only background responses can be cancelled), on
    whichever replica runs it; answers its final state. A response already finished is returned
    as it is."""
    row = await _row(request, response_id)
    if not row["background"]:
        raise APIError(400, "Only background responses can be cancelled.", param="response_id",
                       code="not_background")
    if row["status"] in ACTIVE:
        gateway = gateway_of(request)
        if not await gateway.jobs.cancel(response_id):
            await gateway.cancel_elsewhere({**row, "response": _response_of(row)})
        row = await _row(request, response_id)
    return json_response(_response_of(row))


@router.get("/v1/responses/{response_id}/input_items")
async def list_input_items(request: Request, response_id: str, limit: int = 20, order: str = "desc",
                           after: str | None = None) -> Response:
    """The input items of a response, as a list object (``first_id``, ``last_id``, ``has_more``),
    ``include`` applied."""
    check_page(limit, order)
    include = include_of(request)
    row = await _row(request, response_id)
    items = view_items(stored_items_view(row["input_items"]), include, gateway_of(request).seal.seal)
    if order == "desc":
        items.reverse()
    if after is not None:
        ids = [item.get("id") for item in items]
        if after not in ids:
            raise APIError(400, f"No input item with id '{after}'.", param="after")
        items = items[ids.index(after) + 1:]
    page = items[:limit]
    return json_response({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                  "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit})


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    """Every model served by a reachable endpoint, in OpenAI's list shape."""
    now = int(time.time())
    data = [{"id": name, "object": "model", "created": now, "owned_by": "nomyo-router"}
            for name in gateway_of(request).registry.models()]
    return json_response({"object": "list", "data": data})
