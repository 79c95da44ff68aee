"""Fixtures of the reliability tests: Ollama-protocol backends, the app in-process
(5xx answered, not raised) and the gateway under real uvicorn."""

from __future__ import annotations

import time
from contextlib import asynccontextmanager

import httpx
import pytest
import yaml

import router
from tests.e2e.ollama_server import OllamaTestServer


@asynccontextmanager
async def app_client(config_path, headers: dict | None = None, **settings):
    """Run the app's lifespan with ``settings`` merged into the config at ``config_path``
    and yield an ``httpx.AsyncClient`` over it. Unhandled errors come back as 500s."""
    data = yaml.safe_load(config_path.read_text())
    data.update(settings)
    config_path.write_text(yaml.safe_dump(data))
    async with router.app.router.lifespan_context(router.app):
        transport = httpx.ASGITransport(app=router.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway",
                                     headers=headers or {}, timeout=30) as http:
            yield http


@pytest.fixture
def app_factory(config_path):
    """``async with app_factory(headers=None, **settings) as http``: the in-process app."""
    return lambda headers=None, **settings: app_client(config_path, headers, **settings)


@pytest.fixture(scope="session")
def _shared_ollama():
    with OllamaTestServer(models=["tiny:latest"], loaded=["tiny:latest"]) as server:
        yield server


@pytest.fixture
def ollama(_shared_ollama):
    """An Ollama-protocol server serving ``tiny:latest`` (loaded), shared by the session:
    requests of earlier tests are waited for, then knobs and counters are reset."""
    server = _shared_ollama
    deadline = time.monotonic() + 10
    while server.in_flight and time.monotonic() < deadline:
        time.sleep(0.02)
    server.chunk_delay = server.first_byte_delay = 0.0
    server.fail_status = server.fail_count = server.drop_after_chunks = None
    server.models, server.loaded = ["tiny:latest"], ["tiny:latest"]
    server.reset()
    return server
