"""Shared fixtures: the app over an in-process transport with a fresh store per test."""

from __future__ import annotations

import httpx
import pytest

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


@pytest.fixture
async def client(config_path):
    """An ``httpx.AsyncClient`` over the app, its lifespan run, a fresh temporary store."""
    async with router.app.router.lifespan_context(router.app):
        transport = httpx.ASGITransport(app=router.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            yield http
