"""The turn runner: runs one turn to its end and decides its final state, in one place.

A :class:`TurnRun` serves every way a turn is run: foreground (:meth:`answer`),
streamed (:meth:`events`), background and background-streamed (the same two,
driven by ``engine.jobs``). Whoever follows a run (the SSE response, a job's
followers) only relays what it yields. However the run ends (its last event,
an upstream failure, a cancel, a follower gone, the gateway stopping),
:meth:`settle` closes the upstream, gives the usage slot back, decides the final
Response object (``completed``, ``incomplete``, ``failed`` or ``cancelled``),
records it in the store and the LLM cache, and does so exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable

import orjson

from engine.compaction import compact_if_due
from engine.hosted_mcp import check_servers, run_hosted_mcp, uses_hosted_mcp
from engine.turn import Turn, bad_input, release_conversation
from engine.upstream import ChatChunks, Completion, NativeEvents, NativeResponse, Upstream, open_upstream
from errors import APIError
from logs import note
from metrics import BACKGROUND_FINISHED, CACHE_LOOKUPS, FIRST_TOKEN_SECONDS, TOKENS, TURN_SECONDS, TURNS
from requests.common import InvalidInput, new_id, plain
from requests.events import Event, Sequencer, StreamTranslator, error_event, response_event
from requests.native import NativeStreamTranslator, native_to_response
from requests.responses import chat_message_to_output_items, usage_chat_to_responses
from requests.stream import INCOMPLETE_REASONS, ChatStreamTranslator, ProtocolError, response_to_events

if TYPE_CHECKING:
    from engine.gateway import Gateway

__all__ = ["TurnRun", "save", "CACHE_ROUTE"]

log = logging.getLogger("nomyo_router.runner")

#: The route name the LLM cache is asked with (NOMYO Router's).
CACHE_ROUTE = "openai_responses"
#: Create-body fields that change a model's answer, and so belong in a cache key.
_ANSWER_FIELDS = ("tools", "tool_choice", "parallel_tool_calls", "temperature", "top_p", "presence_penalty",
                  "frequency_penalty", "max_output_tokens", "max_tool_calls", "top_logprobs", "text",
                  "reasoning", "truncation")
_ID_PREFIXES = {"message": "msg", "function_call": "fc", "reasoning": "rs"}
_CANCELLED = (asyncio.CancelledError, GeneratorExit)
#: Why :meth:`TurnRun.stop` ended a run: the gateway stops (stored failed), a background
#: turn that never had a slot goes back to ``queued``, or this replica lost its lease and
#: another one has taken the turn over (nothing is stored: the store is the other's now).
_STOPS = ("shutdown", "requeue", "abandon")


async def save(gateway: Gateway, turn: Turn, response: dict) -> None:
    """Write ``turn``'s row with ``response`` (one statement; insert or replace)."""
    await gateway.store.store_response(
        turn.id, previous_response_id=turn.previous_response_id, model=turn.model, status=response["status"],
        created_at=turn.created_at, input_messages=turn.input_items, response=response, owner=turn.owner,
        request=turn.body if turn.background else None, background=turn.background)


def completion_to_response(turn: Turn, completion: dict, seal: Callable[[dict], str] | None = None) -> dict:
    """The Response object of a whole Chat Completions answer; ``seal`` gives reasoning
    items their ``encrypted_content``."""
    choice = plain((completion.get("choices") or [{}])[0])
    items = chat_message_to_output_items(plain(choice.get("message") or {}), turn.tool_map, turn.wants_summary,
                                         seal, plain(choice.get("logprobs")))
    usage = usage_chat_to_responses(plain(completion.get("usage")))
    if turn.compaction is not None:
        items.insert(0, turn.compaction)
    reason = INCOMPLETE_REASONS.get(choice.get("finish_reason") or "")
    if reason:
        if items:  # the item the limit cut short
            items[-1] = {**items[-1], "status": "incomplete"}
        return turn.response("incomplete", items, usage=usage, incomplete_details={"reason": reason})
    return turn.response("completed", items, usage=usage)


def _failure_code(exc: APIError) -> str:
    return "rate_limit_exceeded" if exc.status == 429 else "server_error"


class TurnRun:
    """One turn, run to its end.

    ``seq`` stamps this run's events (a background stream passes the one that
    stamped its ``created``/``queued`` events, with ``resumed``). ``row_written``
    says the turn's row is in the store already (queued or in progress), so the
    final state updates it; otherwise only an answer is inserted. ``stopping``
    names why a cancellation came (``"shutdown"``: the gateway is stopping).
    """

    def __init__(self, gateway: Gateway, turn: Turn, *, seq: Sequencer | None = None, resumed: bool = False):
        self.gateway, self.turn = gateway, turn
        self.seq = seq or Sequencer()
        self.resumed = resumed
        self.upstream: Upstream | None = None
        self.translator: StreamTranslator | None = None
        self.answered: dict | None = None
        self.final: dict | None = None
        self.closing: list[Event] = []
        self.row_written = False
        self.stopping: str | None = None
        self._cache_write: Callable[[dict], Awaitable[None]] | None = None
        self._settling: asyncio.Future | None = None
        self._task: asyncio.Task | None = None
        #: Awaited once, when the turn has a backend slot and before it is sent (a job: ``in_progress``).
        self.on_slot: Callable[[], Awaitable[None]] | None = None
        self.slot_taken = False
        self._started = time.perf_counter()
        self._first_chunk: float | None = None
        #: Why the final state could not be recorded (None: it was, or nothing was to be).
        self.record_error: Exception | None = None
        #: Set (by :meth:`steer`) to end a streamed Chat turn at its next read, ``incomplete``/``steered``.
        self.steering = False
        #: The turn's ``mcp`` tools are run by the gateway (``engine.hosted_mcp``), not one upstream call.
        self.hosted = False

    # ── the cache ─────────────────────────────────────────────────────────────
    def _cache_options(self) -> dict:
        """The key's options: what changes the answer, and the tenant (answers are never shared)."""
        body = self.turn.body
        options = {key: body[key] for key in _ANSWER_FIELDS if body.get(key) is not None}
        if self.turn.owner is not None:
            options["owner"] = self.turn.owner
        return options

    def _cache_messages(self) -> list:
        try:
            return self.turn.messages
        except ValueError:  # what only a native endpoint can take is keyed by its items
            return [{"instructions": self.turn.body.get("instructions")}, *self.turn.items]

    async def from_cache(self) -> dict | None:
        """The cached answer of this turn as its own Response object (recorded when
        ``store``), or None. Only for requests with ``"nomyo": {"cache": true}``, never
        background ones; a miss remembers the key so a completed answer is cached."""
        turn = self.turn
        if not (turn.body.get("nomyo") or {}).get("cache") or turn.background:
            return None
        cache = self.gateway.calls.get_llm_cache(self.gateway)
        if cache is None:
            return None
        options = self._cache_options()
        args = (CACHE_ROUTE, turn.model, self._cache_messages())
        hit = await (cache.get_chat(*args, options) if options else cache.get_chat(*args))
        CACHE_LOOKUPS.labels("hit" if hit else "miss").inc()
        note(cache="hit" if hit else "miss", model=turn.model, response_id=turn.id)
        if not hit:
            async def write(response: dict) -> None:
                value = orjson.dumps(response)
                await (cache.set_chat(*args, value, options) if options else cache.set_chat(*args, value))
            self._cache_write = write
            return None
        cached = orjson.loads(hit)
        items = [{**item, "id": new_id(_ID_PREFIXES.get(item.get("type"), "item"))}
                 for item in cached.get("output") or []]
        response = turn.response("completed", items, usage=cached.get("usage"))
        self.final = response
        await self._with_conversation(response, save(self.gateway, turn, response) if turn.store else None)
        return response

    # ── running ───────────────────────────────────────────────────────────────
    async def open(self) -> None:
        """Choose an endpoint and send the turn (see :func:`engine.upstream.open_upstream`).
        Raises its APIError; nothing is held then."""
        note(model=self.turn.model, response_id=self.turn.id)
        await compact_if_due(self.gateway, self.turn)
        if uses_hosted_mcp(self.turn) and await self.gateway.registry.serves_by_chat(self.turn.routed_model):
            try:
                await check_servers(self.turn, self.gateway.settings.mcp_allowed_servers)
            except InvalidInput as exc:
                raise bad_input(exc) from None
            self.hosted = True  # the gateway runs the servers' tools: the model is asked in the loop
            return
        self.upstream = await open_upstream(self.turn, self.gateway.calls, self.gateway.registry, self._slot)
        note(endpoint=self.upstream.endpoint, upstream_model=self.upstream.model)

    async def begin_stream(self) -> None:
        """Record a foreground stream as ``in_progress`` before its first event (with ``store``)."""
        if self.turn.store:
            await save(self.gateway, self.turn, self.turn.response("in_progress", completed_at=None))
            self.row_written = True

    async def _slot(self) -> None:
        if not self.slot_taken:
            self.slot_taken = True
            if self.on_slot is not None:
                await self.on_slot()

    def _running(self) -> None:
        self._task = asyncio.current_task()
        self.gateway.runs.add(self)

    def stop(self, task: asyncio.Task | None = None, *, abandon: bool = False) -> None:
        """End the run now, from outside (the gateway is stopping), by cancelling ``task`` (default:
        the one running it): a stream ends with ``error`` + ``response.failed``, a whole answer
        with a 503; stored as failed. A background turn still waiting for a slot is stored
        ``queued`` again instead, for the next start to run. With ``abandon`` (another replica
        took the turn over) it ends so, and nothing is stored."""
        task = task or self._task
        if self._settling is None and task is not None:
            if abandon:
                self.stopping = "abandon"
            else:
                self.stopping = "requeue" if self.turn.background and not self.slot_taken else "shutdown"
            task.cancel()

    @property
    def settled(self) -> bool:
        """Whether the run has ended (its final state is decided; it may still be being recorded)."""
        return self._settling is not None

    def steerable(self) -> bool:
        """Whether :meth:`steer` can end this run early: a streamed turn on a Chat backend, still
        running (a native endpoint's stream cannot be cut into a steered response here)."""
        return self._settling is None and self.upstream is not None and isinstance(self.upstream.result, ChatChunks)

    def steer(self) -> None:
        """End the stream after the read under way (once no tool call is open: a call ends whole):
        its open item closes ``incomplete`` and the response ends ``incomplete`` with reason
        ``steered`` (the client's steer input follows in a new response, ``api.websocket``)."""
        self.steering = True

    def _stopped(self, exc: BaseException) -> bool:
        """Whether ``exc`` is :meth:`stop`'s cancellation, which is taken back here: the run
        ends itself (a stream with its closing events, a whole answer with a 503)."""
        if isinstance(exc, asyncio.CancelledError) and self.stopping in _STOPS:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                task.uncancel()
            return True
        return False

    async def answer(self) -> dict:
        """Run a non-streamed turn; return its final Response object (recorded).
        Raises what opening the upstream raised (the turn is then recorded as failed
        only where its row exists: a background turn), APIError 503 ``server_shutting_down``
        when :meth:`stop` ended it."""
        self._running()
        error: BaseException | None = None
        try:
            if self.upstream is None and not self.hosted:
                await self.open()
            result = None if self.hosted else self.upstream.result
            if self.hosted:
                self.answered = await run_hosted_mcp(self)
            elif isinstance(result, NativeResponse):
                self.answered = native_to_response(result.data, **self.turn.native_meta())
            elif isinstance(result, Completion):
                self.answered = completion_to_response(self.turn, result.data, self._seal())
            else:
                raise TypeError(f"a streamed upstream answer ({type(result).__name__}) for a whole turn")
        except BaseException as exc:
            error = exc
            if self._stopped(exc):
                await self.settle(exc)
                raise APIError(503, "The gateway is shutting down; this response was stopped and stored as failed.",
                               code="server_shutting_down", type="server_error") from None
            raise
        finally:
            await self.settle(error)
        if self.record_error is not None:  # never told finished before it is stored
            raise self.record_error
        return self.final

    def _seal(self) -> Callable[[dict], str] | None:
        return self.gateway.seal.seal if self.turn.seals_reasoning else None

    def _translator(self) -> StreamTranslator:
        if isinstance(self.upstream.result, NativeEvents):
            return NativeStreamTranslator(**self.turn.native_meta(), seq=self.seq)
        if isinstance(self.upstream.result, ChatChunks):
            return ChatStreamTranslator(self.turn.response("in_progress", completed_at=None), self.seq,
                                        self.turn.tool_map, self.turn.wants_summary, self._seal(),
                                        leading=[self.turn.compaction] if self.turn.compaction else [])
        raise TypeError(f"a whole upstream answer ({type(self.upstream.result).__name__}) for a streamed turn")

    async def events(self) -> AsyncIterator[list[Event]]:
        """Run a streamed turn: yield batches of stamped events ending in exactly one
        terminal event (``error`` + ``response.failed`` when the upstream fails).
        Closing the generator early (a follower gone) or cancelling it settles the
        run as ``cancelled``; :meth:`stop` ends it with ``error`` + ``response.failed``."""
        self._running()
        error: Exception | None = None
        try:
            if self.upstream is None and not self.hosted:
                await self.open()
            if self.hosted:  # the loop runs whole; its items go out when it has made them
                opening = self.turn.response("in_progress", completed_at=None)
                kinds = ["response.in_progress"] if self.resumed else ["response.created", "response.in_progress"]
                yield self.seq.all([response_event(kind, opening) for kind in kinds])
                self.answered = await run_hosted_mcp(self)
                events = self.seq.all([e for e in response_to_events(self.answered)
                                       if e["type"] not in ("response.created", "response.in_progress")])
                yield events[:-1]
                await self.settle(None)
                yield events[-1:] if self.record_error is None else self._unrecorded(events[-1:])
                return
            translator = self.translator = self._translator()
            opening = translator.opening(self.resumed)
            if opening:
                yield opening
            feed = translator.feed
            async for chunks in self.upstream.result.batches:
                if self._first_chunk is None:
                    self._first_chunk = time.perf_counter()
                events: list[Event] = []
                for chunk in chunks:
                    events += feed(plain(chunk))
                if events:
                    yield events
                if self.steering and isinstance(translator, ChatStreamTranslator) and translator.can_stop():
                    break
            stop_here = self.steering and isinstance(translator, ChatStreamTranslator) and translator.can_stop() \
                and translator.finish_reason is None  # one that ended on its own is not cut
            finished = translator.steered() if stop_here else translator.finish()
        except Exception as exc:
            error = exc
        except BaseException as exc:
            closing = await self.settle(exc)
            if self._stopped(exc):
                yield closing
                return
            raise
        closing = await self.settle(error)  # recorded before the terminal event goes out
        if error is None:
            yield finished if self.record_error is None else self._unrecorded(finished)
        elif closing:
            yield closing

    def _failed_for_store(self) -> dict:
        """The final state with ``failed`` status: what a run whose final write failed reports."""
        message = f"The response could not be stored: {self.record_error}."
        return {**self.final, "status": "failed", "completed_at": None,
                "error": {"code": "server_error", "message": message}}

    def _unrecorded(self, finished: list[Event]) -> list[Event]:
        """``finished`` with its terminal event replaced by ``error`` + ``response.failed``:
        an answer whose final state the store did not take is not reported finished."""
        self.seq.next = finished[-1]["sequence_number"]
        failed = self._failed_for_store()
        return finished[:-1] + self.seq.all([error_event(failed["error"]["message"]),
                                             response_event("response.failed", failed)])

    # ── the end ───────────────────────────────────────────────────────────────
    def _decide(self, error: BaseException | None) -> tuple[dict, list[Event]]:
        """The final Response object and the events still to send: decided here only."""
        turn, translator = self.turn, self.translator
        if translator is not None and translator.final is not None:
            return translator.final, []
        if self.answered is not None:
            return self.answered, []
        if self.stopping == "requeue":  # never reached a backend: the next start runs it
            return turn.response("queued", completed_at=None), []
        if self.stopping == "shutdown" and (error is None or isinstance(error, _CANCELLED)):
            error = APIError(503, "The gateway shut down before this response finished.", type="server_error")
        elif self.stopping == "abandon":
            error = APIError(503, "This gateway replica lost its lease; another replica took this response over.",
                             type="server_error")
        elif error is None or isinstance(error, _CANCELLED):
            if translator is not None:
                final = translator.snapshot("cancelled", completed_at=None)
            else:
                final = turn.response("cancelled", completed_at=None)
            return final, [self.seq(response_event("response.failed", final))]
        if isinstance(error, ProtocolError):
            error = APIError(502, f"The backend's stream broke the Chat Completions format: {error}.",
                             code="bad_upstream_response")
        elif not isinstance(error, APIError):
            log.error("response %s failed", turn.id, exc_info=error)
            error = APIError(500, f"Internal error: {type(error).__name__}.")
        code = _failure_code(error)
        failer = translator or ChatStreamTranslator(turn.response("in_progress", completed_at=None), self.seq)
        try:
            closing = failer.fail(error.message, code)
        except Exception:  # the stream's own state is broken: end it without its open items
            log.exception("closing the stream of response %s failed", turn.id)
            final = turn.response("failed", completed_at=None, error={"code": code, "message": error.message})
            return final, self.seq.all([error_event(error.message, code), response_event("response.failed", final)])
        return failer.final, closing

    async def settle(self, error: BaseException | None = None) -> list[Event]:
        """End the run (idempotent): decide the final state, then close the upstream,
        give its slot back and record the state, in a task that a cancellation of the
        caller cannot cut short (a follower that leaves cancels its stream again at
        every await). Returns the events not yet sent (the failure or cancellation
        events, for a follower that is still there). ``error`` is what ended the run:
        None (the upstream finished), a cancellation, or the failure."""
        if self._settling is None:
            self.final, self.closing = self._decide(error)
            self._measure()
            self._settling = asyncio.ensure_future(self._close_and_record(answered=error is None))
        await asyncio.shield(self._settling)
        return self.closing

    def _measure(self) -> None:
        """The final state in the request's log line, the metrics and the token statistics (the
        one upstream call's usage; a cached answer or a hosted MCP loop has no ``upstream`` here)."""
        final = self.final
        usage = final.get("usage") or {}
        note(response_status=final["status"], input_tokens=usage.get("input_tokens"),
             output_tokens=usage.get("output_tokens"), error=(final.get("error") or {}).get("message"))
        if self.turn.background and final["status"] != "queued":
            BACKGROUND_FINISHED.labels(final["status"]).inc()
        if self.upstream is None:
            return
        labels = (self.upstream.endpoint, self.upstream.model)
        self.gateway.token_stats.record(*labels, usage.get("input_tokens"), usage.get("output_tokens"))
        TURNS.labels(*labels, final["status"]).inc()
        TURN_SECONDS.labels(*labels).observe(time.perf_counter() - self._started)
        if self._first_chunk is not None:
            FIRST_TOKEN_SECONDS.labels(*labels).observe(self._first_chunk - self._started)
        for kind in ("input", "output"):
            if usage.get(f"{kind}_tokens"):
                TOKENS.labels(*labels, kind).inc(usage[f"{kind}_tokens"])

    async def _close_and_record(self, *, answered: bool) -> None:
        """Never raises: a store that cannot be written is logged, and the run's closing
        events still reach its followers."""
        self.gateway.runs.discard(self)
        try:
            if self.upstream is not None:
                await self.upstream.close()
        finally:
            try:
                await self._record(self.final, answered=answered)
            except Exception as exc:
                self.record_error = exc
                log.error("the final state of response %s could not be recorded: %s: %s", self.turn.id,
                          type(exc).__name__, exc)
                if self.row_written:  # left in progress: record what its clients are told, once the store can
                    failed = self._failed_for_store()
                    self.gateway.retry_later(self.turn.id, lambda: self.gateway.store.update_response(
                        self.turn.id, failed, only_if_active=True))

    async def _record(self, final: dict, *, answered: bool) -> None:
        turn = self.turn
        if self.stopping == "abandon":
            return
        if self.row_written:  # an update, so a response deleted meanwhile stays deleted
            write = self.gateway.store.update_response(turn.id, final, only_if_active=True)
        else:
            write = save(self.gateway, turn, final) if turn.store and answered else None
        await self._with_conversation(final, write)
        if self._cache_write is not None and final["status"] == "completed":
            await self._cache_write(final)

    async def _with_conversation(self, final: dict, write: Awaitable[Any] | None) -> None:
        """Await the store ``write`` of ``final`` (None: nothing to write), then end the turn on its
        conversation; a write that fails (the client is told so) gives the conversation nothing."""
        try:
            if write is not None:
                await write
        except BaseException:
            await self._end_conversation_turn({**final, "status": "failed"})
            raise
        await self._end_conversation_turn(final)

    async def _end_conversation_turn(self, final: dict) -> None:
        """Append the turn's input and output items to its conversation when it has an answer
        (``completed`` or ``incomplete``; nothing when it failed or was cancelled) and free it;
        a background turn put back in the queue keeps it. A store that cannot take it now takes
        it later (``gateway.retry_later``; the conversation stays held until then, so no other turn
        reads it without these items)."""
        if self.turn.conversation_id is None or final["status"] == "queued":
            return
        items = None
        if final["status"] in ("completed", "incomplete"):
            items = self.turn.input_items + list(final.get("output") or [])
        try:
            await release_conversation(self.gateway.store, self.turn, items)
        except Exception as exc:
            log.error("conversation %s of response %s could not be updated: %s: %s", self.turn.conversation_id,
                      self.turn.id, type(exc).__name__, exc)
            self.gateway.retry_later(f"{self.turn.id}:conversation",
                                     lambda: release_conversation(self.gateway.store, self.turn, items))
