"""The LLM cache on the routes passed through to an endpoint: NOMYO Router's cached routes,
OpenAI's ``/v1/chat/completions`` and ``/v1/completions`` (``engine.passthrough_cache``) and
Ollama's ``/api/chat`` and ``/api/generate`` (``engine.ollama_api``).

NOMYO Router's opt-in: a request body with ``"nomyo": {"cache": true}`` (and ``cache_enabled``)
is answered from the cache when it holds an answer for the same route, model, messages,
answer-changing options and tenant; ``nomyo`` itself never goes upstream, and anything else in
it is a 400. What a route caches, and how a hit is served, is its own module's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Awaitable, Callable

import orjson

from errors import APIError

if TYPE_CHECKING:
    from engine.gateway import Gateway

__all__ = ["cache_asked", "Lookup", "lookup"]


def cache_asked(body: dict, route: str, cached: bool) -> bool:
    """Whether ``body`` asks for the cache: its ``nomyo`` field, which must be ``{"cache": bool}``.

    Raises APIError 400 (``param="nomyo"``) for anything else in it, or for ``cache: true`` on a
    ``route`` (``"/v1/embeddings"``) that is not ``cached``."""
    extra = body.get("nomyo")
    if extra is None:
        return False
    if not isinstance(extra, dict) or set(extra) - {"cache"} or not isinstance(extra.get("cache", False), bool):
        raise APIError(400, "'nomyo' takes one field, 'cache': true or false.", param="nomyo", code="invalid_value")
    wanted = extra.get("cache", False)
    if wanted and not cached:
        raise APIError(400, f"POST {route} has no cache; 'nomyo.cache' is for chat and text completions "
                            "(OpenAI's and Ollama's).", param="nomyo.cache", code="invalid_value")
    return wanted


class Lookup:
    """One request's place in the cache: ``hit`` (the cached whole answer, a dict) or None,
    ``asked`` (the cache was looked in), and :meth:`keep` to store the answer of a miss."""

    def __init__(self, hit: dict | None = None, write: Callable[[dict], Awaitable[None]] | None = None,
                 finished: Callable[[dict], bool] | None = None):
        self.hit, self._write, self._finished = hit, write, finished
        self.asked = hit is not None or write is not None
        #: Whether a miss's answer is to be kept (so a stream must be assembled).
        self.keeping = write is not None

    async def keep(self, answer: dict) -> None:
        """Store ``answer`` (a whole answer) if this was a miss and the answer finished."""
        if self._write is not None and (self._finished is None or self._finished(answer)):
            await self._write(answer)


async def lookup(gateway: Gateway, route: str, body: dict, model: str, owner: str | None, *, messages: list,
                 skip: frozenset[str], finished: Callable[[dict], bool], cached: bool = True) -> Lookup:
    """Ask ``gateway.cache`` for ``body`` of ``route`` (``"/v1/chat/completions"``...): the key is
    the route, ``model`` (the gateway's name, aliases resolved), ``messages``, every body field
    not in ``skip``, and the tenant ``owner``. Without a cache, or a request that does not ask,
    nothing is looked up or stored (``nomyo`` is checked all the same, see :func:`cache_asked`).
    ``finished`` says which answers may be kept."""
    cache = gateway.cache
    if not cache_asked(body, route, cached) or cache is None:
        return Lookup()
    options = {key: value for key, value in body.items() if key not in skip}
    if owner is not None:
        options["owner"] = owner
    found = await cache.get_chat(route, model, messages, options)
    if found is not None:
        return Lookup(hit=orjson.loads(found))

    async def write(answer: dict) -> None:
        await cache.set_chat(route, model, messages, orjson.dumps(answer), options)
    return Lookup(write=write, finished=finished)
