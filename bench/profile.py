"""Profile the gateway under one workload: ``python -m bench.profile --workload KEY``.

Starts the bench backend and the gateway like ``python -m bench``, keeps one
workload running at a given concurrency, and samples the gateway with py-spy
(``pip install py-spy``) for ``--seconds``. Writes the collapsed stacks
(``bench/results/profile-<workload>-c<N>-<time>.txt``, which speedscope.app and
flamegraph.pl open) and prints where the samples fall: by function (self and
inclusive) and by package of the innermost frame.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from bench.backend import run
from bench.client import Target
from bench.load import Side, run_requests
from bench.procs import launch_gateway, make_workdir, raise_fd_limit, start_backend, wait_gateway
from bench.report import table
from bench.suite import PRESETS, Context, Runner
from bench.workloads import basic_workloads, chain_workload, passthrough_workloads

RESULTS = Path(__file__).resolve().parent / "results"
#: Top-level files and folders of the gateway itself (the rest is libraries).
GATEWAY_CODE = ("router.py", "preflight.py", "api/", "engine/", "requests/", "backends.py", "chat_client.py", "db.py",
                "db_conversations.py", "db_postgres.py", "db_postgres_conversations.py", "store.py", "slots.py",
                "cache.py", "config.py", "errors.py", "metrics.py")


def parse_stacks(text: str) -> list[tuple[list[str], int]]:
    """Collapsed stacks (``frame;frame;... count`` per line) as ``(frames, samples)``, outermost first."""
    out = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            out.append((stack.split(";"), int(count)))
    return out


def _name(frame: str) -> str:
    """``func (file:line)`` without the line number."""
    head, _, rest = frame.partition(" (")
    return f"{head} ({rest.rsplit(':', 1)[0]})" if rest else frame


def _file(frame: str) -> str:
    return frame.partition(" (")[2].rsplit(":", 1)[0]


def package_of(frame: str) -> str:
    """``gateway`` for the gateway's own files, else the top-level package (``starlette`` ...)."""
    path = _file(frame)
    if path.startswith(GATEWAY_CODE):
        return "gateway:" + path
    top = path.split("/", 1)[0]
    return top[:-3] if top.endswith(".py") else top or "?"


def summarize(stacks: list[tuple[list[str], int]], top: int = 25) -> dict:
    """Sample counts: ``total``, ``self`` and ``inclusive`` per function, ``packages`` (innermost
    frame's package), ``gateway_inclusive`` (the gateway's functions, callees included)."""
    total = sum(n for _, n in stacks)
    self_t: Counter = Counter()
    incl: Counter = Counter()
    pkgs: Counter = Counter()
    gw: Counter = Counter()
    for frames, n in stacks:
        self_t[_name(frames[-1])] += n
        pkgs[package_of(frames[-1])] += n
        seen = set()
        for frame in frames:
            name = _name(frame)
            if name not in seen:
                seen.add(name)
                incl[name] += n
                if package_of(frame).startswith("gateway:"):
                    gw[name] += n
    return {"total": total, "self": self_t.most_common(top), "inclusive": incl.most_common(top),
            "packages": pkgs.most_common(top), "gateway_inclusive": gw.most_common(top)}


def render_summary(summary: dict) -> str:
    """The summary as text tables (percent of all samples)."""
    total = summary["total"] or 1
    out = [f"{summary['total']} samples"]
    for key, title in (("packages", "by package of the innermost frame (self)"),
                       ("self", "by function, self"),
                       ("gateway_inclusive", "gateway functions, inclusive of callees"),
                       ("inclusive", "by function, inclusive")):
        rows = [[name[:110], f"{n * 100 / total:.1f}%"] for name, n in summary[key]]
        out += ["", title, table(["frame", "share"], rows)]
    return "\n".join(out)


async def _profile(ctx: Context, workload: str, concurrency: int, seconds: float, rate: int,
                   raw_path: Path, nonblocking: bool, pyspy: str) -> tuple[dict, str]:
    sizes = PRESETS["quick"]
    runner = Runner(ctx, sizes)
    workloads = {w.key: w for w in basic_workloads(ctx.model, sizes.nonstream_tokens, sizes.stream_chunks, None)
                 + passthrough_workloads(ctx.model, sizes.nonstream_tokens, sizes.stream_chunks, None)}
    if workload.startswith("chain_depth_"):
        depth = int(workload.rsplit("_", 1)[1])
        chain, _ = await runner.build_chain(depth)
        workloads[workload] = chain_workload(ctx.model, depth, chain, sizes.nonstream_tokens)
    if workload not in workloads:
        raise SystemExit(f"unknown workload {workload!r}; known: {', '.join(workloads)} and chain_depth_<n>")
    side: Side = runner.gateway_side(workloads[workload])
    await run_requests(side, concurrency=concurrency, duration=1.0)  # warm-up
    cmd = [pyspy, "record", "--pid", str(ctx.gateway_pid), "--duration", str(int(seconds)), "--rate", str(rate),
           "--format", "raw", "-o", str(raw_path)] + (["--nonblocking"] if nonblocking else [])
    spy = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.DEVNULL,
                                               stderr=asyncio.subprocess.PIPE)
    load = asyncio.ensure_future(run_requests(side, concurrency=concurrency, duration=seconds + 1.5))
    _, err = await spy.communicate()
    tally = await load
    info = {"requests": tally.requests, "errors": tally.errors, "requests_per_s": tally.ok / tally.wall,
            "cpu_ms_per_request": tally.cpu / tally.requests * 1000 if tally.requests and tally.cpu else None}
    if spy.returncode != 0:
        raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-800:]}")
    return info, err.decode(errors="replace")


def main(argv: list[str] | None = None) -> int:
    """Command line; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0])
    p.add_argument("--workload", default="nonstream_store_false",
                   help="workload key (nonstream_store_false, stream_256, chain_depth_100, chat_stream_8, "
                        "ollama_chat_nonstream, ...)")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--blocking", action="store_true",
                   help="let py-spy pause the gateway per sample (more exact stacks, but threads blocked in a "
                        "wait are then counted as busy)")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--store-url", help="the gateway's store_url (postgresql://...; its schema must exist)")
    p.add_argument("--redis-url", help="the gateway's redis_url")
    args = p.parse_args(argv)
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    raise_fd_limit()
    workdir = make_workdir()
    backend, bport = start_backend(workdir, 16, 50.0)
    settings = {key: value for key, value in (("store_url", args.store_url), ("redis_url", args.redis_url)) if value}
    try:
        gateway, gport = launch_gateway(workdir, bport, settings=settings)
        run(wait_gateway(gateway, gport))
    except Exception:
        backend.stop()
        raise
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    raw_path = args.out_dir / f"profile-{args.workload}-c{args.concurrency}-{stamp}.txt"
    ctx = Context(gateway=Target(f"http://127.0.0.1:{gport}"), backend=Target(f"http://127.0.0.1:{bport}"),
                  gateway_pid=gateway.pid, backend_pid=backend.pid)
    try:
        info, _ = run(_profile(ctx, args.workload, args.concurrency, args.seconds, args.rate, raw_path,
                               not args.blocking, pyspy))
    finally:
        gateway.stop()
        backend.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"workload {args.workload} at concurrency {args.concurrency}: {info['requests']} requests, "
          f"{info['errors']} errors, {info['requests_per_s']:.0f} req/s, gateway CPU "
          f"{info['cpu_ms_per_request'] or 0:.3f} ms/request (while sampled)")
    print(render_summary(summarize(parse_stacks(raw_path.read_text()), args.top)))
    print(f"\ncollapsed stacks: {raw_path}")
    return 1 if info["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
