"""Upstream endpoints: registry, model discovery, routing, usage slots, clients, calls.

Endpoints come from the configuration: Ollama base URLs (``http://host:11434``),
OpenAI-compatible base URLs ending in ``/v1`` (vLLM, LM Studio, OpenAI itself) and
``llama_server_endpoints``. Routing follows NOMYO Router: among the endpoints
serving a model, prefer one where it is loaded, then the least busy, never more
than ``max_concurrent_connections`` requests per endpoint-model pair. With ``redis_url``
those slots are counted by all replicas together (``slots.SharedSlots``); without, by each
replica alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import httpx2
import openai
import orjson

from chat_client import KEEPALIVE_EXPIRY, ChatClient, ChatStream, ConnectFailed, upstream_error
from config import Settings
from metrics import QUEUE_SECONDS
from slots import SharedSlots, SlotsUnavailable
from errors import APIError, BackendStreamError, BackendTimeout, BackendUnavailable  # noqa: F401 (re-exported)

__all__ = [
    "Endpoint", "Registry", "BackendUnavailable", "BackendTimeout", "BackendStreamError",
    "choose_endpoint", "decrement_usage",
    "is_ext_openai_endpoint", "_make_openai_client", "create_chat_with_retries", "create_native_response",
]

log = logging.getLogger("nomyo_router.backends")


#: Attempts at a call whose connection failed before any answer (each failed attempt
#: discards its connection, so the next one takes a fresh or another pooled one).
CONNECT_ATTEMPTS = 3

#: Seconds at most between two tries of a request waiting for a slot shared through Redis
#: (releases wake the waiters at once; this covers a wake lost on the way).
SHARED_POLL_SECONDS = 0.25


@dataclass
class Endpoint:
    """One configured upstream endpoint and what discovery knows of it."""

    url: str
    kind: str                    # "ollama" | "openai" | "llama_server"
    base_url: str                # the OpenAI-compatible base, ending in /v1
    native: bool                 # serves /v1/responses itself (OpenAI)
    api_key: str | None = None
    models: set[str] = field(default_factory=set)
    loaded: set[str] = field(default_factory=set)
    reachable: bool | None = None
    last_error: str | None = None
    refreshed_at: float = 0.0

    def name_for(self, model: str) -> str | None:
        """The name this endpoint knows ``model`` by, or None. Ollama's ``:latest`` is implied."""
        if model in self.models:
            return model
        if self.kind == "ollama" and ":" not in model and f"{model}:latest" in self.models:
            return f"{model}:latest"
        if self.kind != "ollama" and model.endswith(":latest") and model[:-7] in self.models:
            return model[:-7]
        return None


def _endpoint_from_config(url: str, kind: str, settings: Settings) -> Endpoint:
    base = url if url.endswith("/v1") else f"{url}/v1"
    if kind == "ollama" and url.endswith("/v1"):
        kind = "openai"
    host = urlsplit(url).hostname or ""
    native = host == "api.openai.com" or url in settings.native_responses_endpoints
    key = settings.api_keys.get(url) or settings.api_keys.get(base) or None
    return Endpoint(url=url, kind=kind, base_url=base, native=native, api_key=key)


def _model_names(ep: Endpoint, listing: Any, key: str, fields: tuple[str, ...]) -> set[str]:
    """The model names of a discovery answer (``listing[key]``, each entry's first non-empty
    ``fields`` string). Entries that are not so are skipped, and logged."""
    entries = listing.get(key) if isinstance(listing, dict) else None
    names: set[str] = set()
    for entry in entries if isinstance(entries, list) else ():
        name = next((entry[f] for f in fields if isinstance(entry, dict) and isinstance(entry.get(f), str)
                     and entry[f]), None)
        if name is None:
            log.warning("skipping a model entry of %s that has no name: %.200r", ep.url, entry)
        else:
            names.add(name)
    return names


def _endpoints_of(settings: Settings) -> dict[str, Endpoint]:
    endpoints = {url: _endpoint_from_config(url, "ollama", settings) for url in settings.endpoints}
    endpoints.update((url, _endpoint_from_config(url, "llama_server", settings))
                     for url in settings.llama_server_endpoints)
    return endpoints


class Registry:
    """The endpoints, their discovered models, usage counters and pooled clients.

    ``usage`` counts this replica's own requests in flight by (endpoint, model name there);
    with ``redis_url``, from :meth:`start` on, ``slots`` holds the slots all replicas share
    and routing ranks endpoints by their load over every replica.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self.endpoints: dict[str, Endpoint] = _endpoints_of(settings)
        self._retired: list[Any] = []
        self.usage: dict[tuple[str, str], int] = {}
        #: The slots shared with the other replicas (``redis_url``), from :meth:`start` on.
        self.slots: SharedSlots | None = None
        #: Requests waiting for a slot now, by model asked.
        self.queued: dict[str, int] = {}
        self._clients: dict[str, openai.AsyncOpenAI] = {}
        self._slot_freed = asyncio.Condition()
        #: Counts the wake-ups of shared-slot waiters; ``_full_seen[pairs]`` is the count at which a
        #: waiter for those candidates last found them all full, so the others woken by the same
        #: release do not all ask Redis again (one asks per release, or per poll, and set of pairs).
        self._wakes = 0
        self._full_seen: dict[tuple, tuple[int, float]] = {}
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(settings.connect_timeout * 2,
                                                             connect=settings.connect_timeout))
        self._refresher: asyncio.Task | None = None
        self._refreshing: asyncio.Task | None = None

    @property
    def http(self) -> httpx.AsyncClient:
        """The pooled HTTP client the gateway's own calls to endpoints use (discovery, tokenizing)."""
        return self._http

    # discovery ---------------------------------------------------------------
    async def _get_json(self, ep: Endpoint, url: str) -> Any:
        headers = {"Authorization": f"Bearer {ep.api_key}"} if ep.api_key else {}
        reply = await self._http.get(url, headers=headers)
        reply.raise_for_status()
        return orjson.loads(reply.content)

    async def refresh_endpoint(self, ep: Endpoint) -> None:
        """Ask ``ep`` which models it serves (Ollama ``/api/tags`` + ``/api/ps``,
        else ``/v1/models``); record reachability. The whole exchange is bounded by
        ``connect_timeout``: an endpoint that accepts connections and never answers
        holds nobody up longer. Never raises."""
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                await self._discover(ep)
            ep.reachable, ep.last_error = True, None
        except TimeoutError:
            ep.reachable = False
            ep.last_error = f"no answer within connect_timeout ({self.settings.connect_timeout:g} s)"
        except Exception as exc:  # any failure only marks the endpoint down
            ep.reachable, ep.last_error = False, f"{type(exc).__name__}: {exc}"
        ep.refreshed_at = time.monotonic()

    async def _discover(self, ep: Endpoint) -> None:
        if ep.kind == "ollama":
            tags, ps = await asyncio.gather(self._get_json(ep, f"{ep.url}/api/tags"),
                                            self._get_json(ep, f"{ep.url}/api/ps"))
            ep.models = _model_names(ep, tags, "models", ("name", "model"))
            ep.loaded = _model_names(ep, ps, "models", ("name", "model"))
        else:
            ep.models = _model_names(ep, await self._get_json(ep, f"{ep.base_url}/models"), "data", ("id",))
            ep.loaded = set(ep.models)

    async def refresh_all(self) -> None:
        """Refresh every endpoint concurrently; concurrent callers share one refresh."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(
                asyncio.gather(*(self.refresh_endpoint(ep) for ep in self.endpoints.values())))
        await asyncio.shield(self._refreshing)

    async def start(self) -> None:
        """Share the slots through ``redis_url`` when set (leases of ``replica_lease`` s; an
        unreachable Redis is logged, not raised: requests get 503 ``slots_unavailable`` until it
        is back), run a first discovery (each endpoint bounded by ``connect_timeout``) and start
        the refresher."""
        if self.settings.redis_url and self.slots is None:
            self.slots = SharedSlots(self.settings.redis_url, self.settings.replica_lease, wake=self._wake)
            await self.slots.start()
        await self.refresh_all()
        self._refresher = asyncio.create_task(self._refresh_forever())

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.discovery_ttl)
            await self.refresh_all()

    async def reconfigure(self, settings: Settings) -> None:
        """Take new ``settings`` (a reload): endpoints added are discovered, endpoints removed
        take no new requests (those in flight finish), changed ones get new clients; limits and
        timeouts apply to requests from now on (``redis_url`` waits for a restart)."""
        fresh = _endpoints_of(settings)
        for url, ep in fresh.items():
            old = self.endpoints.get(url)
            if old is not None and (old.kind, old.base_url, old.native, old.api_key) == \
                    (ep.kind, ep.base_url, ep.native, ep.api_key):
                fresh[url] = old
        timeouts = (settings.connect_timeout, settings.request_timeout)
        same_timeouts = timeouts == (self.settings.connect_timeout, self.settings.request_timeout)
        kept = {url for url, ep in fresh.items() if ep is self.endpoints.get(url) and same_timeouts}
        for url in set(self._clients) - kept:
            self._retired.append(self._clients.pop(url))  # may still be in use: closed with the registry
        self.settings, self.endpoints = settings, fresh
        await self._wake()  # a larger max_concurrent_connections frees waiters
        await self.refresh_all()

    async def close(self) -> None:
        """Stop the refresher, give the shared slots this replica holds back, close every pooled client."""
        if self._refresher is not None:
            self._refresher.cancel()
        if self.slots is not None:
            slots, self.slots = self.slots, None
            await slots.close()
        await self._http.aclose()
        for client in [*self._clients.values(), *self._retired]:
            await client.close()

    # routing -----------------------------------------------------------------
    def candidates(self, model: str, exclude: tuple | set = ()) -> list[tuple[Endpoint, str]]:
        """``(endpoint, name at endpoint)`` for every endpoint serving ``model``."""
        out = []
        for ep in self.endpoints.values():
            if ep.url in exclude:
                continue
            name = ep.name_for(model)
            if name is not None:
                out.append((ep, name))
        return out

    async def find(self, model: str, exclude: tuple | set = ()) -> list[tuple[Endpoint, str]]:
        """:meth:`candidates` for ``model``; when there are none, discovery runs once more first
        (unless it ran within the last second): a model pulled since is found."""
        cands = self.candidates(model, exclude)
        if not cands and time.monotonic() - min(
                (ep.refreshed_at for ep in self.endpoints.values()), default=0) > 1.0:
            await self.refresh_all()
            cands = self.candidates(model, exclude)
        return cands


    async def serves_by_chat(self, model: str) -> bool:
        """Whether ``model``'s first endpoint speaks Chat Completions (not an upstream Responses API),
        so the gateway itself runs what OpenAI would (compaction, hosted MCP tools). False when no
        endpoint serves it: the turn then goes the usual way, to its 404."""
        candidates = await self.find(model)
        return bool(candidates) and not candidates[0][0].native
    def has_native_endpoints(self) -> bool:
        """Whether any endpoint is served natively (an upstream Responses API)."""
        return any(ep.native for ep in self.endpoints.values())

    def models(self) -> list[str]:
        """Every model name served by a reachable endpoint, and every ``model_aliases`` name
        whose model is, sorted."""
        reachable = [ep for ep in self.endpoints.values() if ep.reachable is not False]
        names = {m for ep in reachable for m in ep.models}
        names.update(alias for alias, target in self.settings.model_aliases.items()
                     if any(ep.name_for(target) for ep in reachable))
        return sorted(names)

    async def choose(self, model: str, exclude: tuple | set = ()) -> tuple[str, str]:
        """Pick an endpoint for ``model`` and take one usage slot there.

        Returns ``(endpoint url, model name at that endpoint)``; the caller gives
        the slot back with :meth:`release`. Prefers reachable, then loaded, then
        least busy endpoints (busy over all replicas when the slots are shared);
        waits up to ``queue_timeout`` seconds for a slot.
        Raises APIError 404 ``model_not_found``, 502 ``backend_unavailable`` when no
        endpoint can be reached at all, 429 ``all_endpoints_busy``, or 503
        ``slots_unavailable`` when the shared slots' Redis cannot be asked.
        """
        cands = await self.find(model, exclude)
        if not cands:
            if exclude and self.candidates(model):
                raise APIError(502, f"No reachable backend serves model '{model}'.",
                               code="backend_unavailable")
            down = [ep for ep in self.endpoints.values() if ep.reachable is False]
            if self.endpoints and len(down) == len(self.endpoints):  # nobody to ask: not "no such model"
                causes = "; ".join(f"{ep.url}: {ep.last_error}" for ep in down)
                raise APIError(502, f"No backend can be reached to serve model '{model}' ({causes}).",
                               code="backend_unavailable", type="server_error")
            raise APIError(404, f"The model '{model}' does not exist or is not served by any endpoint.",
                           param="model", code="model_not_found")
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.settings.queue_timeout
        if self.slots is not None:
            key = await self._take_shared(cands)
            if key is None:
                with self._waiting(model):
                    key = await self._wait_for_shared(cands, model, deadline)
        else:
            async with self._slot_freed:
                key = self._free_slot(cands)
                if key is None:
                    with self._waiting(model):
                        key = await self._wait_for_slot(cands, model, deadline)
        QUEUE_SECONDS.labels(model).observe(loop.time() - started)
        return key

    @contextmanager
    def _waiting(self, model: str) -> Iterator[None]:
        """Count one more request waiting for a slot of ``model`` in ``queued`` meanwhile."""
        self.queued[model] = self.queued.get(model, 0) + 1
        try:
            yield
        finally:
            self.queued[model] -= 1
            if not self.queued[model]:
                del self.queued[model]

    @staticmethod
    def _all_busy(model: str) -> APIError:
        return APIError(429, f"Every endpoint serving '{model}' is at its concurrency limit.",
                        code="all_endpoints_busy", type="rate_limit_error")

    def _free_slot(self, cands: list[tuple[Endpoint, str]]) -> tuple[str, str] | None:
        """Take a slot on the best candidate with one free (reachable, loaded, least busy
        first); None when all are at ``max_concurrent_connections``. Holds ``_slot_freed``."""
        limit, usage = self.settings.max_concurrent_connections, self.usage
        best = None
        for order, (ep, name) in enumerate(cands):
            used = usage.get((ep.url, name), 0)
            if used >= limit:
                continue
            rank = (ep.reachable is False, name not in ep.loaded, used, order)
            if best is None or rank < best[0]:
                best = (rank, ep.url, name)
        if best is None:
            return None
        key = (best[1], best[2])
        usage[key] = usage.get(key, 0) + 1
        return key

    async def _wait_for_slot(self, cands: list[tuple[Endpoint, str]], model: str, deadline: float) -> tuple[str, str]:
        """Wait (holding ``_slot_freed``) until a slot frees, until the loop time ``deadline``;
        raises APIError 429 ``all_endpoints_busy`` then."""
        loop = asyncio.get_running_loop()
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise self._all_busy(model)
            try:
                async with asyncio.timeout(remaining):
                    await self._slot_freed.wait()
            except TimeoutError:
                pass
            except asyncio.CancelledError:
                self._slot_freed.notify()  # pass a wake-up this waiter may have taken on
                raise
            key = self._free_slot(cands)
            if key is not None:
                return key

    async def _take_shared(self, cands: list[tuple[Endpoint, str]]) -> tuple[str, str] | None:
        """Take a slot shared with the other replicas on the best candidate with one free
        (reachable, loaded, least busy over all replicas first), trying the next when another
        replica took the last one first; None when all are full. Raises APIError 503
        ``slots_unavailable`` when Redis cannot be asked (never taken for a free slot)."""
        slots, limit = self.slots, self.settings.max_concurrent_connections
        pairs = [(ep.url, name) for ep, name in cands]
        try:  # one candidate needs no ranking: the acquire alone says whether it has room
            used = await slots.counts(pairs) if len(pairs) > 1 else {pairs[0]: 0}
            ranked = sorted(((ep.reachable is False, name not in ep.loaded, used[pair], order), pair)
                            for order, ((ep, name), pair) in enumerate(zip(cands, pairs)) if used[pair] < limit)
            for _, pair in ranked:
                if await slots.acquire(pair, limit) is not None:
                    self.usage[pair] = self.usage.get(pair, 0) + 1
                    return pair
        except SlotsUnavailable as exc:
            raise APIError(503, f"The concurrency slots the replicas share are unavailable: {exc}",
                           code="slots_unavailable", type="server_error") from exc
        return None

    async def _wait_for_shared(self, cands: list[tuple[Endpoint, str]], model: str,
                               deadline: float) -> tuple[str, str]:
        """Wait for a shared slot until the loop time ``deadline``, trying again whenever a slot
        is released on this replica or another (the wake through Redis), and at least every
        :data:`SHARED_POLL_SECONDS`; raises APIError 429 ``all_endpoints_busy`` then (503
        ``slots_unavailable`` as :meth:`_take_shared`)."""
        loop = asyncio.get_running_loop()
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise self._all_busy(model)
            woken = True
            async with self._slot_freed:  # every wake is a notify_all: none to pass on when cancelled
                try:
                    async with asyncio.timeout(min(remaining, SHARED_POLL_SECONDS)):
                        await self._slot_freed.wait()
                except TimeoutError:
                    woken = False
            pairs = tuple((ep.url, name) for ep, name in cands)
            seen, asked_at = self._full_seen.get(pairs, (-1, 0.0))
            if seen == self._wakes and (woken or loop.time() - asked_at < SHARED_POLL_SECONDS):
                continue  # another waiter for these found them all full since the last release
            wakes, asked_at = self._wakes, loop.time()
            key = await self._take_shared(cands)
            if key is not None:
                return key
            if wakes >= self._full_seen.get(pairs, (-1, 0.0))[0]:
                self._full_seen[pairs] = (wakes, asked_at)

    async def _wake(self) -> None:
        """Wake every waiter of this replica (a slot freed here, on another replica, or by a reload)."""
        self._wakes += 1
        async with self._slot_freed:
            self._slot_freed.notify_all()

    async def release(self, endpoint: str, model: str) -> None:
        """Give a usage slot back and wake the waiters (those of every model: each checks
        whether the freed slot is one it can use). Never goes below zero. With shared slots,
        one of this replica's tokens of the pair is given back too (the other replicas'
        waiters are woken through Redis; a Redis error is logged, the lease then frees it)."""
        key = (endpoint, model)
        left = self.usage.get(key, 0) - 1
        if left > 0:
            self.usage[key] = left
        else:
            self.usage.pop(key, None)
        if self.slots is not None:
            await self.slots.release(key, limit=self.settings.max_concurrent_connections)
        await self._wake()

    def mark_unreachable(self, endpoint: str, detail: str) -> None:
        """Record a failed connection so routing prefers other endpoints until rediscovery."""
        ep = self.endpoints.get(endpoint)
        if ep is not None:
            ep.reachable, ep.last_error = False, detail

    # clients -----------------------------------------------------------------
    def forwarder(self, endpoint: str) -> ChatClient:
        """The pooled :class:`ChatClient` of ``endpoint`` for the OpenAI routes passed through as
        they are (``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``): the
        endpoint's own client, or for a native endpoint one of its own beside the SDK's."""
        ep = self.endpoints.get(endpoint)
        if ep is None or not ep.native:
            return self.client(endpoint)
        return self.client(endpoint, chat=True)

    def client(self, endpoint: str, *, chat: bool = False) -> ChatClient | openai.AsyncOpenAI:
        """The one pooled client of ``endpoint`` (made on first use): an ``openai.AsyncOpenAI``
        for a native endpoint (an upstream Responses API), else (or with ``chat``) a :class:`ChatClient`."""
        name = f"{endpoint} chat" if chat else endpoint
        client = self._clients.get(name)
        if client is None:
            ep = self.endpoints.get(endpoint)
            base = ep.base_url if ep else endpoint
            key = ep.api_key if ep else None
            # Keep-alive for at least as many connections as may be in flight to one
            # endpoint, so a busy endpoint's connections are reused, not reopened.
            keepalive = max(100, 4 * self.settings.max_concurrent_connections)
            if ep is not None and ep.native and not chat:
                client = openai.AsyncOpenAI(
                    base_url=base, api_key=key or "nomyo-router", max_retries=0,
                    timeout=openai.Timeout(self.settings.request_timeout, connect=self.settings.connect_timeout),
                    http_client=openai.DefaultAsyncHttpxClient(limits=httpx2.Limits(
                        max_connections=max(1000, keepalive), max_keepalive_connections=keepalive,
                        keepalive_expiry=KEEPALIVE_EXPIRY)))
            else:
                client = ChatClient(base, key, connect_timeout=self.settings.connect_timeout,
                                    read_timeout=self.settings.request_timeout,
                                    max_connections=max(1000, keepalive),
                                    max_answer_bytes=self.settings.max_upstream_bytes)
            self._clients[name] = client
        return client


# ── the backend functions a turn is run with (``engine.upstream.BackendCalls``) ──

async def choose_endpoint(registry: Registry, model: str, exclude: tuple | set = ()) -> tuple[str, str]:
    """``(endpoint, model name at endpoint)`` with one usage slot taken; see :meth:`Registry.choose`."""
    return await registry.choose(model, exclude)


async def decrement_usage(registry: Registry, endpoint: str, model: str) -> None:
    """Give one usage slot of ``(endpoint, model)`` back."""
    await registry.release(endpoint, model)


def is_ext_openai_endpoint(registry: Registry, endpoint: str) -> bool:
    """True when ``endpoint`` is OpenAI itself (or listed in ``native_responses_endpoints``):
    requests go to its ``/v1/responses`` natively instead of being translated."""
    ep = registry.endpoints.get(endpoint)
    return bool(ep and ep.native)


def _make_openai_client(registry: Registry, endpoint: str) -> openai.AsyncOpenAI:
    """The pooled ``openai.AsyncOpenAI`` of ``endpoint``, reused for the life of the process."""
    return registry.client(endpoint)


# ── Chat Completions calls ─────────────────────────────────────────────────────

async def create_chat_with_retries(client: ChatClient, params: dict) -> dict | ChatStream:
    """Call Chat Completions on ``client``; retry what is safe to retry.

    ``params`` is the request body (``messages``, ``model``, ``stream``...), sent
    as orjson bytes. Returns the completion as a plain dict, or a
    :class:`ChatStream` of chunk dicts when ``params["stream"]``. Retries a
    connection that failed before any answer (up to :data:`CONNECT_ATTEMPTS` in
    all); what a model refuses (tools, images) is the turn engine's to handle.
    Raises :class:`BackendUnavailable` (502), :class:`BackendTimeout` (504) or
    :class:`APIError` with the upstream's own status and message.
    """
    connect_attempts = CONNECT_ATTEMPTS
    while True:
        try:
            return await client.post(orjson.dumps(params), stream=bool(params.get("stream")))
        except ConnectFailed as exc:
            connect_attempts -= 1
            if connect_attempts > 0:
                continue
            raise BackendUnavailable(client.base_url, exc.detail) from exc


def backend_error(client: openai.AsyncOpenAI, exc: openai.APIError) -> APIError:
    """The gateway's error for a failed call through the ``openai`` SDK (the native path):
    :class:`BackendTimeout`, :class:`BackendUnavailable`, or the upstream's own status,
    message, type and code."""
    if isinstance(exc, openai.APITimeoutError):
        return BackendTimeout(str(exc))
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc
        return BackendUnavailable(str(client.base_url), f"{type(cause).__name__}: {cause}".rstrip(": "))
    if not isinstance(exc, openai.APIStatusError):
        return APIError(502, f"The backend's answer could not be used: {exc}.", code="bad_upstream_response")
    return upstream_error(exc.status_code, exc.body, exc.message)


async def create_native_response(client: openai.AsyncOpenAI, params: dict) -> Any:
    """Call an upstream Responses API (``responses.create(**params)``) natively.

    Returns the SDK's Response, or its event stream when ``params["stream"]``.
    Raises :class:`BackendUnavailable`, :class:`BackendTimeout` or the upstream's
    own error as :class:`APIError`.
    """
    try:
        return await client.responses.create(**params)
    except openai.APIError as exc:
        raise backend_error(client, exc) from exc


async def compact_native(client: openai.AsyncOpenAI, params: dict) -> Any:
    """Call an upstream Responses API's ``responses.compact(**params)``; its ``CompactedResponse``.
    Raises as :func:`create_native_response` does."""
    try:
        return await client.responses.compact(**params)
    except openai.APIError as exc:
        raise backend_error(client, exc) from exc
