"""Command line of the benchmark: ``python -m bench [--quick | --tiny] [--out PATH] ...``.

Starts the fake backend (:mod:`bench.backend`) and the gateway (uvicorn, one
worker, a fresh temporary store) as separate processes, runs the phases of
:mod:`bench.suite`, then the PostgreSQL phases of :mod:`bench.replicas` (a
gateway on a fresh PostgreSQL schema beside the SQLite one, then 1..3 replicas on
PostgreSQL + Redis; ``--no-postgres`` skips them), prints the tables and writes
the JSON report to ``bench/results/<timestamp>.json`` (or ``--out``). With
``--target URL`` the same load goes to another endpoint instead of a gateway
started here (the PostgreSQL phases are then skipped). ``--group`` picks the
workload groups (:data:`bench.workloads.GROUPS`): ``responses`` (the default, with
every phase), ``passthrough`` (``/v1/chat/completions`` and ``/api/chat``; no
Responses phases, no PostgreSQL phases) or ``all``.
Exit status: 0 without errors, 1 when any request failed, 2 when setup failed.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from bench.backend import PACED_MODEL, run
from bench.client import Target
from bench.peers import measure_peer, start_litellm
from bench.procs import (REPO, Child, machine_cpu, machine_load, make_workdir, raise_fd_limit, start_backend,
                         start_gateway)
from bench.replicas import DEFAULT_POSTGRES, DEFAULT_REDIS, PostgresPhases
from bench.services import safe_url
from bench.report import count_errors, evaluate, render, write_json
from bench.suite import PRESETS, Context, run_suite
from bench.workloads import GROUPS, workload_keys

RESULTS = Path(__file__).resolve().parent / "results"


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line (see ``python -m bench --help``)."""
    p = argparse.ArgumentParser(prog="python -m bench", description="Benchmark the gateway against its backend.")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="reduced sizes, about a minute")
    mode.add_argument("--tiny", action="store_true", help="a few requests per workload (smoke test)")
    p.add_argument("--out", type=Path, help="JSON report path (default bench/results/<timestamp>.json)")
    p.add_argument("--target", help="benchmark this Responses endpoint (base URL) instead of starting a gateway")
    p.add_argument("--target-pid", type=int, help="pid of the --target process, for its CPU and RSS")
    p.add_argument("--api-key", help="bearer key sent to the gateway/target")
    p.add_argument("--backend-url", help="an already running bench backend for the direct rounds")
    p.add_argument("--backend-pid", type=int, help="pid of --backend-url, for its CPU")
    p.add_argument("--backend-port", type=int, default=0, help="port of the backend started here (0: any)")
    p.add_argument("--gateway-port", type=int, help="port of the gateway started here (default: any)")
    p.add_argument("--no-direct", action="store_true", help="skip the direct backend rounds (with --target)")
    p.add_argument("--model", default="bench", help="model name sent in every request")
    p.add_argument("--paced-model", default=PACED_MODEL, help="model whose streams the backend paces")
    p.add_argument("--group", default="responses", type=_groups, dest="groups",
                   help="workload groups, comma-separated: responses (default; POST /v1/responses and the phases "
                        "built on it), passthrough (POST /v1/chat/completions passed through, POST /api/chat "
                        "translated), or all")
    p.add_argument("--workloads", help="comma-separated workload keys of the groups to run (default: all)")
    g = p.add_argument_group("sizes (override the preset)")
    g.add_argument("--rounds", type=int, help="concurrency-1 rounds per side")
    g.add_argument("--requests", type=int, help="requests per concurrency-1 round")
    g.add_argument("--long-stream-requests", type=int, help="requests per round of the long stream")
    g.add_argument("--warmup", type=int, help="unmeasured requests per side before a workload")
    g.add_argument("--tput-seconds", type=float, help="measurement window of a throughput round")
    g.add_argument("--tput-ramp", type=float, help="seconds of a throughput round before its window opens")
    g.add_argument("--tput-rounds", type=int, help="throughput rounds per side and concurrency")
    g.add_argument("--concurrency", type=_ints, dest="concurrencies", help="throughput concurrencies, e.g. 32,128")
    g.add_argument("--streams", type=int, help="streams held open together")
    g.add_argument("--hold-chunks", type=int, help="chunks of each held stream")
    g.add_argument("--pace-ms", type=float, help="ms between chunks of held streams")
    g.add_argument("--flat-requests", type=int, help="requests of the RSS flatness phase")
    g.add_argument("--flat-warmup", type=int, help="requests before the first RSS sample")
    g.add_argument("--flat-concurrency", type=int)
    g.add_argument("--chain-depths", type=_ints, help="chain depths, e.g. 1,10,100")
    g.add_argument("--stream-chunks", type=_ints, help="short and long stream chunk counts, e.g. 8,256")
    g.add_argument("--replicas", type=_ints, dest="replica_counts",
                   help="PostgreSQL replica counts of the replica throughput phase, e.g. 1,2,3")
    g.add_argument("--replica-concurrency", type=int, help="concurrency of the replica throughput phase")
    pg = p.add_argument_group("PostgreSQL phases (store comparison, replica throughput)")
    pg.add_argument("--postgres", default=DEFAULT_POSTGRES, metavar="URL",
                    help="PostgreSQL server (asyncpg DSN) for a fresh schema, dropped afterwards "
                         f"(default {DEFAULT_POSTGRES})")
    pg.add_argument("--redis", default=DEFAULT_REDIS, metavar="URL",
                    help=f"Redis of the replicas' shared slots (default {DEFAULT_REDIS})")
    pg.add_argument("--no-postgres", action="store_true", help="skip both PostgreSQL phases")
    p.add_argument("--compare-litellm", metavar="LITELLM",
                   help="also measure LiteLLM's proxy (this litellm executable, from its own venv) on the same "
                        "backend, and compare CPU per request")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, store)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p.parse_args(argv)


def _groups(text: str) -> tuple[str, ...]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    if names == ["all"]:
        return tuple(GROUPS)
    unknown = [n for n in names if n not in GROUPS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown group {', '.join(unknown) or repr(text)}; "
                                         f"known: {', '.join(GROUPS)}, all")
    return tuple(g for g in GROUPS if g in names)


def _base(url: str) -> str:
    url = url.rstrip("/")
    return url[:-3] if url.endswith("/v1") else url


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _measure_litellm(command: str, workdir: Path, backend: Target, sizes, model: str, log) -> dict:
    child, target = start_litellm(workdir, command, backend.port)
    log(f"LiteLLM on {target.url} (pid {child.pid})")
    try:
        return {"url": target.url, "pid": child.pid, "workloads": run(measure_peer(target, child.pid, sizes, model, log))}
    finally:
        child.stop()


def _start(args: argparse.Namespace, sizes, workdir: Path, children: list[Child], pg: PostgresPhases,
           log) -> tuple[Target | None, int | None, Target, int | None]:
    """Start the backend, PostgreSQL replica 1 (launched first, so both gateways boot together)
    and the SQLite gateway, as the arguments ask; started children are appended to ``children``.
    Returns ``(backend, backend pid, gateway, gateway pid)``. Raises on failure."""
    backend = None
    backend_pid = args.backend_pid
    if args.backend_url:
        backend = Target(_base(args.backend_url))
    elif not (args.target and args.no_direct):
        child, port = start_backend(workdir, sizes.nonstream_tokens, sizes.pace_ms, args.backend_port)
        children.append(child)
        backend, backend_pid = Target(f"http://127.0.0.1:{port}"), child.pid
        log(f"backend on {backend.url} (pid {child.pid})")
    if args.target:
        return backend, backend_pid, Target(_base(args.target), args.api_key), args.target_pid
    if backend is None:
        raise RuntimeError("no backend for the gateway")
    pg.launch(backend.port)
    child, port = start_gateway(workdir, backend.port, args.gateway_port)
    children.append(child)
    log(f"gateway on http://127.0.0.1:{port} (pid {child.pid}), store in {workdir}")
    pg.wait_first()
    return backend, backend_pid, Target(f"http://127.0.0.1:{port}", args.api_key), child.pid


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    args = parse_args(argv)
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    overrides = {k: getattr(args, k) for k in PRESETS[mode].__dataclass_fields__
                 if getattr(args, k, None) is not None}
    sizes = replace(PRESETS[mode], **overrides)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    only = tuple(k.strip() for k in (args.workloads or "").split(",") if k.strip())
    known = workload_keys(sizes.chain_depths, sizes.stream_chunks, args.groups)
    unknown = [k for k in only if k not in known]
    if unknown:
        print(f"unknown workload {', '.join(unknown)} for --group {','.join(args.groups)}; known: "
              f"{', '.join(known)}", file=sys.stderr)
        return 2
    raise_fd_limit()
    workdir = make_workdir()
    children: list[Child] = []
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    machine0 = machine_cpu()
    pg = PostgresPhases(args.postgres, args.redis, workdir, log,
                        reason="--no-postgres" if args.no_postgres else
                        "--target: the PostgreSQL phases measure gateways started here" if args.target else
                        None if "responses" in args.groups else
                        f"--group {','.join(args.groups)}: the PostgreSQL phases measure the Responses store")
    try:
        backend, backend_pid, gateway, gateway_pid = _start(args, sizes, workdir, children, pg, log)
    except BaseException as exc:
        for child in reversed(children):
            child.stop()
        pg.close()
        if not isinstance(exc, Exception):
            raise
        print(f"setup failed: {exc}", file=sys.stderr)
        return 2
    ctx = Context(gateway=gateway, backend=None if args.no_direct else backend, gateway_pid=gateway_pid,
                  backend_pid=backend_pid, model=args.model, paced_model=args.paced_model,
                  only=only, log=log, groups=args.groups)
    try:
        measured = run(run_suite(ctx, sizes))
        if args.compare_litellm and backend is not None:
            measured["peers"] = {"litellm": _measure_litellm(args.compare_litellm, workdir, backend, sizes,
                                                             args.model, log)}
        measured.update(run(pg.measure(ctx, sizes, measured)))
    except Exception as exc:
        for child in children:
            if not child.alive():
                print(f"the {child.name} exited; its log:\n{child.log_tail()}", file=sys.stderr)
        print(f"the run failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    finally:
        for child in reversed(children):
            child.stop()
        pg.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report = {"meta": {"mode": mode, "started": started.isoformat(timespec="seconds"),
                       "duration_s": time.perf_counter() - t0, "gateway_url": gateway.url,
                       "gateway_pid": gateway_pid, "backend_url": backend.url if backend else None,
                       "backend_pid": backend_pid, "target_mode": bool(args.target), "cpus": os.cpu_count(),
                       "postgres_url": safe_url(args.postgres), "redis_url": safe_url(args.redis),
                       "python": platform.python_version(), "platform": platform.platform(),
                       "git": _git_commit(), "argv": sys.argv[1:] if argv is None else argv,
                       "workdir": str(workdir) if args.keep else None,
                       "machine": machine_load(machine0, machine_cpu(), time.perf_counter() - t0)}}
    report.update(measured)
    report["targets"] = evaluate(report)
    report["errors"] = count_errors(report)
    out = args.out or RESULTS / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    print(render(report))
    print(f"\nJSON report: {write_json(report, out)}")
    return 1 if report["errors"]["total"] else 0


if __name__ == "__main__":
    sys.exit(main())
