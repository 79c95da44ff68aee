"""Shared fixtures: the app over an in-process transport with a fresh store per test."""

from __future__ import annotations

import asyncio
import os
import uuid
from contextlib import asynccontextmanager

import httpx
import pytest
import yaml

import router


@pytest.fixture
def config_path(tmp_path, monkeypatch):
    """A config with no endpoints and a store in ``tmp_path`` (with ``NOMYO_TEST_STORE=postgresql``:
    a fresh PostgreSQL schema instead, so a module's tests run on that store); returns the YAML path."""
    path = tmp_path / "config.yaml"
    path.write_text(f"endpoints: []\ndb_path: {tmp_path / 'store.db'}\n")
    monkeypatch.setenv("NOMYO_ROUTER_CONFIG_PATH", str(path))
    monkeypatch.delenv("NOMYO_ROUTER_DB_PATH", raising=False)
    monkeypatch.delenv("NOMYO_ROUTER_API_KEY", raising=False)
    if os.environ.get("NOMYO_TEST_STORE") == "postgresql":
        schema = f"t_{uuid.uuid4().hex[:12]}"
        asyncio.run(_run_sql(f"CREATE SCHEMA {schema}"))
        path.write_text(f"endpoints: []\ndb_path: {tmp_path / 'store.db'}\n"
                        f"store_url: '{POSTGRES}?search_path={schema}'\n")
        yield path
        asyncio.run(_run_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        return
    yield path


async def _run_sql(sql: str) -> None:
    import asyncpg
    conn = await asyncpg.connect(POSTGRES, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@asynccontextmanager
async def running_app(headers: dict | None = None):
    """Run the app's lifespan and yield an ``httpx.AsyncClient`` over it."""
    async with router.app.router.lifespan_context(router.app):
        transport = httpx.ASGITransport(app=router.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway",
                                     headers=headers or {}, timeout=30) as http:
            yield http


@pytest.fixture
async def client(config_path):
    """An ``httpx.AsyncClient`` over the app, its lifespan run, a fresh temporary store."""
    async with running_app() as http:
        yield http


@pytest.fixture
def ollama():
    """An Ollama-protocol server (``tests.e2e.ollama_server``) on 127.0.0.1 serving ``tiny:latest``."""
    from tests.e2e.ollama_server import OllamaTestServer
    with OllamaTestServer(models=["tiny:latest"], loaded=["tiny:latest"]) as server:
        yield server


@pytest.fixture
def gateway_factory(config_path):
    """``async with gateway_factory(**settings) as http``: the app with these config keys
    (merged over the temporary store's) and its client."""

    def make(headers: dict | None = None, **settings):
        data = yaml.safe_load(config_path.read_text())
        data.update(settings)
        config_path.write_text(yaml.safe_dump(data))
        return running_app(headers)
    return make


#: The PostgreSQL server the tests use (trust auth); each test gets a schema of its own there.
POSTGRES = os.environ.get("NOMYO_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
#: The Redis the tests use; each test keeps to keys of its own prefix.
REDIS = os.environ.get("NOMYO_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _unreachable(what: str, exc: BaseException) -> None:
    """Fail (when the tiers must run: ``NOMYO_E2E_REQUIRED``) or skip a test whose server is down."""
    message = f"{what} is not reachable ({type(exc).__name__}: {exc}); start it (see the README's test section)"
    if os.environ.get("NOMYO_E2E_REQUIRED") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
async def redis_db():
    """A client of the test Redis (``REDIS``); fails or skips the test as
    :func:`_unreachable` says when it does not answer."""
    import redis.asyncio as aioredis
    client = aioredis.Redis.from_url(REDIS)
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        _unreachable(f"Redis at {REDIS}", exc)
    yield client
    await client.aclose()


@pytest.fixture
async def redis_prefix(redis_db):
    """A fresh key prefix in the test Redis; its keys are deleted after the test."""
    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    keys = [key async for key in redis_db.scan_iter(match=f"{prefix}*")]
    if keys:
        await redis_db.delete(*keys)


@asynccontextmanager
async def postgres_schema():
    """A ``postgresql://`` URL whose ``search_path`` is a fresh schema, dropped afterwards."""
    import asyncpg
    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        admin = await asyncpg.connect(POSTGRES, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        _unreachable(f"PostgreSQL at {POSTGRES}", exc)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        yield f"{POSTGRES}?search_path={schema}"
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()


@pytest.fixture
async def postgres_url():
    """A fresh schema's URL for the test (see :func:`postgres_schema`)."""
    async with postgres_schema() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
async def any_store(request, tmp_path):
    """An open store of each kind in turn (the same tests prove both), closed after the test."""
    from store import open_store
    if request.param == "sqlite":
        store = await open_store(f"sqlite:///{tmp_path / 's.db'}")
        yield store
        await store.close()
        return
    async with postgres_schema() as url:
        store = await open_store(url)
        yield store
        await store.close()
