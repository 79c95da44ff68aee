"""Compaction: a long context replaced by a summary the model writes, carried as a ``compaction`` item.

``POST /v1/responses/compact`` (:func:`compact`) and ``context_management:
[{"type": "compaction", "compact_threshold": n}]`` on create (:func:`compact_if_due`)
work on any backend. On a Chat Completions backend the model is asked, with
:data:`SUMMARY_PROMPT` after the context, for a summary that later turns can work
from; the summary is sealed (``reasoning_seal``, the reasoning key, its own
associated data) into the ``encrypted_content`` of a ``compaction`` item, which only
this gateway can open. An upstream Responses API (OpenAI) compacts natively: the
request is forwarded, and its compaction items pass through untouched.

How a compaction item reads as context (``engine.turn``): of the items before the
last compaction item only the user messages stay, as OpenAI's compacted window keeps
them; the compaction item itself becomes a user message holding the summary; the
items after it follow as they are.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from engine.tokens import count_input_tokens
from engine.turn import SUMMARY_PROMPT, Turn, is_user_message
from engine.upstream import Completion, NativeResponse, Upstream, open_upstream
from errors import APIError
from logs import note
from requests.common import new_id, plain
from requests.responses import complete_usage, normalize_output_item, usage_chat_to_responses

if TYPE_CHECKING:
    from engine.gateway import Gateway

__all__ = ["SUMMARY_PROMPT", "compact", "compact_if_due"]  # SUMMARY_PROMPT lives in engine.turn

log = logging.getLogger("nomyo_router.compaction")


def _summary_of(completion: dict) -> str:
    choice = plain((completion.get("choices") or [{}])[0])
    text = (plain(choice.get("message") or {}).get("content") or "").strip()
    if not text:
        raise APIError(502, "The model wrote no summary for the compaction.", code="bad_upstream_response",
                       type="server_error")
    return text


def _summarizing_turn(turn: Turn, items: list[dict], max_tokens: int) -> Turn:
    """A turn that asks ``turn``'s model for the summary of ``items`` (never stored or streamed), in at
    most ``max_tokens`` tokens."""
    body = {"model": turn.model, "store": False, "instructions": turn.body.get("instructions"),
            "max_output_tokens": max_tokens}
    return Turn(id=new_id("resp"), body=body, owner=turn.owner, input_items=items,
                upstream_model=turn.upstream_model, summaries=turn.summaries, compacting=True)


def _count(gateway: Gateway, upstream: Upstream, usage: dict | None) -> None:
    """Count the summary call's ``usage`` (Responses keys) in the token statistics."""
    usage = usage or {}
    gateway.token_stats.record(upstream.endpoint, upstream.model, usage.get("input_tokens"),
                               usage.get("output_tokens"))


async def _summarize(gateway: Gateway, turn: Turn) -> tuple[dict | None, str, dict, dict | None]:
    """Run a compacting ``turn``: (the sealed compaction item, its summary, usage, None) from a Chat
    backend, or (None, "", usage, the upstream's compacted object) from an upstream Responses API."""
    upstream = await open_upstream(turn, gateway.calls, gateway.registry)
    try:
        result = upstream.result
        note(endpoint=upstream.endpoint, upstream_model=upstream.model)
        if isinstance(result, NativeResponse):
            usage = complete_usage(plain(result.data.get("usage")))
            _count(gateway, upstream, usage)
            return None, "", usage, result.data
        if not isinstance(result, Completion):
            raise TypeError(f"a streamed upstream answer ({type(result).__name__}) for a compaction")
        usage = usage_chat_to_responses(plain(result.data.get("usage")))
        _count(gateway, upstream, usage)
        summary = _summary_of(result.data)
    finally:
        await upstream.close()
    item = {"id": new_id("cmp"), "type": "compaction", "encrypted_content": gateway.seal.seal_summary(summary)}
    return item, summary, usage, None


async def compact(gateway: Gateway, turn: Turn) -> dict:
    """The ``CompactedResponse`` (``object: "response.compaction"``) of a compact request prepared as
    a compacting turn: every user message of its context, then one compaction item. Not stored.
    Raises the APIErrors of :func:`engine.upstream.open_upstream`, 502 when the model writes no summary."""
    item, _, usage, native = await _summarize(gateway, turn)
    if native is not None:
        output = [normalize_output_item(entry) for entry in native.get("output") or []]
    else:
        output = [normalize_output_item(entry) for entry in turn.context_items if is_user_message(entry)]
        output.append(item)
    return {"id": turn.id, "object": "response.compaction", "created_at": turn.created_at, "output": output,
            "usage": usage}


def _threshold(body: dict) -> int | None:
    for entry in body.get("context_management") or ():
        if entry.get("type") == "compaction":
            return entry.get("compact_threshold")
    return None


def _split(items: list[dict]) -> int:
    """Where this turn's compaction goes: before the last user message (0: there is nothing to compact)."""
    for index in range(len(items) - 1, -1, -1):
        if is_user_message(items[index]):
            return index
    return 0


async def compact_if_due(gateway: Gateway, turn: Turn) -> None:
    """Server-side compaction (``context_management``): when ``turn``'s context is past the
    ``compact_threshold`` (input tokens, counted as ``input_tokens`` counts them), the items before its
    last user message are summarized into a compaction item that the turn uses instead and puts first
    in its output. An upstream Responses API gets ``context_management`` itself, so nothing is done
    for one. Raises the APIErrors of the count and the summary call."""
    threshold = _threshold(turn.body)
    if threshold is None or turn.compaction is not None:
        return
    if not await gateway.registry.serves_by_chat(turn.routed_model):
        return
    count = await count_input_tokens(gateway, turn)
    if count.input_tokens <= threshold:
        return
    context = turn.context_items
    split = _split(context)
    if split == 0:
        return
    item, summary, usage, _ = await _summarize(
        gateway, _summarizing_turn(turn, context[:split], gateway.settings.compaction_max_tokens))
    turn.compact_with(item, summary, split)
    note(compacted_tokens=count.input_tokens)
    log.info("response %s: context of %d tokens (threshold %d) compacted, %d items summarized in %s tokens",
             turn.id, count.input_tokens, threshold, split, usage.get("output_tokens"))

