"""Configuration: ``config.yaml`` (path from ``NOMYO_ROUTER_CONFIG_PATH``) plus environment.

Keeps NOMYO Router's keys (every one of its ``Config``: endpoints, llama_server_endpoints,
max_concurrent_connections, api_keys, the router key in all its spellings, db_path and the
cache keys). Environment variables ``NOMYO_ROUTER_<KEY>`` override the file
(``NOMYO_ROUTER_DB_PATH``, ``NOMYO_ROUTER_API_KEY``, ...). ``${NAME}`` in any string of the
file is replaced by the environment variable ``NAME``; one that is not set stops start-up,
except in ``api_keys``, where that endpoint is sent no key (with a warning).
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import os
import re
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict,
                               SettingsError)

__all__ = ["Settings", "ConfigError", "load_settings", "masked", "key_tag", "tenant_tag"]

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: NOMYO Router's spellings of the router key (the first is its sample config's).
ROUTER_KEY_NAMES = ("nomyo-router-api-key", "router_api_key", "NOMYO_ROUTER_API_KEY", "nomyo_router_api_key",
                    "nomyo-router_api_key", "nomyo_router-api_key", "NOMYO-ROUTER_API_KEY")
#: Keys whose ``null`` in the file means something (elsewhere a key left empty means its default).
_NULL_MEANS = frozenset({"cache_ttl"})

log = logging.getLogger("nomyo_router.config")


class ConfigError(RuntimeError):
    """The configuration cannot be used; the message names the key at fault."""


HostedToolPolicy = Literal["drop", "reject"]


class Tenant(BaseModel):
    """One tenant of ``tenants``: the keys it may use (any of them; add or rotate freely)."""

    model_config = ConfigDict(extra="forbid")

    keys: list[str] = Field(min_length=1)

    @field_validator("keys")
    @classmethod
    def _non_empty(cls, keys: list[str]) -> list[str]:
        if not all(isinstance(k, str) and k for k in keys):
            raise ValueError("every key must be a non-empty string")
        return keys


class Settings(BaseSettings):
    """Validated gateway settings. Times are seconds, sizes bytes."""

    model_config = SettingsConfigDict(env_prefix="NOMYO_ROUTER_", extra="forbid",
                                      populate_by_name=True)

    #: Ollama endpoints (``http://host:11434``); one ending in ``/v1`` is taken as any
    #: OpenAI-compatible server (vLLM, ...), and ``https://api.openai.com/v1`` as OpenAI itself.
    endpoints: list[str] = Field(default_factory=lambda: ["http://localhost:11434"])
    #: llama.cpp ``llama-server`` endpoints (``http://host:8080/v1``).
    llama_server_endpoints: list[str] = Field(default_factory=list)
    #: Endpoints that serve the Responses API themselves: requests go to them untranslated.
    native_responses_endpoints: list[str] = Field(default_factory=list)
    #: Requests in flight per endpoint and model; more wait up to ``queue_timeout``.
    max_concurrent_connections: int = Field(1, ge=1)
    #: The key sent to each endpoint that needs one: ``{"https://api.openai.com/v1": "${OPENAI_KEY}"}``.
    #: A ``${VAR}`` that is not set leaves that endpoint without a key (a warning names it).
    api_keys: dict[str, str] = Field(default_factory=dict)
    #: Named tenants and their keys: ``{"team-a": {"keys": ["k1", "k2"]}}``. A tenant's stored
    #: responses belong to its name, so adding or rotating its keys keeps its history.
    tenants: dict[str, Tenant] = Field(default_factory=dict)
    #: The key (or keys) clients must send; each plain key is a tenant of its own. Unset: no
    #: authentication (see ``tenants`` for named tenants).
    #: An empty string written in the file (NOMYO Router's sample: ``""``) also means none, with a
    #: warning; an empty key from ``${VAR}``, the environment or an empty list stops start-up.
    router_api_key: str | list[str] | None = Field(None, validation_alias=AliasChoices(*ROUTER_KEY_NAMES))
    #: The key for /health, /api/usage and /metrics, which show every endpoint and tenant. With
    #: router keys set and no admin key, those routes are refused (403) to every key.
    admin_api_key: str | None = Field(None, min_length=1)
    #: Level of the gateway's log (debug, info, warning, error, critical) and its format:
    #: ``text`` lines or ``json`` objects, one per line, on stderr.
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    log_format: Literal["text", "json"] = "text"
    #: One summary line per request (id, tenant, route, models, endpoint, status, latency, tokens).
    log_requests: bool = True
    #: The response cache, for requests that opt in with ``"nomyo": {"cache": true}``.
    cache_enabled: bool = False
    #: Where cached answers live: in memory, in the SQLite file ``cache_db_path``, or in Redis
    #: (``cache_redis_url``), shared by every replica.
    cache_backend: Literal["memory", "sqlite", "redis"] = "memory"
    #: The Redis of ``cache_backend: redis`` (``redis://host:6379/0``); unset: ``redis_url``.
    cache_redis_url: str | None = None
    #: Seconds a cached answer is served; ``null``: no expiry (until ``cache_max_entries`` pushes it out).
    cache_ttl: float | None = Field(3600, gt=0)
    #: How alike a request must be to a cached one to take its answer: the cosine similarity of
    #: their embeddings (all-MiniLM-L6-v2). ``1.0``: exact match only; below 1 (NOMYO Router
    #: suggests 0.90 to 0.95) needs the ``semantic`` extra and the model package (README, "Response cache").
    cache_similarity: float = Field(1.0, gt=0, le=1)
    #: The share of the earlier conversation in a semantic lookup's query vector (0..1); the last
    #: user message has the rest.
    cache_history_weight: float = Field(0.3, ge=0, le=1)
    #: Cached answers kept (the oldest go first).
    cache_max_entries: int = Field(10_000, ge=1)
    #: The SQLite file of ``cache_backend: sqlite``.
    cache_db_path: str = "./cache.db"
    #: The SQLite response store's file; ``NOMYO_ROUTER_DB_PATH`` overrides it. One process per
    #: SQLite store (``store_url`` with PostgreSQL runs several).
    db_path: str = "./nomyo-router.db"
    #: The response store: ``sqlite:///path`` (unset: ``db_path``) or ``postgresql://user@host/db``,
    #: which replicas share (see the README's scaling section).
    store_url: str | None = None
    #: Redis (``redis://host:6379/0``) for what replicas share fast: the
    #: ``max_concurrent_connections`` slots of every endpoint-model pair (and the cache, unless
    #: ``cache_redis_url`` names another). Unset: each replica counts its own slots.
    redis_url: str | None = None
    #: Seconds a replica on a shared store holds its turns and slots without a heartbeat (it beats
    #: every fifth of this); past it another replica fails its running turns, runs its queued
    #: background responses and gives its slots back.
    replica_lease: float = Field(5, ge=1)
    #: Seconds the backend may stay silent: before its answer starts, and between stream chunks.
    request_timeout: float = Field(600, gt=0)
    #: Seconds one whole upstream call may take, its stream included, however steadily it trickles.
    upstream_deadline: float = Field(1800, gt=0)
    #: Seconds to reach a backend; also bounds each endpoint's model discovery.
    connect_timeout: float = Field(10, gt=0)
    #: Seconds a request waits for a free slot (``max_concurrent_connections``) before a 429.
    queue_timeout: float = Field(300, ge=0)
    #: Seconds between model discoveries of every endpoint.
    discovery_ttl: float = Field(30, ge=1)
    #: The largest request body; past it a 413.
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    #: Seconds a client has to send a request's headers, from connecting or from the request's
    #: first byte; past it the connection is closed (``serve.py``).
    header_timeout: float = Field(10, gt=0)
    #: Seconds a client has to send a whole request body; past it a 408.
    body_timeout: float = Field(60, gt=0)
    #: Seconds open streams and answers get to finish after SIGTERM (``serve.py``); then each
    #: ends with ``error`` + ``response.failed`` (stored failed) and the process exits.
    shutdown_grace: float = Field(10, ge=0)
    #: Open client connections (``serve.py``); past it new connections are closed at once.
    max_connections: int = Field(1024, ge=1)
    #: Seconds an idle client connection is kept open; above the 5 s after which the OpenAI SDKs'
    #: pools drop theirs, so a client never reuses a connection the gateway is closing.
    keep_alive_timeout: float = Field(30, gt=0)
    #: Items one request's ``input`` may have; past it a 400.
    max_input_items: int = Field(4096, ge=1)
    #: What one request may load of its previous_response_id chain, in bytes of item JSON.
    #: Past it (or ``max_chain_items``) the request is a 400, or with ``truncation: "auto"`` the
    #: oldest turns are left out.
    max_chain_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    #: Items one request may load of its chain (see ``max_chain_bytes``).
    max_chain_items: int = Field(10_000, ge=1)
    #: ``Host`` names (and addresses) the gateway answers to; ``"*"``: any. Unset: any when a
    #: router key is set, else only loopback names and the address a client reached (so a web
    #: page cannot drive an unauthenticated gateway through a name of its own: DNS rebinding).
    allowed_hosts: list[str] | None = None
    #: Web origins (``https://app.example``) allowed to call the gateway from a browser (CORS);
    #: ``"*"``: any. A request carrying another ``Origin`` is a 403.
    cors_allowed_origins: list[str] = Field(default_factory=list)
    #: Hosts an ``input_file``'s ``file_url`` may be fetched from for a Chat backend: names
    #: (``files.example.com``, ``*.example.com``), addresses or networks (``10.0.0.0/8``). Empty:
    #: none. An address in a loopback, private, link-local or reserved range is refused unless an
    #: address or network entry here covers it (a name alone never opens one).
    file_url_allowed_hosts: list[str] = Field(default_factory=list)
    #: The largest file one ``file_url`` may bring, in bytes; past it a 400.
    file_url_max_bytes: int = Field(10 * 1024 * 1024, ge=1)
    #: Seconds one ``file_url`` fetch may take, from connecting to its last byte.
    file_url_timeout: float = Field(10, gt=0)
    #: The longest summary a Chat model may write for a compaction (``/v1/responses/compact``,
    #: ``context_management``), in tokens; a summary cut there is used as it is.
    compaction_max_tokens: int = Field(2048, ge=16)
    #: MCP servers an ``mcp`` tool may reach (URL prefixes: ``https://mcp.example.com/``). Empty: none,
    #: and an ``mcp`` tool on a Chat backend is a 400. A name that resolves to a loopback, private or
    #: reserved address is refused unless the prefix names that address itself.
    mcp_allowed_servers: list[str] = Field(default_factory=list)
    #: Seconds one MCP list or call may take, connecting included.
    mcp_timeout: float = Field(30, gt=0)
    #: The longest text one MCP call may return, in bytes; past it the output is cut (and says so).
    mcp_max_output_bytes: int = Field(1024 * 1024, ge=1024)
    #: Seconds a Responses WebSocket may stay open (OpenAI: 60 minutes); then the next request on it
    #: is answered ``websocket_connection_limit_reached`` and the socket is closed.
    websocket_max_age: float = Field(3600, gt=0)
    #: Seconds between the pings a Responses WebSocket is sent; one not answered (its pong) within
    #: ``websocket_ping_timeout`` seconds closes it (a client that vanished).
    websocket_ping_interval: float = Field(20, gt=0)
    websocket_ping_timeout: float = Field(20, gt=0)
    #: Background responses queued or running at once; past it a background create is a 429.
    max_background_jobs: int = Field(256, ge=1)
    #: The largest whole (non-streamed) answer taken from a backend; past it the answer is a 502.
    max_upstream_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    #: Client model names served by other models: ``{"gpt-5.1-codex": "qwen3-coder:30b"}``.
    model_aliases: dict[str, str] = Field(default_factory=dict)
    #: What a translated (Chat) endpoint does with a hosted tool it cannot run (web_search,
    #: file_search, ...): ``drop`` it (not offered upstream; logged once per type) or ``reject``
    #: the request with a 400. One word for every type, or a mapping per type with ``default``.
    hosted_tools: HostedToolPolicy | dict[str, HostedToolPolicy] = "drop"
    #: The secret reasoning ``encrypted_content`` is sealed with (any string). Unset: a key is
    #: made once and kept beside the SQLite store, or in the PostgreSQL store (every replica reads it).
    reasoning_encryption_key: str | None = None

    @field_validator("endpoints", "llama_server_endpoints", "native_responses_endpoints")
    @classmethod
    def _urls(cls, urls: list[str]) -> list[str]:
        out = []
        for url in urls:
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} is not an http(s) URL")
            out.append(url.rstrip("/"))
        return out

    @field_validator("router_api_key")
    @classmethod
    def _keys(cls, value: str | list[str] | None) -> str | list[str] | None:
        if value is None:
            return None
        if value == "" or value == []:
            raise ValueError("the router key is empty (an empty or unset variable, environment override or list); "
                             "to run without authentication leave the key out, or write it as \"\" in the file")
        if isinstance(value, list) and not all(isinstance(k, str) and k for k in value):
            raise ValueError("every key must be a non-empty string")
        return value

    @field_validator("cache_ttl", mode="before")
    @classmethod
    def _no_expiry(cls, value: Any) -> Any:
        # NOMYO_ROUTER_CACHE_TTL=null: the environment's way to say the file's null
        return None if isinstance(value, str) and value.strip().lower() in ("null", "none") else value

    @field_validator("model_aliases")
    @classmethod
    def _aliases(cls, aliases: dict[str, str]) -> dict[str, str]:
        for alias, target in aliases.items():
            if not alias or not isinstance(target, str) or not target:
                raise ValueError(f"alias {alias!r} needs a non-empty model name")
            if target in aliases:
                raise ValueError(f"alias {alias!r} points at another alias, {target!r}")
        return aliases

    @field_validator("store_url")
    @classmethod
    def _store_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError(f"{url!r} is neither sqlite:///path nor postgresql://...")
        return url

    @field_validator("redis_url", "cache_redis_url")
    @classmethod
    def _redis_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"{url!r} is not a redis:// URL")
        return url

    @model_validator(mode="after")
    def _one_owner_per_key(self) -> "Settings":
        self.key_owners  # raises for a key given to two owners
        if self.cache_enabled and self.cache_backend == "redis" and not (self.cache_redis_url or self.redis_url):
            raise ValueError("cache_backend: redis needs cache_redis_url (or redis_url)")
        if self.cache_enabled and self.cache_similarity < 1:
            from embedding import install_hint, missing
            absent = missing()
            if absent:
                raise ValueError(f"cache_similarity {self.cache_similarity} (below 1: matching by meaning) needs the "
                                 f"semantic cache's encoder, which is not installed (missing: {', '.join(absent)}); "
                                 f"install it: {install_hint()}; or set cache_similarity: 1.0 to match exactly")
        return self

    @property
    def store_location(self) -> str:
        """The store's URL: ``store_url``, or ``sqlite:///`` + ``db_path``."""
        return self.store_url or f"sqlite:///{self.db_path}"

    @property
    def cache_redis(self) -> str | None:
        """The Redis URL of the cache: ``cache_redis_url``, else ``redis_url``."""
        return self.cache_redis_url or self.redis_url

    def hosted_tool_policy(self, tool_type: str) -> HostedToolPolicy:
        """``drop`` or ``reject`` for hosted tools of ``tool_type`` on translated endpoints."""
        if isinstance(self.hosted_tools, str):
            return self.hosted_tools
        return self.hosted_tools.get(tool_type) or self.hosted_tools.get("default") or "drop"

    @property
    def router_api_keys(self) -> list[str]:
        """Every key a client may present: the router keys and the tenants' (empty: no authentication)."""
        return list(self.key_owners)

    @cached_property
    def key_owners(self) -> dict[str, str]:
        """Each accepted key and the owner its requests act as: ``tenant:<name>`` for a key of
        ``tenants``; for a plain router key, a hash of the key itself (as stores written before
        tenants existed have it)."""
        owners: dict[str, str] = {}
        plain = [] if self.router_api_key is None else (
            [self.router_api_key] if isinstance(self.router_api_key, str) else list(self.router_api_key))
        for key in plain:
            owners[key] = key_tag(key)
        for name, tenant in self.tenants.items():
            for key in tenant.keys:
                if key in owners and owners[key] != tenant_tag(name):
                    raise ValueError(f"the key of tenant {name!r} is also another tenant's or a router key")
                owners[key] = tenant_tag(name)
        return owners

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                   init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource):
        # The environment overrides the file (which arrives as init arguments).
        return _Environment(settings_cls), init_settings


def _takes_list(annotation: Any) -> bool:
    """Whether a field of ``annotation`` (``list[str]``, ``str | list[str] | None``...) takes a list."""
    return get_origin(annotation) is list or any(_takes_list(arg) for arg in get_args(annotation))


class _Environment(EnvSettingsSource):
    """``NOMYO_ROUTER_<KEY>`` variables. A list key takes JSON or a plain comma list
    (``NOMYO_ROUTER_ENDPOINTS=http://a:11434,http://b:11434``); a mapping key takes JSON."""

    def decode_complex_value(self, field_name: str, field: Any, value: Any) -> Any:
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError:
            if _takes_list(field.annotation):
                return [part.strip() for part in str(value).split(",") if part.strip()]
            raise ValueError(f"NOMYO_ROUTER_{field_name.upper()} must be JSON (a mapping), "
                             f"for example '{{\"key\": \"value\"}}'") from None


def masked(settings: Settings) -> dict:
    """The effective configuration as plain data, every secret (router, tenant, admin and
    endpoint keys, the reasoning key) shown as ``***`` and its last 4 characters."""
    def mask(secret: Any) -> Any:
        if isinstance(secret, list):
            return [mask(s) for s in secret]
        return None if secret is None else "***" + str(secret)[-4:] if len(str(secret)) > 8 else "***"

    data = settings.model_dump(mode="json")
    data["router_api_key"] = mask(data["router_api_key"])
    data["admin_api_key"] = mask(data["admin_api_key"])
    data["reasoning_encryption_key"] = mask(data["reasoning_encryption_key"])
    data["api_keys"] = {url: mask(key) for url, key in data["api_keys"].items()}
    data["tenants"] = {name: {"keys": mask(t["keys"])} for name, t in data["tenants"].items()}
    return data


def key_tag(key: str) -> str:
    """The owner tag of a plain router key: an opaque hash, never the key itself."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def tenant_tag(name: str) -> str:
    """The owner tag of the tenant called ``name``."""
    return f"tenant:{name}"


class _Unset(ConfigError):
    """A ``${NAME}`` of the configuration whose variable is not set."""

    def __init__(self, name: str):
        super().__init__(f"${{{name}}} is used in the configuration but {name} is not set")
        self.name = name


def _variable(match: re.Match) -> str:
    name = match.group(1)
    if name not in os.environ:
        raise _Unset(name)
    return os.environ[name]


def _expand(value: Any) -> Any:
    """``value`` with every ``${NAME}`` replaced by ``$NAME``. Raises ConfigError naming a
    variable that is not set: an unset secret must never read as an empty one."""
    if isinstance(value, str):
        return _ENV_REF.sub(_variable, value)
    if isinstance(value, list):
        return [_expand(v) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    return value


def _expand_upstream_keys(keys: Any) -> Any:
    """``api_keys`` expanded; an endpoint whose key names a variable that is not set is left
    out (it is sent no key), with a warning naming the variable. The gateway's own secrets
    stay strict (:func:`_expand`): an endpoint without its key answers 401 and shows
    unreachable in /health, while a gateway without its key would be open."""
    if not isinstance(keys, dict):
        return _expand(keys)
    out = {}
    for url, key in keys.items():
        try:
            out[url] = _expand(key)
        except _Unset as exc:
            log.warning("api_keys: ${%s} (the key of %s) is not set: that endpoint is sent no key (it will "
                        "likely answer 401 and show unreachable in /health); set %s, or remove the entry",
                        exc.name, url, exc.name)
    return out


def _empty_router_key(data: dict) -> str | None:
    """The spelling of the router key written as a literal empty string in the file (NOMYO
    Router's "leave empty to disable"), taken out of ``data``; None when there is none."""
    for name in ROUTER_KEY_NAMES:
        if data.get(name) == "":
            del data[name]
            return name
    return None


def load_settings(path: str | os.PathLike | None = None) -> Settings:
    """Read and validate the configuration.

    ``path`` defaults to ``NOMYO_ROUTER_CONFIG_PATH`` or ``./config.yaml``; a
    missing default file means all defaults. Raises :class:`ConfigError` naming
    the key at fault.
    """
    explicit = path or os.environ.get("NOMYO_ROUTER_CONFIG_PATH")
    file = Path(explicit or "config.yaml")
    data: Any = {}
    if file.exists():
        try:
            data = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file}: not valid YAML: {exc}") from exc
    elif explicit:
        raise ConfigError(f"config file {file} does not exist (NOMYO_ROUTER_CONFIG_PATH)")
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: the top level must be a mapping of keys")
    data = dict(data)
    empty_key = _empty_router_key(data)
    keys = _expand_upstream_keys(data.pop("api_keys")) if "api_keys" in data else None
    data = _expand(data)
    if keys is not None:
        data["api_keys"] = keys
    try:
        # A key left empty in the file (only comments under it) means its default, but where
        # null has a meaning of its own (cache_ttl: null, no expiry).
        settings = Settings(**{k: v for k, v in data.items() if v is not None or k in _NULL_MEANS})
    except ValidationError as exc:
        problems = "; ".join(_problem(err) for err in exc.errors())
        raise ConfigError(f"{file}: invalid configuration: {problems}") from None
    except SettingsError as exc:
        cause = exc.__cause__ or exc
        raise ConfigError(f"invalid environment override: {cause}") from None
    if empty_key is not None and not settings.key_owners:
        log.warning("%s: %s is empty: authentication is OFF, anyone who reaches the port is served; set it to a "
                    "key (or set NOMYO_ROUTER_API_KEY) to require 'Authorization: Bearer <key>', or remove the line",
                    file, empty_key)
    return settings


def _known_keys() -> list[str]:
    names = []
    for name, field in Settings.model_fields.items():
        names.append(name)
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names += [choice for choice in alias.choices if isinstance(choice, str)]
    return names


def _problem(err: dict) -> str:
    """One validation error as ``key: message``, with a "did you mean" for an unknown key."""
    where = ".".join(str(p) for p in err["loc"])
    if not where:  # a rule over several keys: its message names them
        return str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden" and len(err["loc"]) == 1:
        close = difflib.get_close_matches(str(err["loc"][0]), _known_keys(), n=1, cutoff=0.6)
        if close:
            return f"{where}: not a configuration key (did you mean {close[0]!r}?)"
        return f"{where}: not a configuration key"
    return f"{where}: {err['msg']}"
