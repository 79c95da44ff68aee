"""The Responses API over a WebSocket (``GET /v1/responses`` upgraded; the SDK's ``client.responses.connect()``).

One :class:`SocketSession` a connection. The client sends ``response.create`` (the create
body; always streamed) and ``response.steer``; the server sends each event of the turn's
run, one JSON message each, exactly as SSE carries them, and request failures as the
Open Responses ``WebSocketErrorEvent`` (``{"type": "error", "status", "error"}``). The turn
is a :class:`engine.runner.TurnRun`, as for HTTP: this module is one more follower of it.

As OpenAI documents the mode: one response in flight a connection (a second
``response.create`` meanwhile is an error event), turns one after another; the last
response is kept in memory, so ``previous_response_id`` continues it with ``store: false``
too (a continuation that fails evicts it; an id neither cached nor stored is
``previous_response_not_found``); ``generate: false`` makes a response without a model
call, to continue from (a warm-up); ``background`` is refused; after ``websocket_max_age``
(60 minutes) the connection answers ``websocket_connection_limit_reached`` and closes; a
client that leaves cancels its running turn. Ping/pong keep-alive is uvicorn's.

Steering (``openai.types.responses.response_steer_event``): input for the running response
is validated and queued (``response.steer.accepted``), the run ends at its next read with
``incomplete``/``steered``, and a successor response with the steer input follows on its
own (its ``response.created`` is the commit point). A response that ends with client-run
tool calls keeps the input queued (``response.steer.pending`` with the outputs it waits
for), and the client's next ``response.create`` on it gets the input first. Input that
cannot be committed comes back in ``response.steer.failed``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from engine.gateway import Gateway
from engine.runner import TurnRun, save
from engine.turn import Turn, bad_input, prepare_turn, release_conversation
from errors import APIError
from requests.common import InvalidInput, new_id
from requests.responses import complete_usage, normalize_input_items
from requests.stream import response_to_events
from requests.validation import validate_create_body

__all__ = ["router", "SocketSession"]

log = logging.getLogger("nomyo_router.socket")
router = APIRouter()

#: Steer inputs one response may have queued; past it ``too_many_pending_steers``.
MAX_PENDING_STEERS = 8
#: The output item each client-run call waits for (``ResponseSteerRequiredInput``).
_REQUIRED_OUTPUT = {"function_call": "function_call_output", "custom_tool_call": "custom_tool_call_output",
                    "computer_call": "computer_call_output", "shell_call": "shell_call_output",
                    "apply_patch_call": "apply_patch_call_output"}
_STEER_PART_TYPES = frozenset({"input_text", "input_image", "input_file"})


@dataclass
class Steer:
    """One accepted ``response.steer``: its id, the response it targets, its input as sent and as items."""

    id: str
    previous_response_id: str
    raw: Any
    items: list[dict]


@dataclass
class _Last:
    """The connection's last response: its id and its whole context (for a ``store: false``
    continuation)."""

    id: str
    items: list[dict]
    #: Steer input still queued for it (it stopped for client-run tool output).
    pending: list[Steer] = field(default_factory=list)


def _error(status: int, code: str | None, message: str, param: str | None = None,
           kind: str = "invalid_request_error") -> dict:
    """A ``WebSocketErrorEvent``."""
    return {"type": "error", "status": status,
            "error": {"type": kind, "code": code or kind, "message": message, "param": param}}


def _api_error(exc: APIError) -> dict:
    return _error(exc.status, exc.code, exc.message, exc.param, exc.type)


def steer_items(raw: Any) -> list[dict]:
    """The input of a ``response.steer`` as items: a string, or user messages holding only
    ``type``, ``role`` and ``content`` (text, image and file parts). Raises :class:`InvalidInput`."""
    if isinstance(raw, str):
        if not raw:
            raise InvalidInput("Steering input must not be empty.", "input")
        return normalize_input_items(raw)
    if not isinstance(raw, list) or not raw:
        raise InvalidInput("Steering input must be a string or a non-empty list of user messages.", "input")
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or set(item) - {"type", "role", "content"} or item.get("role") != "user" \
                or item.get("type", "message") != "message":
            raise InvalidInput("Steering takes only user messages with 'type', 'role' and 'content'.", f"input[{i}]")
        content = item.get("content")
        if isinstance(content, list) and any(not isinstance(part, dict) or part.get("type") not in _STEER_PART_TYPES
                                             for part in content):
            raise InvalidInput("A steering message holds only input_text, input_image and input_file parts.",
                               f"input[{i}].content")
    return normalize_input_items(raw)


def _required_input(output: list[dict]) -> list[dict]:
    """The stubs of the outputs the client owes for ``output``'s tool calls."""
    stubs = []
    for item in output:
        kind = _REQUIRED_OUTPUT.get(item.get("type"))
        if kind is not None and isinstance(item.get("call_id"), str):
            stub = {"type": kind, "call_id": item["call_id"]}
            if kind == "function_call_output":
                stub["name"] = item.get("name", "")
            stubs.append(stub)
    return stubs


class SocketSession:
    """One WebSocket's Responses session (see the module docstring). :meth:`serve` runs it to the end."""

    def __init__(self, gateway: Gateway, websocket: WebSocket, owner: str | None):
        self.gateway, self.websocket, self.owner = gateway, websocket, owner
        self.last: _Last | None = None
        self.run: TurnRun | None = None
        self.task: asyncio.Task | None = None
        #: A response runs (or its automatic successor is next): a ``response.create`` now is refused.
        self.busy = False
        self.steers: list[Steer] = []
        self._sending = asyncio.Lock()
        self._number = 0
        self._closed = False
        self.draining = False
        self.turns = 0
        self.deadline = asyncio.get_running_loop().time() + gateway.settings.websocket_max_age

    # ── sending ───────────────────────────────────────────────────────────────
    async def emit(self, events: list[dict]) -> None:
        """Send ``events`` in order, one message each. Sequence numbers are given here, at sending,
        so a steer acknowledgement never overtakes the events before it: each response's stream
        counts from 0 at its ``response.created``, as SSE does. A socket gone drops them."""
        async with self._sending:
            for event in events:
                if event.get("type") == "response.created":
                    self._number = 0
                if event.get("type") != "error" or "sequence_number" in event:
                    event["sequence_number"] = self._number
                    self._number += 1
                if self._closed:
                    continue
                try:
                    await self.websocket.send_text(orjson.dumps(event).decode())
                except (WebSocketDisconnect, RuntimeError, OSError):
                    self._closed = True

    # ── the connection ────────────────────────────────────────────────────────
    async def serve(self) -> None:
        """Read client events until the socket closes or reaches its age; the turn running then is
        cancelled (its slot given back, its row recorded as the run settles)."""
        loop = asyncio.get_running_loop()
        opened = loop.time()
        self.gateway.sockets.add(self)
        try:
            while True:
                try:
                    async with asyncio.timeout_at(self.deadline):
                        message = await self.websocket.receive()
                except TimeoutError:
                    await self._age_limit()
                    return
                if message["type"] == "websocket.disconnect":
                    return
                raw = message.get("text") if message.get("text") is not None else message.get("bytes")
                await self._dispatch(raw)
                if loop.time() >= self.deadline and not self.busy:
                    await self._age_limit()
                    return
        finally:
            self.gateway.sockets.discard(self)
            self._closed = True
            if self.task is not None:
                self.task.cancel()
                await asyncio.gather(self.task, return_exceptions=True)
            if self.gateway.settings.log_requests:
                log.info("WebSocket /v1/responses closed: %d turn(s) in %.1f s", self.turns, loop.time() - opened)

    async def drain(self) -> None:
        """The gateway is stopping: take no new turn, let the one under way end (the gateway ends it
        after ``shutdown_grace``), then close the socket as going away (1001)."""
        self.draining = True
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)
        if not self._closed:
            self._closed = True
            try:
                await self.websocket.close(1001)
            except (RuntimeError, OSError):
                pass

    async def _age_limit(self) -> None:
        if self.task is not None:  # the turn under way ends first
            await asyncio.gather(self.task, return_exceptions=True)
        await self.emit([_error(400, "websocket_connection_limit_reached",
                                "This WebSocket reached its age limit "
                                f"({self.gateway.settings.websocket_max_age:g} s); open a new one.")])
        self._closed = True
        await self.websocket.close(1000)

    async def _dispatch(self, raw: Any) -> None:
        try:
            event = orjson.loads(raw) if raw is not None else None
        except orjson.JSONDecodeError as exc:
            return await self.emit([_error(400, "invalid_json", f"The message is not valid JSON: {exc}.")])
        if not isinstance(event, dict):
            return await self.emit([_error(400, "invalid_request_error", "A client event must be a JSON object.")])
        kind = event.get("type")
        if kind == "response.create":
            await self._create(event)
        elif kind == "response.steer":
            await self._steer(event)
        else:
            await self.emit([_error(400, "invalid_request_error", f"Unknown client event type {kind!r}; this "
                                    "socket takes 'response.create' and 'response.steer'.", "type")])

    # ── response.create ───────────────────────────────────────────────────────
    def _body(self, event: dict) -> tuple[dict, bool]:
        """The create body of a ``response.create`` and its ``generate``. Raises APIError 400."""
        body = {key: value for key, value in event.items() if key != "type"}
        if body.get("background"):
            raise APIError(400, "Background responses are not available over the WebSocket; use HTTP.",
                           param="background")
        if body.get("stream") is False:
            raise APIError(400, "Responses over the WebSocket are always streamed.", param="stream")
        if "stream_id" in body:
            raise APIError(400, "'stream_id' is not supported by this gateway yet.", param="stream_id",
                           code="unsupported_parameter")
        generate = body.pop("generate", True)
        if not isinstance(generate, bool):
            raise APIError(400, "'generate' must be a boolean.", param="generate")
        body.pop("background", None)
        body["stream"] = True
        try:
            validate_create_body(body, self.gateway.settings.max_input_items)
        except InvalidInput as exc:
            raise bad_input(exc) from None
        return body, generate

    async def _create(self, event: dict) -> None:
        if self.draining:
            return await self.emit([_error(503, "server_shutting_down", "The gateway is shutting down; send this "
                                           "on a new connection.", kind="server_error")])
        if self.busy:
            return await self.emit([_error(400, "response_already_in_flight", "A response is already running on "
                                           "this WebSocket; send the next one when it has finished.")])
        try:
            body, generate = self._body(event)
            turn = await self._prepare(body)
        except APIError as exc:
            previous = event.get("previous_response_id")
            if self.last is not None and previous == self.last.id and exc.status != 409:
                self.last = None  # a failed continuation evicts what it continued
            return await self.emit([_api_error(exc)])
        self.busy = True
        self.task = asyncio.ensure_future(self._turns(turn) if generate else self._warm_up(turn))
        self.task.add_done_callback(self._turn_done)

    def _turn_done(self, task: asyncio.Task) -> None:
        if self.task is task:
            self.task = None
        if not task.cancelled() and task.exception() is not None:
            log.error("a WebSocket turn failed", exc_info=task.exception())

    async def _prepare(self, body: dict, steers: list[Steer] | None = None) -> Turn:
        """The turn of ``body``: continuing the cached last response from memory, else the store.
        Steer input still queued for the response it continues goes first in its input."""
        gateway, last = self.gateway, self.last
        previous = body.get("previous_response_id")
        cached = last is not None and previous == last.id
        if cached and last.pending and steers is None:
            steers = last.pending
            last.pending = []
        if steers:
            given = body.get("input")
            given = [{"role": "user", "content": given}] if isinstance(given, str) else list(given or [])
            body = {**body, "input": [item for steer in steers for item in steer.items] + given}
        return await prepare_turn(gateway.store, body, self.owner, gateway.settings.model_aliases, gateway.seal,
                                  gateway.chain_bounds, files=gateway.files, history=last.items if cached else None)

    async def _turns(self, turn: Turn) -> None:
        """Run ``turn``, then the successors its steering asks for, one after another."""
        committed: list[Steer] = []
        try:
            while turn is not None:
                turn, committed = await self._run(turn, committed)
        finally:
            if self.task is asyncio.current_task():
                self.busy = False

    async def _warm_up(self, turn: Turn) -> None:
        """``generate: false``: no model call; a ``completed`` response with no output that later turns
        continue from (stored with ``store``), its events as any response's."""
        self.turns += 1
        try:
            await self._warm_up_response(turn)
        finally:
            if self.task is asyncio.current_task():
                self.busy = False

    async def _warm_up_response(self, turn: Turn) -> None:
        response = turn.response("completed", [], usage=complete_usage({"input_tokens": 0, "output_tokens": 0,
                                                                        "total_tokens": 0}))
        if turn.store:
            await save(self.gateway, turn, response)
        await release_conversation(self.gateway.store, turn, turn.input_items)
        events = list(response_to_events(response))
        self._settled(turn, response, self.last is not None and turn.previous_response_id == self.last.id, [])
        await self.emit(events)

    async def _run(self, turn: Turn, committed: list[Steer]) -> tuple[Turn | None, list[Steer]]:
        """Run one turn to its end (``committed``: the steer input it carries); returns the automatic
        successor to run next and the steer input that went into it, if steering made one."""
        self.turns += 1
        run = TurnRun(self.gateway, turn)
        steers: list[Steer] = []          # what ``response.steer`` queues for this run
        self.run, self.steers = run, steers
        continued = self.last is not None and turn.previous_response_id == self.last.id
        try:
            try:
                await run.open()
            except APIError as exc:  # nothing ran: as over HTTP, the request's error alone
                await release_conversation(self.gateway.store, turn)
                if continued:
                    self.last = None
                self.busy = False
                await self._fail_steers(committed, "successor_creation_failed")
                await self.emit([_api_error(exc)])
                return None, []
            try:
                await run.begin_stream()
            except BaseException:
                await run.settle(asyncio.CancelledError())
                raise
            settled = False
            async for batch in run.events():
                if run.final is not None and not settled:  # the closing batch: the session first, so
                    settled = True                        # a client that answers it at once finds it ready
                    self._settled(turn, run.final, continued, steers)
                await self.emit(batch)
        finally:
            if self.run is run:
                self.run = None
        return await self._after(turn, run.final, steers)

    def _settled(self, turn: Turn, final: dict, continued: bool, steers: list[Steer]) -> None:
        """Keep ``turn`` as the last response (or forget the one it failed to continue); with no steer
        input queued the socket takes the next ``response.create`` from here on."""
        if final["status"] in ("completed", "incomplete"):
            self.last = _Last(turn.id, turn.items + list(final.get("output") or []))
        elif continued:
            self.last = None
        if not steers or final["status"] not in ("completed", "incomplete"):  # no successor follows
            self.busy = False

    # ── steering ──────────────────────────────────────────────────────────────
    async def _steer(self, event: dict) -> None:
        target, raw = event.get("previous_response_id"), event.get("input")
        extra = set(event) - {"type", "previous_response_id", "input"}

        async def failed(code: str, message: str, steer_id: str | None = None) -> None:
            steer = {"input": raw, "previous_response_id": target if isinstance(target, str) else ""}
            if steer_id is not None:
                steer["id"] = steer_id
            await self.emit([{"type": "response.steer.failed", "steer": steer,
                              "error": {"type": "invalid_request_error", "code": code, "message": message}}])

        if extra or not isinstance(target, str):
            return await failed("invalid_input", "response.steer takes 'type', 'previous_response_id' and 'input'"
                                + (f"; not {', '.join(sorted(extra))}." if extra else "."))
        try:
            items = steer_items(raw)
        except InvalidInput as exc:
            return await failed("invalid_input", exc.message)
        run = self.run
        if run is None or run.turn.id != target:
            if self.last is not None and self.last.id == target:
                return await failed("response_already_completed", f"Response '{target}' has finished.")
            return await failed("response_not_found", f"No response '{target}' on this WebSocket.")
        if run.turn.conversation_id is not None or run.turn.body.get("context_management"):
            return await failed("steering_not_supported", "Responses on a conversation or with automatic "
                                "compaction cannot be steered.")
        if not run.steerable():
            return await failed("steering_not_supported" if run.final is None else "response_not_active",
                                "This response cannot be steered now (an upstream Responses API or the gateway's "
                                "MCP loop runs it, or it is ending).")
        if len(self.steers) >= MAX_PENDING_STEERS:
            return await failed("too_many_pending_steers", f"At most {MAX_PENDING_STEERS} steering inputs may wait "
                                "for one response.")
        steer = Steer(new_id("steer"), target, raw, items)
        self.steers.append(steer)
        await self.emit([{"type": "response.steer.accepted",
                          "steer": {"id": steer.id, "previous_response_id": target}}])
        run.steer()

    async def _fail_steers(self, steers: list[Steer], code: str) -> None:
        """``response.steer.failed`` for each of ``steers``, their input given back."""
        await self.emit([{"type": "response.steer.failed",
                          "steer": {"id": steer.id, "input": steer.raw,
                                    "previous_response_id": steer.previous_response_id},
                          "error": {"type": "invalid_request_error", "code": code,
                                    "message": "The steering input could not be committed to a response."}}
                         for steer in steers])

    async def _after(self, turn: Turn, final: dict, steers: list[Steer]) -> tuple[Turn | None, list[Steer]]:
        """What queued steering input does once ``turn`` has ended: nothing queued, nothing; the
        response failed, ``response.steer.failed``; it waits for client-run tool output,
        ``response.steer.pending``; else the successor turn, prepared (or its failure said)."""
        if not steers:
            return None, []
        if final["status"] not in ("completed", "incomplete"):
            await self._fail_steers(steers, "response_not_active")
            return None, []
        required = _required_input(final.get("output") or [])
        if required and final["status"] == "completed":
            self.last.pending = steers
            self.busy = False  # the client's next response.create carries the input
            await self.emit([{"type": "response.steer.pending", "reason": "waiting_for_required_input",
                              "required_input": required,
                              "steer": {"id": steer.id, "previous_response_id": steer.previous_response_id}}
                             for steer in steers])
            return None, []
        inherited = {key: value for key, value in turn.body.items() if key not in ("input", "previous_response_id")}
        try:
            successor = await self._prepare({**inherited, "previous_response_id": turn.id, "input": []}, steers)
        except APIError as exc:
            log.warning("the successor of steered response %s could not be made: %s", turn.id, exc.message)
            self.busy = False
            await self._fail_steers(steers, "successor_creation_failed")
            return None, []
        return successor, steers


@router.websocket("/v1/responses")
async def responses_socket(websocket: WebSocket) -> None:
    """``GET /v1/responses`` upgraded to a WebSocket: Responses turns as client and server events."""
    await websocket.accept()
    owner = websocket.scope.get("state", {}).get("owner")
    await SocketSession(websocket.app.state.gateway, websocket, owner).serve()
