"""Child processes (the fake backend, the gateway under uvicorn) and what the OS says of them.

CPU time comes from the process's CPU clock (``clock_gettime`` on the clock id
of another process: nanosecond resolution, every thread, live and exited),
falling back to ``utime + stime`` of ``/proc/<pid>/stat`` (clock ticks).
Memory comes from ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``), in MB (10^6 bytes).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Coroutine

from bench.client import Target, fetch_json

#: The repository root: where ``router.py`` lives and uvicorn is started.
REPO = Path(__file__).resolve().parent.parent
_TICKS = os.sysconf("SC_CLK_TCK")


# ── reading another process ────────────────────────────────────────────────────

def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (all its threads)."""
    try:
        return time.clock_gettime(((~pid) << 3) | 2)  # CPUCLOCK_SCHED of the whole process
    except OSError:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS


def cpu_split(pid: int) -> tuple[float, float]:
    """``(user, system)`` CPU seconds of ``pid`` from ``/proc/<pid>/stat`` (clock-tick resolution)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    return int(fields[11]) / _TICKS, int(fields[12]) / _TICKS


def memory_mb(pid: int) -> dict[str, float]:
    """``{"rss": VmRSS, "hwm": VmHWM}`` of ``pid`` in MB of 10^6 bytes (missing keys when unreadable)."""
    out: dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out["rss" if line.startswith("VmRSS") else "hwm"] = int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return out


def machine_cpu() -> dict[str, float]:
    """Seconds the machine's cores have spent so far (``/proc/stat``, all cores summed):
    ``busy`` (user, nice, system, irq, softirq), ``steal`` (taken by the hypervisor for other
    guests) and ``all`` (every state, idle included); zeros when unreadable."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return {"busy": 0.0, "steal": 0.0, "all": 0.0}
    return {"busy": (sum(fields[:3]) + sum(fields[5:7])) / _TICKS, "steal": sum(fields[7:8]) / _TICKS,
            "all": sum(fields[:8]) / _TICKS}


def machine_load(before: dict[str, float], after: dict[str, float], seconds: float) -> dict:
    """The machine between two :func:`machine_cpu` readings ``seconds`` apart: ``cores_busy``
    (busy CPU seconds per second, every process, this benchmark's own included) and
    ``steal_pct`` (share of the cores' time the hypervisor gave to others); None where unknown."""
    spent = {k: after[k] - before[k] for k in after}
    return {"cores_busy": spent["busy"] / seconds if seconds > 0 and spent["all"] else None,
            "steal_pct": 100.0 * spent["steal"] / spent["all"] if spent["all"] else None}


def reset_peak_rss(pid: int) -> bool:
    """Reset ``VmHWM`` of ``pid`` to its current RSS (``/proc/<pid>/clear_refs``). False if refused."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_fd_limit() -> int:
    """Raise this process's open-file soft limit to its hard limit (children inherit it); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
    return target


# ── child processes ────────────────────────────────────────────────────────────

class Child:
    """A started child process with its log file; :meth:`stop` ends it (SIGTERM, then SIGKILL)."""

    def __init__(self, name: str, proc: subprocess.Popen, log_path: Path):
        self.name = name
        self.proc = proc
        self.log_path = log_path

    @property
    def pid(self) -> int:
        """The process id."""
        return self.proc.pid

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of its output."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the process and wait for it (idempotent)."""
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_backend(workdir: Path, tokens: int, pace_ms: float, port: int = 0, timeout: float = 15.0) -> tuple[Child, int]:
    """Start ``bench.backend``; returns the child and the port it listens on."""
    log_path = workdir / "backend.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "bench.backend", "--port", str(port), "--tokens", str(tokens),
                             "--pace-ms", str(pace_ms)], cwd=REPO, stdout=subprocess.PIPE, stderr=log,
                            text=True)
    child = Child("backend", proc, log_path)
    deadline = time.monotonic() + timeout
    line = ""
    while time.monotonic() < deadline and not line.startswith("READY"):
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
    if not line.startswith("READY"):
        child.stop()
        raise RuntimeError(f"the backend did not start:\n{child.log_tail()}")
    proc.stdout.close()
    return child, int(line.split()[1])


def write_gateway_config(workdir: Path, backend_port: int, settings: dict | None = None,
                         name: str = "gateway") -> tuple[Path, Path]:
    """Write the gateway's YAML config for a backend on ``backend_port``, plus ``settings``
    (more config keys, e.g. ``store_url``); returns (config, SQLite store path). ``name``
    names the files (``<name>.yaml``; the first gateway keeps ``config.yaml``/``store.db``)."""
    first = name == "gateway"
    db = workdir / ("store.db" if first else f"{name}.db")
    config = workdir / ("config.yaml" if first else f"{name}.yaml")
    extra = "".join(f"{key}: {json.dumps(value)}\n" for key, value in (settings or {}).items())
    config.write_text(
        f'endpoints: ["http://127.0.0.1:{backend_port}/v1"]\n'
        "max_concurrent_connections: 1000\n"
        "cache_enabled: true\n"
        "cache_backend: memory\n"
        f"db_path: {db}\n" + extra)
    return config, db


def launch_gateway(workdir: Path, backend_port: int, port: int | None = None, settings: dict | None = None,
                   name: str = "gateway") -> tuple[Child, int]:
    """Start the gateway process as it is run (``serve.py``: uvicorn, 1 worker), without the
    access log, against the backend, with a fresh config (``settings`` added, see
    :func:`write_gateway_config`) and its log in ``<workdir>/<name>.log``. Does not wait:
    :func:`wait_gateway` does. Returns the child and its port."""
    config, db = write_gateway_config(workdir, backend_port, settings, name)
    port = port or free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOMYO_ROUTER_")}
    env.update(NOMYO_ROUTER_CONFIG_PATH=str(config), NOMYO_ROUTER_DB_PATH=str(db), PYTHONUNBUFFERED="1")
    log_path = workdir / f"{name}.log"
    proc = subprocess.Popen([sys.executable, "serve.py", "--host", "127.0.0.1", "--port", str(port),
                             "--no-access-log"],
                            cwd=REPO, env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    return Child(name, proc, log_path), port


async def wait_gateway(child: Child, port: int, timeout: float = 30.0) -> None:
    """Wait until the gateway ``child`` on ``port`` answers ``/v1/models`` with the backend's
    models; stops it and raises RuntimeError with its log tail when it does not in ``timeout`` s."""
    try:
        await _wait_ready(Target(f"http://127.0.0.1:{port}"), child, timeout)
    except BaseException:
        child.stop()
        raise


def start_gateway(workdir: Path, backend_port: int, port: int | None = None,
                  timeout: float = 30.0) -> tuple[Child, int]:
    """Start the gateway as it is run (``serve.py``: uvicorn, 1 worker), without the access log,
    against the backend, with a fresh store.

    Waits until ``/health/live`` answers and the backend's models are known.
    Returns the child and its port. Raises RuntimeError with the log tail on failure.
    """
    child, port = launch_gateway(workdir, backend_port, port)
    wait_started(child, _wait_ready(Target(f"http://127.0.0.1:{port}"), child, timeout))
    return child, port


def wait_started(child: Child, ready: Coroutine[Any, Any, None]) -> None:
    """Run ``ready`` (it returns once ``child`` answers, raises when it cannot); a child that
    did not start is stopped before the error goes on."""
    try:
        asyncio.run(ready)
    except BaseException:
        child.stop()
        raise


async def _wait_ready(target: Target, child: Child, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"the gateway exited:\n{child.log_tail()}")
        status, body = await fetch_json(target, "GET", "/v1/models", timeout=5)
        if status == 200 and b'"bench"' in body:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"the gateway did not become ready in {timeout:g}s:\n{child.log_tail()}")


def make_workdir() -> Path:
    """A fresh temporary directory for configs, the store and logs."""
    return Path(tempfile.mkdtemp(prefix="nomyo-bench-"))
