"""A turn: one validated create request with the chain before it, read from the store.

:func:`prepare_turn` normalizes the request's ``input``, resolves its
``item_reference`` items and its ``previous_response_id`` chain (404 when one is
missing, never silently ignored). Nothing is translated here: a turn is sent to
an upstream in the form the chosen endpoint speaks (``engine.upstream``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from db import ResponseStore
from errors import APIError
from reasoning_seal import ReasoningSeal, SealError
from requests.common import SEALED_PREFIX
from requests.tools import OUTPUT_ITEM_TYPES, ToolMap
from requests.validation import METADATA_MAX_VALUE_CHARS
from requests.params import tool_map
from requests.responses import (InvalidInput, build_response_object, new_id, normalize_input_items,
                                responses_input_to_messages)

__all__ = ["Turn", "ChainBounds", "prepare_turn", "bad_input"]

log = logging.getLogger("nomyo_router.turn")

#: The ``metadata`` key of a Response that says what its answer was given without.
NOTICE_KEY = "nomyo_notice"


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

    @cached_property
    def messages(self) -> list[dict]:
        """The Chat Completions messages of the whole chain plus this turn.

        Raises :class:`InvalidInput` for what Chat Completions cannot express
        (an ``input_file`` by ``file_id``, reasoning sealed by someone else)."""
        for i, item in enumerate(self.input_items):
            blob = item.get("encrypted_content") if item["type"] == "reasoning" else None
            if blob and not (isinstance(blob, str) and blob.startswith(SEALED_PREFIX)):
                raise InvalidInput("This reasoning's encrypted_content was not made by this gateway, and this "
                                   "model's backend cannot read it.", f"input[{i}].encrypted_content",
                                   "invalid_encrypted_content")
        return responses_input_to_messages(self.items, self.body.get("instructions"))

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


async def _resolve_references(store: ResponseStore, items: list[dict], owner: str | None) -> list[dict]:
    refs = [item["id"] for item in items if item["type"] == "item_reference"]
    if not refs:
        return items
    found = await store.find_items(refs, owner)
    missing = [ref for ref in refs if ref not in found]
    if missing:
        raise APIError(404, f"Item with id '{missing[0]}' not found.", param="input", code="item_not_found")
    return [found[item["id"]] if item["type"] == "item_reference" else item for item in items]


def _unseal(items: list[dict], seal: ReasoningSeal) -> list[dict]:
    """Reasoning items that come back with the gateway's own ``encrypted_content`` get the
    content sealed in it. Raises APIError 400 for a blob that was altered or made under another key."""
    out = items
    for i, item in enumerate(items):
        blob = item.get("encrypted_content") if item["type"] == "reasoning" else None
        if isinstance(blob, str) and blob.startswith(SEALED_PREFIX):
            try:
                content = seal.open(blob)
            except SealError as exc:
                raise APIError(400, str(exc), param=f"input[{i}].encrypted_content",
                               code="invalid_encrypted_content") from None
            if out is items:
                out = list(items)
            out[i] = {**item, "content": content}
    return out


def _call_id_of_output(item: dict) -> str | None:
    return item.get("id") if item["type"] == "local_shell_call_output" else item.get("call_id")


def _without_orphan_outputs(items: list[dict]) -> list[dict]:
    """``items`` less the tool outputs whose call is not among them (cut off by truncation)."""
    calls = {item.get("call_id") for item in items if item.get("type") not in OUTPUT_ITEM_TYPES}
    return [item for item in items
            if item.get("type") not in OUTPUT_ITEM_TYPES or _call_id_of_output(item) in calls]


@dataclass(frozen=True)
class ChainBounds:
    """What one request may load of its ``previous_response_id`` chain (``max_chain_bytes``
    of item JSON, ``max_chain_items`` items)."""

    max_bytes: int = 16 * 1024 * 1024
    max_items: int = 10_000


async def _load_history(store: ResponseStore, body: dict, owner: str | None, bounds: ChainBounds) -> list[dict]:
    """The items of the chain before this turn. A chain past the bounds is a 400
    ``context_length_exceeded`` with ``truncation: "disabled"`` (the default, as at OpenAI), and
    loses its oldest turns with ``"auto"``."""
    previous = body.get("previous_response_id")
    if not previous:
        return []
    chain = await store.get_chain(previous, owner, max_bytes=bounds.max_bytes, max_items=bounds.max_items)
    if chain is None:
        raise APIError(404, f"Previous response with id '{previous}' not found.",
                       param="previous_response_id", code="previous_response_not_found")
    if chain.complete:
        return chain.items
    if body.get("truncation") != "auto":
        raise APIError(400, f"The conversation before this turn (previous_response_id '{previous}') is longer than "
                            f"this gateway loads ({bounds.max_items} items, {bounds.max_bytes} bytes of items); "
                            "send 'truncation': 'auto' to leave out its oldest turns.",
                       param="previous_response_id", code="context_length_exceeded")
    log.info("truncation auto: the chain before %s kept its newest %d items", previous, len(chain.items))
    return _without_orphan_outputs(chain.items)


async def prepare_turn(store: ResponseStore, body: dict, owner: str | None,
                       aliases: dict[str, str] | None = None, seal: ReasoningSeal | None = None,
                       bounds: ChainBounds = ChainBounds()) -> Turn:
    """The :class:`Turn` of a validated create ``body`` for tenant ``owner``; ``aliases``
    (``model_aliases``) name the model the endpoints are asked for instead; ``seal``
    opens reasoning the gateway sealed for the client (``encrypted_content``); ``bounds``
    limit what the chain may load.

    Raises APIError 400 for malformed input items, 404 ``item_not_found`` for an
    ``item_reference`` and 404 ``previous_response_not_found`` for a
    ``previous_response_id`` that this tenant has not stored, 400
    ``invalid_encrypted_content`` for reasoning sealed by this gateway that does not open,
    400 ``context_length_exceeded`` for a chain past ``bounds`` without ``truncation: "auto"``.
    """
    try:
        input_items = normalize_input_items(body.get("input"))
    except InvalidInput as exc:
        raise bad_input(exc) from None
    input_items = await _resolve_references(store, input_items, owner)
    if seal is not None:
        input_items = _unseal(input_items, seal)
    history = await _load_history(store, body, owner, bounds)
    return Turn(id=new_id("resp"), body=body, owner=owner, input_items=input_items, history=history,
                upstream_model=(aliases or {}).get(body["model"]))
