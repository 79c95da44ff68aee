"""``include`` on reads: retrieve, ``input_items`` and conversation items (pure: dicts in, dicts out).

The values are ``openai.types.responses.ResponseIncludable``. Of those, three
concern items this gateway makes, and are applied to what is read:

- ``reasoning.encrypted_content``: reasoning items get an ``encrypted_content``
  sealed by the gateway (``reasoning_seal``), as a create with that include gives.
- ``message.output_text.logprobs``: ``output_text`` parts keep the ``logprobs``
  stored with them; without it they are read with ``logprobs: []``.
- ``message.input_image.image_url``: the gateway keeps input images inline, so
  their ``image_url`` is always read; the value is accepted.

The others name items of OpenAI's hosted tools, which this gateway never stores, so
they change nothing. Any other value is a 400.
"""

from __future__ import annotations

from typing import Callable, Iterable

from requests.common import InvalidInput

__all__ = ["INCLUDABLE", "check_include", "view_items", "view_response"]

#: Every ``ResponseIncludable`` of the SDK.
INCLUDABLE = frozenset({
    "file_search_call.results", "web_search_call.results", "web_search_call.action.sources",
    "message.input_image.image_url", "computer_call_output.output.image_url", "code_interpreter_call.outputs",
    "reasoning.encrypted_content", "message.output_text.logprobs",
})


def check_include(values: Iterable[str]) -> frozenset[str]:
    """The set of ``values``; raises :class:`InvalidInput` (``include``) for one the API does not know."""
    values = list(values)
    for value in values:
        if value not in INCLUDABLE:
            raise InvalidInput(f"Unknown include value {value!r}; it can be one of {', '.join(sorted(INCLUDABLE))}.",
                               "include", "invalid_include")
    return frozenset(values)


def _view_item(item: dict, include: frozenset[str], seal: Callable[[dict], str] | None) -> dict:
    kind = item.get("type")
    if kind == "reasoning" and "reasoning.encrypted_content" in include and seal is not None \
            and not item.get("encrypted_content"):
        return {**item, "encrypted_content": seal(item)}
    if kind == "message" and "message.output_text.logprobs" not in include and isinstance(item.get("content"), list) \
            and any(part.get("type") == "output_text" and part.get("logprobs") for part in item["content"]):
        return {**item, "content": [{**part, "logprobs": []} if part.get("type") == "output_text" else part
                                    for part in item["content"]]}
    return item


def view_items(items: list[dict], include: frozenset[str], seal: Callable[[dict], str] | None) -> list[dict]:
    """``items`` as read with ``include``; ``seal`` makes a reasoning item's ``encrypted_content``."""
    return [_view_item(item, include, seal) for item in items]


def view_response(response: dict, include: frozenset[str], seal: Callable[[dict], str] | None) -> dict:
    """A stored Response object as read with ``include`` (its ``output`` items viewed)."""
    output = response.get("output") or []
    viewed = view_items(output, include, seal)
    if all(a is b for a, b in zip(viewed, output)):
        return response
    return {**response, "output": viewed}
