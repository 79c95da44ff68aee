"""Ollama's model routes over every endpoint of the gateway: the listings (``/api/tags``,
``/api/ps``, ``/api/ps_details``, ``/api/version``), ``/api/show``, and model management
(``/api/pull``, ``/api/push``, ``/api/delete``, ``/api/copy``, ``/api/create``) fanned out.

Listings ask the endpoints at once (each bounded by ``connect_timeout``): Ollama endpoints'
own ``/api/tags`` and ``/api/ps`` entries as they gave them; models of OpenAI-compatible
endpoints (from discovery) and llama.cpp's server's loaded ones (its ``/v1/models``, where an
entry's ``status`` says whether it is loaded) as Ollama-shaped entries; ``model_aliases`` as
entries of their target's. Merged in configuration order, deduplicated by name. An endpoint
that does not answer is left out (and logged). ``/api/version`` is the lowest version of the
Ollama endpoints that answer (503 when none does); ``/api/show`` asks the first Ollama endpoint
serving the model (501 for a model only OpenAI-compatible endpoints serve: they have no such
route).

Model management follows NOMYO Router: a request goes to every Ollama endpoint, or with
``endpoint`` (a configured endpoint URL) to that one only (400 when it is not configured, 501
when it is not an Ollama endpoint: llama.cpp's server and OpenAI-compatible servers have no
model management in Ollama's API; 501 too with no Ollama endpoint at all). Endpoints are
asked one after the other when the client streams (each endpoint's progress objects in turn,
each with an ``endpoint`` field; a failure is that endpoint's ``error`` object, then the next
endpoint goes on), all at once when it does not; the combined answer is a success only if every
endpoint succeeded, else an error with the upstream's status that names the endpoints that
failed, with every endpoint's result in ``endpoints``. The gateway asks Ollama to stream pull,
push and create progress even for a client that does not stream (no read timeout on a long
pull). After a change an endpoint's models are discovered again. These paths need the admin
key once keys are configured (``api.guard``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, AsyncIterator

import orjson

from backends import Endpoint
from chat_client import ConnectFailed, LineStream
from engine.ollama_api import Answer, ndjson
from errors import APIError

if TYPE_CHECKING:
    from engine.gateway import Gateway

__all__ = ["OPERATIONS", "tags", "ps", "version", "show", "manage", "targets"]

log = logging.getLogger("nomyo_router.ollama")

#: Model management: operation -> (HTTP method, whether Ollama streams its progress by default,
#: whether it changes the endpoint's models, the fields it needs).
OPERATIONS = {"pull": ("POST", True, True, ("model",)), "push": ("POST", True, False, ("model",)),
              "create": ("POST", True, True, ("model",)), "delete": ("DELETE", False, True, ("model",)),
              "copy": ("POST", False, True, ("source", "destination"))}


def _ollama(registry: Any) -> list[Endpoint]:
    return [ep for ep in registry.endpoints.values() if ep.kind == "ollama"]


async def _get(gateway: Gateway, ep: Endpoint, url: str) -> Any:
    """GET ``url`` of ``ep`` as JSON, bounded by ``connect_timeout``; None (logged) when it fails."""
    headers = {"Authorization": f"Bearer {ep.api_key}"} if ep.api_key else {}
    try:
        async with asyncio.timeout(gateway.settings.connect_timeout):
            reply = await gateway.registry.http.get(url, headers=headers)
            reply.raise_for_status()
            return orjson.loads(reply.content)
    except Exception as exc:  # an endpoint that does not answer is left out of the listing
        log.info("%s did not answer for an Ollama listing: %s: %s", url, type(exc).__name__, exc)
        return None


def _entries(listing: Any, key: str) -> list[dict]:
    entries = listing.get(key) if isinstance(listing, dict) else None
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("name") or e.get("model"), str)] \
        if isinstance(entries, list) else []


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _shaped(name: str, modified: float, size: int = 0) -> dict:
    """An Ollama-shaped listing entry for a model an OpenAI-compatible endpoint serves."""
    quantization = name.rsplit(":", 1)[1] if ":" in name else ""
    return {"name": name, "model": name, "modified_at": _rfc3339(modified), "size": size, "digest": "",
            "details": {"parent_model": "", "format": "", "family": "", "families": [], "parameter_size": "",
                        "quantization_level": quantization}}


def _dedupe(entries: list[dict]) -> list[dict]:
    seen: dict[str, dict] = {}
    for entry in entries:
        seen.setdefault(entry.get("name") or entry.get("model"), entry)
    return list(seen.values())


async def tags(gateway: Gateway) -> dict:
    """Ollama's ``GET /api/tags`` over every endpoint (see the module): ``{"models": [...]}``."""
    registry = gateway.registry
    now, clock = time.time(), time.monotonic()

    async def of(ep: Endpoint) -> list[dict]:
        if ep.kind == "ollama":
            return _entries(await _get(gateway, ep, f"{ep.url}/api/tags"), "models")
        if ep.reachable is False:
            return []
        return [_shaped(name, now - (clock - ep.refreshed_at)) for name in sorted(ep.models)]

    entries = [e for found in await asyncio.gather(*map(of, registry.endpoints.values())) for e in found]
    by_name = {e.get("name") or e.get("model"): e for e in reversed(entries)}
    for alias, target in gateway.settings.model_aliases.items():
        served = next((ep.name_for(target) for ep in registry.endpoints.values() if ep.name_for(target)), None)
        if served in by_name:
            entries.append({**by_name[served], "name": alias, "model": alias})
    return {"models": _dedupe(entries)}


def _loaded_llama(entry: dict) -> bool:
    """Whether a llama.cpp ``/v1/models`` entry is loaded (no ``status``: a server of one model, always)."""
    status = entry.get("status")
    if isinstance(status, dict):
        status = status.get("value")
    return status is None or status == "loaded"


async def _running(gateway: Gateway, ep: Endpoint) -> list[dict]:
    """The models loaded on ``ep`` now, as Ollama's ``/api/ps`` entries."""
    if ep.kind == "ollama":
        return _entries(await _get(gateway, ep, f"{ep.url}/api/ps"), "models")
    if ep.kind != "llama_server":
        return []
    listing = await _get(gateway, ep, f"{ep.base_url}/models")
    data = listing.get("data") if isinstance(listing, dict) else None
    out = []
    for entry in data if isinstance(data, list) else ():
        if isinstance(entry, dict) and isinstance(entry.get("id"), str) and _loaded_llama(entry):
            meta = entry.get("meta") if isinstance(entry.get("meta"), dict) else {}
            size = meta.get("size") if isinstance(meta.get("size"), int) else 0
            shaped = _shaped(entry["id"], entry.get("created") or time.time(), size)
            del shaped["modified_at"]
            out.append({**shaped, "size_vram": 0,
                        **({"context_length": meta["n_ctx_train"]} if isinstance(meta.get("n_ctx_train"), int)
                           else {})})
    return out


async def ps(gateway: Gateway, details: bool = False) -> dict:
    """Ollama's ``GET /api/ps`` over every endpoint, deduplicated by name; with ``details``
    (``/api/ps_details``) every endpoint's entries, each with its ``endpoint``."""
    endpoints = list(gateway.registry.endpoints.values())
    found = await asyncio.gather(*(_running(gateway, ep) for ep in endpoints))
    if details:
        return {"models": [{**entry, "endpoint": ep.url} for ep, entries in zip(endpoints, found) for entry in entries]}
    return {"models": _dedupe([entry for entries in found for entry in entries])}


def _version_key(text: str) -> tuple:
    """``0.11.4`` -> ``(0, 11, 4)`` (a pre-release part after ``-`` sorts before its release)."""
    numbers, _, pre = text.lstrip("v").partition("-")
    parts = []
    for piece in numbers.split("."):
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return (*parts, 0 if pre else 1)


async def version(gateway: Gateway) -> dict:
    """Ollama's ``GET /api/version``: the lowest version among the Ollama endpoints that answer.
    Raises APIError 503 when none does (or none is configured)."""
    endpoints = _ollama(gateway.registry)
    if not endpoints:
        raise APIError(503, "No Ollama endpoint is configured: /api/version tells the version of the gateway's "
                            "Ollama endpoints.", code="no_ollama_endpoint")
    answers = await asyncio.gather(*(_get(gateway, ep, f"{ep.url}/api/version") for ep in endpoints))
    versions = [a["version"] for a in answers if isinstance(a, dict) and isinstance(a.get("version"), str)]
    if not versions:
        raise APIError(503, "No Ollama endpoint answered /api/version.", code="backend_unavailable")
    return {"version": min(versions, key=_version_key)}


def _model_field(body: dict, route: str) -> str:
    """``model`` (or Ollama's older ``name``) of a body; APIError 400 without one."""
    model = body.get("model") or body.get("name")
    if not isinstance(model, str) or not model:
        raise APIError(400, f"{route} needs 'model': the name of a model.", param="model",
                       code="missing_required_parameter")
    return model


async def show(gateway: Gateway, body: dict) -> dict:
    """Ollama's ``POST /api/show`` from the first Ollama endpoint serving the model
    (``model_aliases`` apply), the body as sent but for the endpoint's name of it.

    Raises APIError 400 without ``model``, 404 a model no endpoint serves, 501 one only
    OpenAI-compatible endpoints serve, 502 when none of its Ollama endpoints can be reached, or
    the endpoint's own status and message."""
    asked = _model_field(body, "POST /api/show")
    model = gateway.settings.model_aliases.get(asked, asked)
    registry = gateway.registry
    candidates = await registry.find(model)
    if not candidates:
        raise APIError(404, f"model '{asked}' not found", param="model", code="model_not_found")
    natives = [(ep, name) for ep, name in candidates if ep.kind == "ollama"]
    if not natives:
        raise APIError(501, f"model '{asked}' is served only by OpenAI-compatible endpoints (llama.cpp's server, "
                            "vLLM...), which have no /api/show.", code="not_ollama_endpoint")
    failure = ""
    for ep, name in natives:
        given = {key: value for key, value in body.items() if key != "name"}
        try:
            return await registry.forwarder(ep.url).send_native(
                "POST", f"{ep.url}/api/show", orjson.dumps({**given, "model": name}), stream=False)
        except ConnectFailed as exc:
            registry.mark_unreachable(ep.url, exc.detail)
            failure = exc.detail
    raise APIError(502, f"No Ollama endpoint serving '{asked}' can be reached: {failure}.",
                   code="backend_unavailable")


# ── model management ───────────────────────────────────────────────────────────

def targets(gateway: Gateway, endpoint: str | None) -> list[Endpoint]:
    """The endpoints model management goes to: every Ollama endpoint, or ``endpoint`` only.
    Raises APIError 400 for an ``endpoint`` not configured, 501 for one that is not an Ollama
    endpoint, or when there is no Ollama endpoint at all."""
    registry = gateway.registry
    if endpoint is not None:
        ep = registry.endpoints.get(endpoint.rstrip("/")) or registry.endpoints.get(endpoint)
        if ep is None:
            raise APIError(400, f"'{endpoint}' is not a configured endpoint.", param="endpoint",
                           code="invalid_value")
        if ep.kind != "ollama":
            raise APIError(501, f"{ep.url} is not an Ollama endpoint: Ollama's model management is not available "
                                "on llama.cpp's server or OpenAI-compatible servers.", param="endpoint",
                           code="not_ollama_endpoint")
        return [ep]
    found = _ollama(registry)
    if not found:
        raise APIError(501, "No Ollama endpoint is configured: Ollama's model management is not available on "
                            "llama.cpp's server or OpenAI-compatible servers.", code="not_ollama_endpoint")
    return found


def _check(operation: str, body: dict) -> bool:
    """Check the fields ``operation`` needs; whether the client streams. APIError 400 names a missing one."""
    method, streams, _, needed = OPERATIONS[operation]
    for field in needed:
        if field == "model":
            _model_field(body, f"{method} /api/{operation}")
        elif not isinstance(body.get(field), str) or not body[field]:
            raise APIError(400, f"{method} /api/{operation} needs '{field}'.", param=field,
                           code="missing_required_parameter")
    stream = body.get("stream", streams)
    if not isinstance(stream, bool):
        raise APIError(400, "'stream' must be true or false.", param="stream", code="invalid_value")
    if stream and not streams:
        raise APIError(400, f"{method} /api/{operation} does not stream.", param="stream", code="invalid_value")
    return stream


async def _open(gateway: Gateway, ep: Endpoint, operation: str, body: dict) -> dict | LineStream:
    """Send one management request to ``ep``: its progress stream (pull, push, create), or its answer."""
    method, streams, _, _ = OPERATIONS[operation]
    sent = {**body, "stream": True} if streams else body
    return await gateway.registry.forwarder(ep.url).send_native(
        method, f"{ep.url}/api/{operation}", orjson.dumps(sent), stream=streams)


async def _after(gateway: Gateway, ep: Endpoint, operation: str) -> None:
    if OPERATIONS[operation][2]:
        await gateway.registry.refresh_endpoint(ep)


async def _run_one(gateway: Gateway, ep: Endpoint, operation: str, body: dict) -> dict:
    """One endpoint's result: ``{"endpoint", "status"}`` or ``{"endpoint", "error", "status_code"}``."""
    try:
        answer = await _open(gateway, ep, operation, body)
        last: dict = {"status": "success"}
        if isinstance(answer, LineStream):
            try:
                async for batch in answer.batches():
                    last = batch[-1]
                    if "error" in last:
                        break
            finally:
                await answer.aclose()
        if "error" in last:  # Ollama answers a failure after its progress began with 500 when not streamed
            result = {"endpoint": ep.url, "error": str(last["error"]), "status_code": 500}
        elif last.get("status") != "success":
            result = {"endpoint": ep.url, "status_code": 502,
                      "error": f"its progress ended without success (last: {str(last.get('status'))[:200]})"}
        else:
            result = {"endpoint": ep.url, "status": "success"}
    except ConnectFailed as exc:
        result = {"endpoint": ep.url, "error": f"the endpoint cannot be reached: {exc.detail}", "status_code": 502}
    except APIError as exc:
        result = {"endpoint": ep.url, "error": exc.message, "status_code": exc.status}
    await _after(gateway, ep, operation)
    return result


async def manage(gateway: Gateway, operation: str, body: dict, endpoint: str | None = None) -> Answer:
    """Ollama's model management ``operation`` (see :data:`OPERATIONS` and the module) with
    ``body`` as the client sent it, on :func:`targets`. Returns the combined answer (its
    ``status`` the first failing endpoint's), or the progress stream.
    Raises APIError 400 for a missing field, 400/501 as :func:`targets`."""
    stream = _check(operation, body)
    endpoints = targets(gateway, endpoint)
    if stream:
        return Answer(stream=_progress(gateway, endpoints, operation, body))
    results = await asyncio.gather(*(_run_one(gateway, ep, operation, body) for ep in endpoints))
    failed = [r for r in results if "error" in r]
    if not failed:
        return Answer(body={"status": "success", "endpoints": results})
    causes = "; ".join(f"{r['endpoint']}: {r['error']}" for r in failed)
    return Answer(body={"error": f"{operation} failed on {len(failed)} of {len(results)} endpoint(s): {causes}",
                        "endpoints": results}, status=failed[0]["status_code"])


async def _progress(gateway: Gateway, endpoints: list[Endpoint], operation: str, body: dict) -> AsyncIterator[bytes]:
    """Each endpoint's progress objects in turn, each with its ``endpoint``; a failure is its
    ``error`` object. A client that leaves closes the upstream stream at once."""
    for ep in endpoints:
        stream: LineStream | None = None
        try:
            stream = await _open(gateway, ep, operation, body)
            async for batch in stream.batches():
                yield ndjson([{**line, "endpoint": ep.url} for line in batch])
        except ConnectFailed as exc:
            yield ndjson([{"error": f"the endpoint cannot be reached: {exc.detail}", "endpoint": ep.url}])
        except APIError as exc:
            yield ndjson([{"error": exc.message, "endpoint": ep.url}])
        finally:
            if stream is not None:
                await stream.aclose()
        await _after(gateway, ep, operation)
