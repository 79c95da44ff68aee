"""A turn: one validated create request with the chain before it, read from the store.

:func:`prepare_turn` normalizes the request's ``input``, resolves its
``item_reference`` items and its ``previous_response_id`` chain (404 when one is
missing, never silently ignored). Nothing is translated here: a turn is sent to
an upstream in the form the chosen endpoint speaks (``engine.upstream``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from store import Store
from db_conversations import BUSY, MISSING
from engine.files import FileFetcher, file_urls
from errors import APIError
from reasoning_seal import ReasoningSeal, SealError
from requests.common import SEALED_PREFIX
from requests.files import part_text
from requests.mcp import as_function_items
from requests.tools import OUTPUT_ITEM_TYPES, ToolMap
from requests.validation import METADATA_MAX_VALUE_CHARS, conversation_id
from requests.params import tool_map
from requests.responses import (InvalidInput, build_response_object, new_id, normalize_input_items,
                                responses_input_to_messages)

__all__ = ["Turn", "ChainBounds", "prepare_turn", "resolve_input", "bad_input", "is_user_message",
           "release_conversation"]

log = logging.getLogger("nomyo_router.turn")

#: The ``metadata`` key of a Response that says what its answer was given without.
NOTICE_KEY = "nomyo_notice"
#: What a Chat model is asked after the context it is to compact (the gateway's own prompt,
#: ``engine.compaction``).
SUMMARY_PROMPT = (
    "Stop here and write a handover note of everything above, for whoever continues this work with "
    "nothing else to go on. Keep: what the user wants and every requirement, preference and constraint "
    "they gave; decisions taken and why; facts, names, numbers, paths and code that were found or written; "
    "tools called and what they returned, where it still matters; what is done, what failed, and what is "
    "left to do next. Leave out pleasantries and anything settled that no longer matters. Write the note "
    "only, in plain prose and short lists, no preamble."
)
#: What a compaction item reads as, before its summary, when it is given to a model.
SUMMARY_HEADING = "Earlier context, compacted into a summary:\n\n"


def bad_input(exc: InvalidInput) -> APIError:
    """The 400 for input that cannot be used, naming its ``param``."""
    return APIError(400, exc.message, param=exc.param, code=exc.code)


@dataclass
class Turn:
    """One create request: its body, owner, this turn's input items and the chain before it."""

    id: str
    body: dict
    owner: str | None
    input_items: list[dict]
    history: list[dict] = field(default_factory=list)
    created_at: int = field(default_factory=lambda: int(time.time()))
    #: The model asked of the endpoints (``model_aliases`` applied); None: the client's own name.
    upstream_model: str | None = None
    #: What the answer was given without (input the model refused), for the client to read.
    notices: list[str] = field(default_factory=list)
    #: The conversation whose items are the history, held by this turn until it ends.
    conversation_id: str | None = None
    #: The summaries sealed in the gateway's own compaction items of the context, by ``encrypted_content``.
    summaries: dict[str, str] = field(default_factory=dict)
    #: A compaction request (``/v1/responses/compact``): the model is asked for a summary of the context.
    compacting: bool = False
    #: The compaction item this turn made (``context_management``), and where it goes in the context.
    compaction: dict | None = None
    compaction_at: int = 0
    #: Fetches ``file_url`` files for a Chat backend (``engine.files``); what it brought, by URL.
    files: FileFetcher | None = None
    fetched: dict[str, tuple[bytes, str | None]] = field(default_factory=dict)

    @property
    def model(self) -> str:
        """The model name the client asked for (and every Response reports)."""
        return self.body["model"]

    @property
    def routed_model(self) -> str:
        """The model name endpoints are asked for."""
        return self.upstream_model or self.body["model"]

    @property
    def store(self) -> bool:
        return self.body.get("store") is not False

    @property
    def background(self) -> bool:
        return bool(self.body.get("background"))

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def wants_summary(self) -> bool:
        """Whether the request asks for a reasoning summary (``reasoning.summary``)."""
        return bool((self.body.get("reasoning") or {}).get("summary"))

    @property
    def previous_response_id(self) -> str | None:
        return self.body.get("previous_response_id")

    @property
    def items(self) -> list[dict]:
        """The whole chain's items plus this turn's input, oldest first."""
        return self.history + self.input_items

    @property
    def seals_reasoning(self) -> bool:
        """Whether reasoning goes back to the client sealed (``include: ["reasoning.encrypted_content"]``)."""
        return "reasoning.encrypted_content" in (self.body.get("include") or ())

    @property
    def context_items(self) -> list[dict]:
        """What the model is given: :attr:`items`, of which, before the last compaction item, only the
        user messages stay (the compaction item stands for the rest); this turn's own compaction
        (:meth:`compact_with`) goes in where it was made."""
        items = _since_last_compaction(self.items)
        if self.compaction is not None:
            at = self.compaction_at
            items = [item for item in items[:at] if is_user_message(item)] + [self.compaction] + items[at:]
        return items

    def compact_with(self, item: dict, summary: str, at: int) -> None:
        """Use the compaction ``item`` (sealing ``summary``) for the first ``at`` items of
        :attr:`context_items` from now on; it goes first in this turn's output."""
        self.summaries[item["encrypted_content"]] = summary
        self.compaction, self.compaction_at = item, at
        self.__dict__.pop("messages", None)

    @property
    def native_items(self) -> list[dict]:
        """The context as an upstream Responses API takes it: the gateway's own compaction items as
        the summary they hold (a foreign one passes as it is)."""
        return [self._summary_message(item) if item["type"] == "compaction" and item.get("encrypted_content")
                in self.summaries else item for item in self.context_items]

    def _summary_message(self, item: dict) -> dict:
        text = SUMMARY_HEADING + self.summaries[item["encrypted_content"]]
        return {"type": "message", "id": item["id"], "role": "user", "status": "completed",
                "content": [{"type": "input_text", "text": text}]}

    @cached_property
    def messages(self) -> list[dict]:
        """The Chat Completions messages of the context (:attr:`context_items`); a compacting turn
        ends with the request for the summary.

        Raises :class:`InvalidInput` for what Chat Completions cannot express
        (an ``input_file`` by ``file_id``, reasoning or compaction sealed by someone else)."""
        for i, item in enumerate(self.input_items):
            blob = item.get("encrypted_content") if item["type"] == "reasoning" else None
            if blob and not (isinstance(blob, str) and blob.startswith(SEALED_PREFIX)):
                raise InvalidInput("This reasoning's encrypted_content was not made by this gateway, and this "
                                   "model's backend cannot read it.", f"input[{i}].encrypted_content",
                                   "invalid_encrypted_content")
        items = self.native_items
        for item in items:
            if item["type"] == "compaction":
                raise InvalidInput("A compaction item's encrypted_content was not made by this gateway, and this "
                                   "model's backend cannot read it.", "input", "invalid_encrypted_content")
        items = [self._files_as_text(item, i) for i, item in enumerate(as_function_items(items))]
        if self.compacting:
            items = [*items, {"type": "message", "role": "user", "content": SUMMARY_PROMPT}]
        return responses_input_to_messages(items, self.body.get("instructions"))

    def _files_as_text(self, item: dict, index: int) -> dict:
        """``item`` with each ``input_file`` part as the text it holds (``requests.files``)."""
        key = "content" if item["type"] == "message" else "output"
        parts = item.get(key)
        if not isinstance(parts, list) or not any(isinstance(p, dict) and p.get("type") == "input_file" for p in parts):
            return item
        where = f"input[{index}].{key}"
        return {**item, key: [{"type": "input_text", "text": part_text(p, f"{where}[{j}]", self.fetched)}
                              if isinstance(p, dict) and p.get("type") == "input_file" else p
                              for j, p in enumerate(parts)]}

    async def load_files(self) -> None:
        """Fetch the ``file_url`` files of the context, for a Chat backend (each URL once a turn).
        Raises :class:`InvalidInput` for one that may not or cannot be fetched."""
        wanted = [(url, where) for url, where in file_urls(self.native_items) if url not in self.fetched]
        for url, where in wanted:
            if self.files is None:
                raise InvalidInput("This gateway fetches no file_url.", f"{where}.file_url", "file_url_not_allowed")
            self.fetched[url] = await self.files.fetch(url, where)
        if wanted:
            self.__dict__.pop("messages", None)

    @cached_property
    def tool_map(self) -> ToolMap:
        """How this turn's tools are offered to a Chat model and how its calls come back
        (hosted tools left out: a Chat model was never offered them)."""
        return tool_map(self.body.get("tools"), lambda tool_type: "drop")

    def response(self, status: str, output_items: list[dict] | None = None, **fields: Any) -> dict:
        """This turn's Response object with ``status`` and ``output_items``. Its ``notices``
        go in ``metadata`` under :data:`NOTICE_KEY` (the client's own keys kept)."""
        request = self.body
        if self.notices:
            notice = " ".join(dict.fromkeys(self.notices))[:METADATA_MAX_VALUE_CHARS]
            request = {**request, "metadata": {**(request.get("metadata") or {}), NOTICE_KEY: notice}}
        return build_response_object(response_id=self.id, model=self.model, output_items=output_items or [],
                                     status=status, request=request, created_at=self.created_at,
                                     previous_response_id=self.previous_response_id, **fields)

    def native_meta(self) -> dict:
        """Keyword arguments that re-issue upstream Response objects as this turn's."""
        return dict(response_id=self.id, request=self.body, created_at=self.created_at,
                    previous_response_id=self.previous_response_id, store=self.store,
                    background=self.background, model=self.model if self.upstream_model else None)


def is_user_message(item: dict) -> bool:
    return item.get("type") == "message" and item.get("role") == "user"


def _since_last_compaction(items: list[dict]) -> list[dict]:
    """``items`` with, before the last ``compaction`` item, only the user messages kept."""
    for index in range(len(items) - 1, -1, -1):
        if items[index].get("type") == "compaction":
            return [item for item in items[:index] if is_user_message(item)] + items[index:]
    return items


async def _resolve_references(store: Store, items: list[dict], owner: str | None) -> list[dict]:
    refs = [item["id"] for item in items if item["type"] == "item_reference"]
    if not refs:
        return items
    found = await store.find_items(refs, owner)
    missing = [ref for ref in refs if ref not in found]
    if missing:
        raise APIError(404, f"Item with id '{missing[0]}' not found.", param="input", code="item_not_found")
    return [found[item["id"]] if item["type"] == "item_reference" else item for item in items]


def _unseal(items: list[dict], seal: ReasoningSeal, param: str = "input") -> list[dict]:
    """Reasoning items that come back with the gateway's own ``encrypted_content`` get the
    content sealed in it. Raises APIError 400 for a blob that was altered or made under another key."""
    out = items
    for i, item in enumerate(items):
        blob = item.get("encrypted_content") if item["type"] == "reasoning" else None
        if isinstance(blob, str) and blob.startswith(SEALED_PREFIX):
            try:
                content = seal.open(blob)
            except SealError as exc:
                raise APIError(400, str(exc), param=f"{param}[{i}].encrypted_content",
                               code="invalid_encrypted_content") from None
            if out is items:
                out = list(items)
            out[i] = {**item, "content": content}
    return out


def _summaries(items: list[dict], seal: ReasoningSeal | None, param: str) -> dict[str, str]:
    """The summaries sealed in the gateway's own compaction items, by ``encrypted_content``. Raises
    APIError 400 ``invalid_encrypted_content`` for one that does not open (``param``: where the items
    came from, ``input``/``items`` or the history's ``previous_response_id``/``conversation``)."""
    out: dict[str, str] = {}
    for i, item in enumerate(items):
        blob = item.get("encrypted_content") if item["type"] == "compaction" else None
        if seal is None or not (isinstance(blob, str) and blob.startswith(SEALED_PREFIX)):
            continue
        try:
            out[blob] = seal.open_summary(blob)
        except SealError as exc:
            where = f"{param}[{i}].encrypted_content" if param.startswith(("input", "items")) else param
            raise APIError(400, f"A compaction item: {exc}", param=where, code="invalid_encrypted_content") from None
    return out


async def resolve_input(store: Store, raw: Any, owner: str | None, seal: ReasoningSeal | None,
                        param: str = "input") -> list[dict]:
    """Items as a request sends them (``input``, a conversation's ``items``), made ready to store:
    normalized, ``item_reference`` resolved, the gateway's own sealed reasoning opened and sealed
    compaction checked. Raises APIError 400 (naming ``param``) or 404 ``item_not_found``."""
    try:
        items = normalize_input_items(raw)
    except InvalidInput as exc:
        if exc.param and exc.param.startswith("input"):
            exc.param = param + exc.param[len("input"):]
        raise bad_input(exc) from None
    items = await _resolve_references(store, items, owner)
    if seal is not None:
        items = _unseal(items, seal, param)
        _summaries(items, seal, param)
    return items


def _call_id_of_output(item: dict) -> str | None:
    return item.get("id") if item["type"] == "local_shell_call_output" else item.get("call_id")


def _without_orphan_outputs(items: list[dict]) -> list[dict]:
    """``items`` less the tool outputs whose call is not among them (cut off by truncation)."""
    calls = {item.get("call_id") for item in items if item.get("type") not in OUTPUT_ITEM_TYPES}
    return [item for item in items
            if item.get("type") not in OUTPUT_ITEM_TYPES or _call_id_of_output(item) in calls]


@dataclass(frozen=True)
class ChainBounds:
    """What one request may load of its ``previous_response_id`` chain or its conversation
    (``max_chain_bytes`` of item JSON, ``max_chain_items`` items)."""

    max_bytes: int = 16 * 1024 * 1024
    max_items: int = 10_000


def _too_long(what: str, param: str, bounds: ChainBounds) -> APIError:
    return APIError(400, f"{what} is longer than this gateway loads ({bounds.max_items} items, {bounds.max_bytes} "
                         "bytes of items); send 'truncation': 'auto' to leave out its oldest turns.",
                    param=param, code="context_length_exceeded")


async def _load_history(store: Store, body: dict, owner: str | None, bounds: ChainBounds) -> list[dict]:
    """The items before this turn: its ``previous_response_id`` chain or its ``conversation``. One past
    the bounds is a 400 ``context_length_exceeded`` with ``truncation: "disabled"`` (the default, as at
    OpenAI), and loses its oldest items with ``"auto"``."""
    previous, conversation = body.get("previous_response_id"), conversation_id(body)
    if conversation:
        found = await store.conversation_history(conversation, owner, max_bytes=bounds.max_bytes,
                                                 max_items=bounds.max_items)
        if found is None:
            raise _conversation_not_found(conversation)
        items, complete = found
        what, param = f"The conversation '{conversation}'", "conversation"
    elif previous:
        chain = await store.get_chain(previous, owner, max_bytes=bounds.max_bytes, max_items=bounds.max_items)
        if chain is None:
            raise APIError(404, f"Previous response with id '{previous}' not found.",
                           param="previous_response_id", code="previous_response_not_found")
        items, complete = chain.items, chain.complete
        what, param = f"The conversation before this turn (previous_response_id '{previous}')", "previous_response_id"
    else:
        return []
    if complete:
        return items
    if body.get("truncation") != "auto":
        raise _too_long(what, param, bounds)
    log.info("truncation auto: %s kept its newest %d items", what, len(items))
    return _without_orphan_outputs(items)


def _conversation_not_found(conversation: str) -> APIError:
    return APIError(404, f"Conversation with id '{conversation}' not found.", param="conversation",
                    code="conversation_not_found")


async def _claim(store: Store, conversation: str, owner: str | None, response_id: str) -> None:
    """Hold ``conversation`` for the turn ``response_id``; 404 when it is not found, 409
    ``conversation_locked`` while another turn runs on it (turns on one conversation never interleave)."""
    claimed = await store.claim_conversation(conversation, owner, response_id)
    if claimed == MISSING:
        raise _conversation_not_found(conversation)
    if claimed == BUSY:
        holder = await store.conversation_holder(conversation)
        raise APIError(409, f"Another response ({holder}) is in progress on conversation '{conversation}'; "
                            "send this one when it has finished.", param="conversation", code="conversation_locked")


async def release_conversation(store: Store, turn: Turn, items: list[dict] | None = None) -> None:
    """Free ``turn``'s conversation, appending ``items`` (None: the turn failed, nothing is added);
    nothing happens when the turn does not hold it (any more). Never cut short by a cancellation."""
    if turn.conversation_id is not None:
        await asyncio.shield(store.finish_conversation_turn(turn.conversation_id, turn.id, items))


async def prepare_turn(store: Store, body: dict, owner: str | None,
                       aliases: dict[str, str] | None = None, seal: ReasoningSeal | None = None,
                       bounds: ChainBounds = ChainBounds(), *, claim: bool = True,
                       files: FileFetcher | None = None, response_id: str | None = None,
                       history: list[dict] | None = None) -> Turn:
    """The :class:`Turn` of a validated create ``body`` for tenant ``owner``; ``aliases``
    (``model_aliases``) name the model the endpoints are asked for instead; ``seal``
    opens reasoning and compaction the gateway sealed for the client (``encrypted_content``);
    ``bounds`` limit what the chain or conversation may load. With ``conversation`` and ``claim``
    the turn holds the conversation from here (:func:`release_conversation` frees it); ``files``
    fetches its ``file_url`` files should a Chat backend need them. ``response_id``: the turn's id
    when it has one already (a queued background response run again; it holds its conversation still).
    ``history``: the items before this turn when the caller has them (a WebSocket's last response),
    instead of the stored chain.

    Raises APIError 400 for malformed input items, 404 ``item_not_found`` for an
    ``item_reference``, 404 ``previous_response_not_found`` or ``conversation_not_found``
    for a chain or conversation that this tenant has not stored, 409 ``conversation_locked``,
    400 ``invalid_encrypted_content`` for reasoning or compaction sealed by this gateway that does
    not open, 400 ``context_length_exceeded`` for history past ``bounds`` without ``truncation: "auto"``.
    """
    input_items = await resolve_input(store, body.get("input"), owner, seal)
    turn_id, conversation = response_id or new_id("resp"), conversation_id(body)
    if conversation and claim:
        await _claim(store, conversation, owner, turn_id)
    turn = Turn(id=turn_id, body=body, owner=owner, input_items=input_items,
                upstream_model=(aliases or {}).get(body["model"]), conversation_id=conversation if claim else None,
                files=files)
    try:
        turn.history = history if history is not None else await _load_history(store, body, owner, bounds)
        history_param = "conversation" if conversation else "previous_response_id"
        turn.summaries = _summaries(turn.history, seal, history_param) | _summaries(input_items, seal, "input")
    except BaseException:
        await release_conversation(store, turn)
        raise
    return turn
