"""Shared fixtures: the app over an in-process transport with a fresh store per test."""

from __future__ import annotations

from contextlib import asynccontextmanager

import httpx
import pytest
import yaml

import router


@pytest.fixture
def config_path(tmp_path, monkeypatch):
    """A config with no endpoints and a store in ``tmp_path``; returns the YAML path."""
    path = tmp_path / "config.yaml"
    path.write_text(f"endpoints: []\ndb_path: {tmp_path / 'store.db'}\n")
    monkeypatch.setenv("NOMYO_ROUTER_CONFIG_PATH", str(path))
    monkeypatch.delenv("NOMYO_ROUTER_DB_PATH", raising=False)
    monkeypatch.delenv("NOMYO_ROUTER_API_KEY", raising=False)
    return path


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
def gateway_factory(config_path):
    """``async with gateway_factory(**settings) as http``: the app with these config keys
    (merged over the temporary store's) and its client."""

    def make(headers: dict | None = None, **settings):
        data = yaml.safe_load(config_path.read_text())
        data.update(settings)
        config_path.write_text(yaml.safe_dump(data))
        return running_app(headers)
    return make
