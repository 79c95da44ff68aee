"""Fixtures of the end-to-end tier: real llama-server, Ollama-protocol servers and the
gateway under uvicorn, all on 127.0.0.1, driven with the real OpenAI SDK."""

from __future__ import annotations

import os
from pathlib import Path

import openai
import pytest

from tests.e2e.ollama_server import OllamaTestServer
from tests.e2e.processes import GatewayProcess, LlamaServerProcess

LLAMA_MODEL = "tiny-llama"
_CACHE = Path(os.environ.get("NOMYO_LLAMA_CACHE", Path.home() / ".cache" / "nomyo-router"))


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.e2e)


def _llama_paths() -> tuple[str, str]:
    binary = os.environ.get("NOMYO_LLAMA_SERVER") or next(
        (str(p) for p in sorted(_CACHE.glob("llama-server-*/llama-server"))), "")
    model = os.environ.get("NOMYO_TINY_MODEL") or str(_CACHE / "tiny-model.gguf")
    if not (binary and Path(binary).exists() and Path(model).exists()):
        message = ("llama-server or the tiny model is missing: run `bash scripts/test.sh`, which builds "
                   "and generates them")
        if os.environ.get("NOMYO_E2E_REQUIRED"):
            pytest.fail(message)
        pytest.skip(message)
    return binary, model


@pytest.fixture(scope="session")
def llama(tmp_path_factory):
    """llama-server with the tiny scripted model, served as ``tiny-llama``."""
    binary, model = _llama_paths()
    server = LlamaServerProcess(binary, model, tmp_path_factory.mktemp("llama"), alias=LLAMA_MODEL).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ollama():
    """An Ollama-protocol server serving ``tiny:latest``."""
    with OllamaTestServer(models=["tiny:latest"], loaded=["tiny:latest"]) as server:
        yield server


@pytest.fixture(scope="session")
def slow_ollama():
    """An Ollama-protocol server serving ``slow:latest``: 1 s before answering, 0.2 s between chunks."""
    with OllamaTestServer(models=["slow:latest"], loaded=["slow:latest"], chunk_delay=0.2,
                          first_byte_delay=1.0) as server:
        yield server


@pytest.fixture(scope="session")
def gateway(tmp_path_factory, llama, ollama, slow_ollama):
    """The gateway under uvicorn in front of all three backends."""
    proc = GatewayProcess(tmp_path_factory.mktemp("gateway"), endpoints=[ollama.url, slow_ollama.url],
                          llama_server_endpoints=[f"{llama.url}/v1"], max_concurrent_connections=4,
                          compaction_max_tokens=64).start()  # the tiny model's summaries: short, slots free soon
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def oai(gateway):
    """The OpenAI SDK pointed at the gateway."""
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=30) as client:
        yield client
