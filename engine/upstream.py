"""The upstream call of a turn: choose an endpoint, hold its usage slot, call it, fail over.

:func:`open_upstream` picks an endpoint through the backend functions it is
given (:class:`BackendCalls`), takes one usage slot there and sends the turn on
the path that endpoint speaks: natively to an upstream Responses API (the
Responses fields of the request as the client sent them, the chain as
``input``), or translated to Chat Completions. Only the Chat path translates, so what Chat cannot express
(an ``input_file`` by ``file_id``) still reaches a native endpoint. Endpoints
that cannot be reached are skipped for the next one; every other error is the
upstream's own, as :class:`errors.APIError`; a whole call, its stream included,
has ``upstream_deadline`` seconds. The answer is an :class:`Upstream`
whose ``result`` is one of four shapes; :meth:`Upstream.close` gives the slot
back exactly once.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Protocol

from backends import (BackendStreamError, BackendTimeout, BackendUnavailable, Registry, compact_native,
                      create_native_response)
from chat_client import ChatStream
from engine.turn import Turn, bad_input
from errors import APIError
from metrics import BACKEND_ERRORS
from requests.common import plain
from requests.native import native_compact_request, native_request
from requests.params import chat_request_params, dropped_hosted_tools, without_refused_input
from requests.responses import InvalidInput

__all__ = ["BackendCalls", "Completion", "ChatChunks", "NativeResponse", "NativeEvents", "UpstreamResult",
           "Upstream", "open_upstream"]

log = logging.getLogger("nomyo_router.upstream")


class BackendCalls(Protocol):
    """The backend functions a turn is run with, looked up on each use.

    The gateway passes the ``api.responses`` module itself: those are the names
    NOMYO Router's users (and their tests) patch, so they are read at call time,
    never bound once. Each takes the :class:`backends.Registry` it acts on first.
    """

    choose_endpoint: Callable[..., Awaitable[tuple[str, str]]]      # (registry, model, exclude)
    decrement_usage: Callable[..., Awaitable[None]]                 # (registry, endpoint, model)
    is_ext_openai_endpoint: Callable[..., bool]                     # (registry, endpoint)
    _make_openai_client: Callable[..., Any]                         # (registry, endpoint)
    create_chat_with_retries: Callable[..., Awaitable[Any]]         # (client, params)
    get_llm_cache: Callable[..., Any]                               # (gateway)


@dataclass(frozen=True, slots=True)
class Completion:
    """A whole Chat Completions answer (a plain dict)."""
    data: dict


@dataclass(frozen=True, slots=True)
class ChatChunks:
    """An open Chat Completions stream: ``batches`` async-iterates lists of chunks (dicts
    or SDK chunk objects; all that one network read brought), ``source`` is what to close."""
    batches: AsyncIterator[list[Any]]
    source: Any


@dataclass(frozen=True, slots=True)
class NativeResponse:
    """A whole upstream Response object (a plain dict, upstream ids still in it)."""
    data: dict


@dataclass(frozen=True, slots=True)
class NativeEvents:
    """An open upstream Responses event stream: ``batches`` async-iterates lists of events
    (dicts or SDK events), ``source`` is what to close."""
    batches: AsyncIterator[list[Any]]
    source: Any


def _past_deadline(seconds: float) -> BackendStreamError:
    return BackendStreamError(f"the stream did not end within upstream_deadline ({seconds:g} s)")


async def _within(batches: AsyncIterator[list[Any]], deadline: float, seconds: float) -> AsyncIterator[list[Any]]:
    """``batches`` read each under the call's total ``deadline`` (loop time)."""
    try:
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    batch = await anext(batches)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise _past_deadline(seconds) from None
            yield batch
    finally:
        await batches.aclose()


async def _one_by_one(stream: AsyncIterator[Any]) -> AsyncIterator[list[Any]]:
    async for item in stream:
        yield [item]


def _batches(stream: Any, deadline: float, seconds: float) -> AsyncIterator[list[Any]]:
    """The gateway's own Chat stream batches per network read; any other stream goes one by one;
    either within the call's deadline."""
    batches = stream.batches() if isinstance(stream, ChatStream) else _one_by_one(stream)
    return _within(batches, deadline, seconds)


UpstreamResult = Completion | ChatChunks | NativeResponse | NativeEvents


class Upstream:
    """The chosen endpoint's answer and the usage slot it holds until :meth:`close`."""

    __slots__ = ("endpoint", "model", "result", "_release", "_closed")

    def __init__(self, endpoint: str, model: str, result: UpstreamResult, release: Callable[[], Awaitable[None]]):
        self.endpoint, self.model, self.result = endpoint, model, result
        self._release = release
        self._closed = False

    async def close(self) -> None:
        """Close an open upstream stream and give the usage slot back (idempotent; never raises
        for a broken stream, whose failure the turn has already recorded)."""
        if self._closed:
            return
        self._closed = True
        try:
            if isinstance(self.result, (ChatChunks, NativeEvents)):
                try:
                    await self.result.batches.aclose()
                finally:
                    source = self.result.source
                    aclose = getattr(source, "aclose", None) or getattr(source, "close", None)
                    if aclose is not None:
                        outcome = aclose()
                        if hasattr(outcome, "__await__"):
                            await outcome
        except Exception:
            log.debug("closing the upstream stream failed", exc_info=True)
        finally:
            await self._release()


#: Hosted tool types already logged as dropped (the warning is given once per type and process).
_warned_dropped: set[str] = set()


def _warn_dropped(turn: Turn, registry: Registry) -> None:
    for tool_type in dropped_hosted_tools(turn.body.get("tools"), registry.settings.hosted_tool_policy):
        if tool_type not in _warned_dropped:
            _warned_dropped.add(tool_type)
            log.warning("hosted tool %r is not offered to Chat Completions backends (hosted_tools: drop); "
                        "requests with it go on without it", tool_type)


async def _send(turn: Turn, calls: BackendCalls, registry: Registry, endpoint: str, model: str) -> UpstreamResult:
    """One call, its answer (a whole one, or a stream's every read) within ``upstream_deadline``."""
    seconds = registry.settings.upstream_deadline
    deadline = asyncio.get_running_loop().time() + seconds
    client = calls._make_openai_client(registry, endpoint)
    try:
        async with asyncio.timeout_at(deadline):
            if calls.is_ext_openai_endpoint(registry, endpoint):
                if turn.compacting:
                    return NativeResponse(plain(await compact_native(client, native_compact_request(
                        turn.body, turn.native_items, model))))
                result = await create_native_response(
                    client, native_request(turn.body, turn.native_items, model, stream=turn.stream))
                if not turn.stream:
                    return NativeResponse(plain(result))
                return NativeEvents(_batches(result, deadline, seconds), result)
            await turn.load_files()
            params = chat_request_params(turn.body, turn.messages, model, stream=turn.stream,
                                         hosted_policy=registry.settings.hosted_tool_policy)
            if turn.body.get("tools"):
                _warn_dropped(turn, registry)
            result = await _chat_without_refused_input(turn, calls, client, params)
    except TimeoutError:
        raise BackendTimeout(f"no answer within upstream_deadline ({seconds:g} s)") from None
    if not turn.stream:
        return Completion(plain(result))
    return ChatChunks(_batches(result, deadline, seconds), result)


async def _chat_without_refused_input(turn: Turn, calls: BackendCalls, client: Any, params: dict) -> Any:
    """The Chat call, sent again without tools or images when the backend says this model takes
    none; each thing left out is logged and becomes one of the turn's ``notices``."""
    while True:
        try:
            return await calls.create_chat_with_retries(client, params)
        except APIError as exc:
            fallback = without_refused_input(params, exc.status, exc.message)
            if fallback is None:
                raise
            params, left_out = fallback
            log.warning("model %s refused %s (%s); sending the request without them", params.get("model"),
                        left_out, exc.message)
            turn.notices.append(f"The model does not accept {left_out}: it answered without the {left_out} "
                                "of this request.")


async def _choose(calls: BackendCalls, registry: Registry, model: str, excluded: set[str],
                  unavailable: BackendUnavailable | None) -> tuple[str, str]:
    try:
        return await calls.choose_endpoint(registry, model, excluded)
    except APIError as exc:
        if exc.code == "backend_unavailable" and unavailable is not None:
            raise unavailable from None  # the last endpoint's own failure says more
        raise


async def open_upstream(turn: Turn, calls: BackendCalls, registry: Registry,
                        on_slot: Callable[[], Awaitable[None]] | None = None) -> Upstream:
    """Choose an endpoint for ``turn``, take its slot and send the turn there.

    Fails over while endpoints cannot be reached (each is marked unreachable).
    Returns the :class:`Upstream` holding the slot. Raises APIError: 404 unknown
    model, 429 every endpoint busy, 400 input the chosen path cannot express,
    502/504 backend faults, or the upstream's own 4xx/5xx; the slot is given back
    before any of them leaves. ``on_slot`` is awaited each time a slot is taken, before
    the call is sent.
    """
    excluded: set[str] = set()
    unavailable: BackendUnavailable | None = None
    while True:
        endpoint, model = await _choose(calls, registry, turn.routed_model, excluded, unavailable)

        def release(endpoint: str = endpoint, model: str = model) -> Awaitable[None]:
            return calls.decrement_usage(registry, endpoint, model)

        try:
            if on_slot is not None:
                await on_slot()
            result = await _send(turn, calls, registry, endpoint, model)
        except InvalidInput as exc:
            await release()
            raise bad_input(exc) from None
        except BackendUnavailable as exc:
            await release()
            BACKEND_ERRORS.labels(endpoint, "unavailable").inc()
            registry.mark_unreachable(endpoint, exc.message)
            excluded.add(endpoint)
            unavailable = exc
            continue
        except BaseException as exc:
            await release()
            if isinstance(exc, APIError):
                BACKEND_ERRORS.labels(endpoint, str(exc.status)).inc()
            raise
        return Upstream(endpoint, model, result, release)
