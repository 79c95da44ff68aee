"""The native path: requests to and answers from an upstream Responses API (OpenAI).

The gateway keeps all state itself, so upstream calls are stateless
(``store: false``, the whole chain sent as ``input``) and upstream ids are
replaced by the gateway's own.
"""

from __future__ import annotations

from typing import Any

from requests.responses import build_response_object

__all__ = ["native_request", "native_input", "native_to_response", "NativeStreamTranslator"]

#: Body fields the gateway handles itself and never sends upstream.
GATEWAY_FIELDS = frozenset({"nomyo", "previous_response_id", "store", "background", "stream",
                            "stream_options", "model", "input"})


def native_input(items: list[dict]) -> list[dict]:
    """Make stored items fit a stateless upstream call.

    Item ids are dropped (the upstream never stored them); reasoning items are
    kept only with ``encrypted_content`` (the only form a stateless call accepts).
    """
    out = []
    for item in items:
        kind = item.get("type")
        if kind == "reasoning":
            if item.get("encrypted_content"):
                out.append({k: v for k, v in item.items() if k != "status"})
            continue
        if kind == "message":
            out.append({"type": "message", "role": item["role"], "content": item["content"]})
        elif kind in ("function_call", "function_call_output"):
            out.append({k: v for k, v in item.items() if k not in ("id", "status")})
        else:
            out.append(item)
    return out


def native_request(body: dict, items: list[dict], model: str, *, stream: bool) -> dict:
    """The upstream ``responses.create`` keyword arguments for ``body``.

    ``items`` is the whole chain plus this turn's input. Always ``store=False``.
    """
    params = {k: v for k, v in body.items() if k not in GATEWAY_FIELDS}
    params.update(model=model, input=native_input(items), store=False)
    if stream:
        params["stream"] = True
    return params


def native_to_response(upstream: dict, *, response_id: str, request: dict, created_at: int,
                       previous_response_id: str | None, store: bool, background: bool) -> dict:
    """An upstream Response object re-issued under the gateway's ``response_id``.

    Output, usage, status and errors come from upstream; the echoed settings from
    the gateway's own request; missing required fields are filled.
    """
    status = upstream.get("status") or "completed"
    return build_response_object(
        response_id=response_id, model=upstream.get("model") or request.get("model", ""),
        output_items=upstream.get("output") or [], status=status, request=request,
        created_at=created_at, completed_at=upstream.get("completed_at"),
        usage=upstream.get("usage"), previous_response_id=previous_response_id,
        error=upstream.get("error"), incomplete_details=upstream.get("incomplete_details"),
        store=store, background=background)


class NativeStreamTranslator:
    """Re-issue an upstream Responses event stream under the gateway's ids.

    Every ``response`` snapshot is rebuilt with :func:`native_to_response`;
    ``sequence_number`` is renumbered from ``first_sequence_number``. Item
    events pass through. ``final`` holds the terminal Response once seen. With
    ``skip_created`` the upstream's ``response.created`` is dropped (a background
    stream has sent its own).
    """

    def __init__(self, *, response_id: str, request: dict, created_at: int,
                 previous_response_id: str | None, store: bool, background: bool,
                 first_sequence_number: int = 0, skip_created: bool = False):
        self._meta = dict(response_id=response_id, request=request, created_at=created_at,
                          previous_response_id=previous_response_id, store=store, background=background)
        self.seq = first_sequence_number
        self.items: list[dict] = []
        self.final: dict | None = None
        self._skip = ("response.created", "response.queued") if skip_created else ()

    def _ev(self, event: dict) -> dict:
        event["sequence_number"] = self.seq
        self.seq += 1
        return event

    def feed(self, event: dict) -> list[dict]:
        """Translate one upstream event (a plain dict)."""
        if event.get("type") in self._skip:
            return []
        event = dict(event)
        if isinstance(event.get("response"), dict):
            event["response"] = native_to_response(event["response"], **self._meta)
            if event.get("type") in ("response.completed", "response.incomplete", "response.failed"):
                self.final = event["response"]
        if event.get("type") == "response.output_item.done" and isinstance(event.get("item"), dict):
            self.items.append(event["item"])
        return [self._ev(event)]

    def snapshot(self, status: str, **fields: Any) -> dict:
        """The Response object with the items finished so far."""
        upstream = {"status": status, "output": self.items, **fields}
        return native_to_response(upstream, **self._meta)

    def fail(self, message: str, code: str = "server_error") -> list[dict]:
        """``error`` then ``response.failed`` for a stream that broke."""
        error = {"code": code, "message": message}
        self.final = self.snapshot("failed", error=error)
        return [self._ev({"type": "error", "code": code, "message": message, "param": None}),
                self._ev({"type": "response.failed", "response": self.final})]
