"""Peers measured in the same run: LiteLLM's proxy and its Responses bridge.

``python -m bench --compare-litellm PATH`` (PATH: the ``litellm`` command of a
separate virtualenv, ``pip install 'litellm[proxy]'``; never one of this
project's dependencies) starts LiteLLM's proxy with one worker in front of the
same bench backend, its model ``custom_openai/bench`` (a Chat Completions
provider, so ``POST /v1/responses`` goes through LiteLLM's Responses -> Chat
bridge, as the gateway's translated path does), and runs the same
concurrency-1 CPU rounds against it as against the gateway.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import time
from pathlib import Path

import orjson

from bench.client import Target, fetch_json
from bench.procs import Child, free_port, wait_started
from bench.suite import Context, Runner, Sizes
from bench.workloads import basic_workloads

__all__ = ["start_litellm", "measure_peer", "PEER_WORKLOADS"]

#: The workloads a peer is measured on: a plain non-streamed request, not stored.
PEER_WORKLOADS = ("nonstream_store_false",)


def _litellm_config(workdir: Path, backend_port: int) -> Path:
    path = workdir / "litellm.yaml"
    path.write_text("model_list:\n"
                    "  - model_name: bench\n"
                    "    litellm_params:\n"
                    "      model: custom_openai/bench\n"
                    f"      api_base: http://127.0.0.1:{backend_port}/v1\n"
                    "      api_key: none\n"
                    "litellm_settings:\n"
                    "  telemetry: false\n")
    return path


def start_litellm(workdir: Path, command: str, backend_port: int, timeout: float = 120.0
                  ) -> tuple[Child, Target]:
    """Start LiteLLM's proxy (``command``: its ``litellm`` executable) on a free port in front of
    the bench backend; wait until ``POST /v1/responses`` answers. Returns the child and its target
    (with the proxy's generated master key). Raises RuntimeError with the log tail on failure."""
    port = free_port()
    key = "sk-bench-" + secrets.token_hex(16)
    env = {**os.environ, "LITELLM_MASTER_KEY": key, "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False"}
    log_path = workdir / "litellm.log"
    proc = subprocess.Popen([command, "--config", str(_litellm_config(workdir, backend_port)), "--host",
                             "127.0.0.1", "--port", str(port), "--num_workers", "1"],
                            cwd=workdir, env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    child = Child("litellm", proc, log_path)
    target = Target(f"http://127.0.0.1:{port}", key)
    wait_started(child, _wait_answering(target, child, timeout))
    return child, target


async def _wait_answering(target: Target, child: Child, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    body = orjson.dumps({"model": "bench", "input": "hi", "store": False})
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"LiteLLM exited:\n{child.log_tail()}")
        try:
            status, _ = await fetch_json(target, "POST", "/v1/responses", body, timeout=10)
        except OSError:
            status = None
        if status == 200:
            return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"LiteLLM did not answer in {timeout:g}s:\n{child.log_tail()}")


async def measure_peer(target: Target, pid: int, sizes: Sizes, model: str, log) -> dict:
    """The concurrency-1 rounds of :data:`PEER_WORKLOADS` against ``target`` (no direct rounds):
    ``{workload key: latency summary}`` as :meth:`bench.suite.Runner.latency` gives it."""
    ctx = Context(gateway=target, backend=None, gateway_pid=pid, backend_pid=None, model=model, log=log)
    runner = Runner(ctx, sizes)
    workloads = {w.key: w for w in basic_workloads(model, sizes.nonstream_tokens, sizes.stream_chunks,
                                                   sizes.long_stream_requests)}
    out = {}
    for key in PEER_WORKLOADS:
        log(f"peer latency/CPU rounds: {workloads[key].label} ...")
        out[key] = await runner.latency(workloads[key])
    return out
