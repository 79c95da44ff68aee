"""The benchmark's phases, run in order against a gateway and, for reference, the backend direct.

The workload groups of the run (``Context.groups``, see :data:`bench.workloads.GROUPS`)
decide what runs: phases 1, 2's tool loop, 4 and 5 belong to ``responses``; the
``passthrough`` group adds its workloads to phases 2 and 3.

1. warm-up and a ``previous_response_id`` chain built with ``store: true`` requests;
2. per workload, alternating rounds gateway / direct at concurrency 1: CPU per
   request of the gateway (backend for direct rounds), latency, stream timings;
   then a tool loop over the WebSocket and over HTTP/SSE (``bench.tool_loop``);
3. per workload and concurrency: throughput rounds, alternating the same way;
4. many paced streams held open together: the gateway's RSS;
5. RSS flatness over many mixed requests.

:func:`run_suite` returns the report's measurements (a JSON-ready dict).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Callable

import orjson

from bench.backend import PACED_MODEL
from bench.client import Connection, Target, fetch_json
from bench.load import Op, Side, Tally, hold_streams, percentile, rss_flatness, run_requests
from bench.procs import memory_mb, reset_peak_rss
from bench.tool_loop import run_tool_loops
from bench.workloads import (Workload, basic_workloads, chain_turn_prompt, chain_workload, check_response_json,
                             check_responses_stream, passthrough_workloads, responses_body)


@dataclass
class Sizes:
    """How much to run. Counts are requests, times seconds."""

    rounds: int                       # latency rounds per side (alternating gateway/direct)
    requests: int                     # requests per latency round
    long_stream_requests: int         # requests per latency round of the long stream workload
    warmup: int                       # unmeasured requests per side before a workload's rounds
    tput_seconds: float               # measurement window of one throughput round
    tput_ramp: float                  # seconds before the window opens (connections warm, pool filled)
    tput_rounds: int                  # throughput rounds per side and concurrency
    concurrencies: tuple[int, ...]    # throughput concurrencies
    streams: int                      # streams held open together
    hold_chunks: int                  # chunks of each held stream
    pace_ms: float                    # backend pacing of held streams (ms between chunks)
    flat_requests: int                # requests of the RSS flatness phase
    flat_warmup: int                  # requests before its first RSS sample
    flat_concurrency: int
    loop_rounds: int = 5              # tool loops per transport (after one warm-up loop each)
    loop_turns: int = 20              # turns of each tool loop
    chain_depths: tuple[int, ...] = (1, 10, 100)
    nonstream_tokens: int = 16
    stream_chunks: tuple[int, int] = (8, 256)
    timeout: float = 60.0
    replica_counts: tuple[int, ...] = (1, 2, 3)   # PostgreSQL replicas of the replica throughput phase
    replica_concurrency: int = 32     # its concurrency (all replicas together)


PRESETS = {
    "full": Sizes(rounds=3, requests=300, long_stream_requests=100, warmup=30, tput_seconds=2.0, tput_ramp=0.5, tput_rounds=2,
                  concurrencies=(32, 128), streams=500, hold_chunks=50, pace_ms=100.0, flat_requests=20_000,
                  flat_warmup=2_000, flat_concurrency=32),
    "quick": Sizes(rounds=2, requests=60, long_stream_requests=20, warmup=10, tput_seconds=0.6, tput_ramp=0.3, tput_rounds=1,
                   concurrencies=(32, 128), streams=500, hold_chunks=30, pace_ms=100.0, flat_requests=2_000,
                   flat_warmup=200, flat_concurrency=32, loop_rounds=3),
    "tiny": Sizes(rounds=1, requests=3, long_stream_requests=2, warmup=2, tput_seconds=0.2, tput_ramp=0.05, tput_rounds=1,
                  concurrencies=(8, 32), streams=20, hold_chunks=5, pace_ms=20.0, flat_requests=100,
                  flat_warmup=20, flat_concurrency=8, loop_rounds=1, loop_turns=4, replica_counts=(1, 2),
                  replica_concurrency=8),
}


@dataclass
class Context:
    """The processes and targets of a run. ``gateway_pid``/``backend_pid`` None: not measurable.
    ``only``: the workload keys to run (empty: all of ``groups``, keys of :data:`bench.workloads.GROUPS`)."""

    gateway: Target
    backend: Target | None
    gateway_pid: int | None
    backend_pid: int | None
    model: str = "bench"
    paced_model: str = PACED_MODEL
    only: tuple[str, ...] = ()
    log: Callable[..., None] = print
    groups: tuple[str, ...] = ("responses",)
    notes: list[str] = field(default_factory=list)


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1000.0


def _dist(values: list[float]) -> dict:
    """p50/p90/p99/mean/max in milliseconds of ``values`` (seconds)."""
    if not values:
        return {"p50": None, "p90": None, "p99": None, "mean": None, "max": None, "samples": 0}
    return {"p50": _ms(percentile(values, 50)), "p90": _ms(percentile(values, 90)),
            "p99": _ms(percentile(values, 99)), "mean": _ms(sum(values) / len(values)),
            "max": _ms(max(values)), "samples": len(values)}


def _side_summary(tally: Tally, stream: bool) -> dict:
    out = {"requests": tally.requests, "errors": tally.errors, "error_kinds": dict(tally.error_kinds),
           "cpu_ms_per_request": _ms(tally.cpu / tally.requests) if tally.cpu is not None and tally.requests
           else None,
           # the kernel share is read in clock ticks (10 ms): left out below 0.2 s of CPU
           "cpu_sys_share": tally.cpu_sys / tally.cpu if tally.cpu and tally.cpu >= 0.2 and tally.cpu_sys is not None
           else None,
           "latency_ms": _dist(tally.latencies)}
    if stream:
        out["ttft_ms"] = _dist(tally.ttfts)
        out["gap_ms"] = _dist(tally.gaps)
    return out


def _added(gateway: dict, direct: dict | None) -> dict:
    """Gateway minus direct, per percentile (ms), for each timing both sides have."""
    out: dict = {}
    if direct is None:
        return out
    for name in ("latency_ms", "ttft_ms", "gap_ms"):
        if name in gateway and name in direct:
            out[name] = {p: (None if gateway[name][p] is None or direct[name][p] is None
                             else gateway[name][p] - direct[name][p]) for p in ("p50", "p99")}
    return out


class Runner:
    """Runs the phases for one :class:`Context` and :class:`Sizes`."""

    def __init__(self, ctx: Context, sizes: Sizes):
        self.ctx = ctx
        self.sizes = sizes
        self._control: Connection | None = None

    # sides -----------------------------------------------------------------------
    def gateway_side(self, *workloads: Workload) -> Side:
        """The gateway side cycling the requests of ``workloads`` (each to its route)."""
        t = self.ctx.gateway
        return Side("gateway", t, self.ctx.gateway_pid,
                    [Op(t.request("POST", w.route, w.gateway_body), w.gateway_mode, w.gateway_check())
                     for w in workloads])

    def direct_side(self, workload: Workload) -> Side | None:
        """The direct side of ``workload`` (None without a backend)."""
        t = self.ctx.backend
        if t is None:
            return None
        return Side("direct", t, self.ctx.backend_pid,
                    [Op(t.request("POST", "/v1/chat/completions", workload.direct_body), workload.direct_mode,
                        workload.direct_check())])

    async def backend_stats(self) -> dict | None:
        """The bench backend's counters (``chat_requests``, ``connections`` ...), or None when
        there is no bench backend. Asked over one kept-open connection, so asking opens none."""
        if self.ctx.backend is None:
            return None
        if self._control is None or self._control.closed:
            self._control = await self.ctx.backend.connect()
        reply = await self._control.send(self.ctx.backend.request("GET", "/bench/stats"), 0, 10.0)
        if reply.status != 200 or b"chat_requests" not in reply.body:
            return None
        return orjson.loads(reply.body)

    async def gateway_round(self, side: Side, upstream: Counter, **kwargs) -> Tally:
        """:func:`run_requests` on the gateway side, adding to ``upstream`` the chat requests
        and connections the backend saw meanwhile."""
        before = await self.backend_stats()
        tally = await run_requests(side, **kwargs)
        after = await self.backend_stats()
        if before and after:
            upstream["requests"] += after["chat_requests"] - before["chat_requests"]
            upstream["connections"] += after["connections"] - before["connections"]
            upstream["unused_connections"] += after["unused_connections"] - before["unused_connections"]
        return tally

    # phases ----------------------------------------------------------------------
    async def build_chain(self, depth: int) -> tuple[list[tuple[str, str]], Tally]:
        """Store a chain of ``depth`` responses; returns ``(id, output_text)`` per turn and its tally."""
        tally = Tally(timings=False)
        chain: list[tuple[str, str]] = []
        conn = await self.ctx.gateway.connect()
        try:
            for turn in range(1, depth + 1):
                body = responses_body(self.ctx.model, input=chain_turn_prompt(turn), store=True,
                                      tokens=self.sizes.nonstream_tokens,
                                      previous=chain[-1][0] if chain else None)
                reply = await conn.send(self.ctx.gateway.request("POST", "/v1/responses", body), 0,
                                        self.sizes.timeout)
                problem = check_response_json(reply)
                tally.add(reply, problem)
                if problem is not None:
                    raise RuntimeError(f"building the chain failed at turn {turn}: {problem}")
                obj = orjson.loads(reply.body)
                chain.append((obj["id"], obj.get("output_text") or _output_text(obj)))
                if conn.closed:
                    conn = await self.ctx.gateway.connect()
        finally:
            conn.close()
        return chain, tally

    async def latency(self, wl: Workload) -> dict:
        """Alternating concurrency-1 rounds of ``wl``: CPU per request, latency, stream timings."""
        s = self.sizes
        gw, direct = self.gateway_side(wl), self.direct_side(wl)
        n = wl.requests or s.requests
        warm = Tally(timings=False)
        for side in (gw, direct):
            if side is not None and s.warmup:
                warm.merge(await run_requests(side, count=s.warmup, timeout=s.timeout, timings=False))
        tallies = {"gateway": Tally(), "direct": Tally()}
        upstream: Counter = Counter()
        for r in range(s.rounds):
            for side in ((gw, direct) if r % 2 == 0 else (direct, gw)):
                if side is None:
                    continue
                if side is gw:
                    calls = upstream["requests"]
                    tally = await self.gateway_round(side, upstream, count=n, timeout=s.timeout)
                    for _ in range(upstream["requests"] - calls if wl.cache else 0):
                        tally.fail("cache miss: the gateway called the backend for a cached request")
                else:
                    tally = await run_requests(side, count=n, timeout=s.timeout)
                tallies[side.name].merge(tally)
        out = {"label": wl.label, "route": wl.route, "group": wl.group, "stream": wl.stream,
               "chunks": wl.tokens if wl.stream else None, "depth": wl.depth, "store": wl.store,
               "warmup_errors": warm.errors, "warmup_error_kinds": dict(warm.error_kinds),
               "gateway": _side_summary(tallies["gateway"], wl.stream),
               "direct": _side_summary(tallies["direct"], wl.stream) if direct is not None else None}
        out["upstream"] = _upstream(upstream, tallies["gateway"].requests, self.ctx.backend is not None,
                                    expect_calls=not wl.cache)
        out["added"] = _added(out["gateway"], out["direct"])
        return out

    async def throughput(self, wl: Workload) -> dict:
        """Steady-state rounds of ``wl`` at each concurrency (a ``tput_ramp`` then a
        ``tput_seconds`` window): requests/s, CPU per request, latency, upstream connections.
        The upstream counts span the whole rounds (ramp included)."""
        s = self.sizes
        gw, direct = self.gateway_side(wl), self.direct_side(wl)
        out: dict = {}
        for c in s.concurrencies:
            tallies = {"gateway": Tally(), "direct": Tally()}
            upstream: Counter = Counter()
            for r in range(s.tput_rounds):
                for side in ((gw, direct) if r % 2 == 0 else (direct, gw)):
                    if side is gw:
                        tallies["gateway"].merge(await self.gateway_round(
                            side, upstream, concurrency=c, duration=s.tput_seconds, ramp=s.tput_ramp,
                            timeout=s.timeout))
                    elif side is not None:
                        tallies[side.name].merge(await run_requests(side, concurrency=c, duration=s.tput_seconds,
                                                                    ramp=s.tput_ramp, timeout=s.timeout))
            sent = tallies["gateway"].requests + tallies["gateway"].unmeasured  # the counts span whole rounds
            entry: dict = {"upstream": _upstream(upstream, sent, self.ctx.backend is not None,
                                                 expect_calls=not wl.cache)}
            for name, t in tallies.items():
                if name == "direct" and direct is None:
                    entry[name] = None
                    continue
                entry[name] = throughput_summary(t)
            out[f"c{c}"] = entry
        return out

    async def streams_open(self) -> dict:
        """Hold ``streams`` paced streams open together; the gateway's RSS while they are."""
        s = self.sizes
        body = responses_body(self.ctx.paced_model, stream=True, store=False, tokens=s.hold_chunks)
        op = Op(self.ctx.gateway.request("POST", "/v1/responses", body), 1, check_responses_stream(s.hold_chunks))
        if self.ctx.backend is not None:
            await fetch_json(self.ctx.backend, "POST", "/bench/reset")
        out = await hold_streams(self.ctx.gateway, op, s.streams, self.ctx.gateway_pid,
                                 timeout=max(s.timeout, s.hold_chunks * s.pace_ms / 1000 * 4))
        out.update(chunks=s.hold_chunks, pace_ms=s.pace_ms)
        if self.ctx.backend is not None:
            status, stats = await fetch_json(self.ctx.backend, "GET", "/bench/stats")
            out["backend_streams_peak"] = orjson.loads(stats)["streams_peak"] if status == 200 else None
        return out

    async def flatness(self, workloads: dict[str, Workload]) -> dict:
        """RSS flatness under a mix of the non-stream, short stream, cache and chain workloads."""
        s = self.sizes
        mix = [workloads[k] for k in ("nonstream_store_false", "nonstream_store_true",
                                       f"stream_{s.stream_chunks[0]}", "cache_hit",
                                       f"chain_depth_{s.chain_depths[min(1, len(s.chain_depths) - 1)]}")
               if k in workloads]
        out = await rss_flatness(self.gateway_side(*mix), s.flat_requests, s.flat_warmup, s.flat_concurrency,
                                 timeout=s.timeout)
        out["mix"] = [w.key for w in mix]
        return out

    def rss(self) -> dict:
        """The gateway's memory now (``rss``, ``hwm`` in MB); empty when not measurable."""
        return memory_mb(self.ctx.gateway_pid) if self.ctx.gateway_pid else {}


def throughput_summary(t: Tally) -> dict:
    """One side of throughput rounds: ``requests`` (in the windows), ``unmeasured``, ``errors``,
    ``error_kinds``, ``seconds`` (window time), ``requests_per_s``, ``cpu_ms_per_request`` (of the
    side's pids, summed) and ``latency_ms`` ``p50``/``p99``."""
    return {"requests": t.requests, "unmeasured": t.unmeasured, "errors": t.errors,
            "error_kinds": dict(t.error_kinds), "seconds": t.wall,
            "requests_per_s": t.ok / t.wall if t.wall else None,
            "cpu_ms_per_request": _ms(t.cpu / t.requests) if t.cpu is not None and t.requests else None,
            "latency_ms": {"p50": _ms(percentile(t.latencies, 50)), "p99": _ms(percentile(t.latencies, 99))}}


def _upstream(counts: Counter, requests: int, known: bool, expect_calls: bool = True) -> dict | None:
    """What the backend saw during gateway rounds: chat ``requests``, new ``connections`` and
    ``unused_connections`` (closed without a request), per gateway request too. None without
    the bench backend, or when it saw none of the requests it should have (a ``--target``
    that uses another backend)."""
    if not known or (expect_calls and requests and not counts["requests"]):
        return None
    return {"requests": counts["requests"], "connections": counts["connections"],
            "unused_connections": counts["unused_connections"],
            "requests_per_request": counts["requests"] / requests if requests else None,
            "connections_per_request": counts["connections"] / requests if requests else None}


def _output_text(obj: dict) -> str:
    return "".join(p.get("text", "") for item in obj.get("output") or [] if item.get("type") == "message"
                   for p in item.get("content") or [] if p.get("type") == "output_text")


async def workload_set(runner: Runner, sizes: Sizes, chain: bool = True) -> tuple[dict[str, Workload], Tally]:
    """Every workload by key: the basic ones, and (``chain``) the chain workloads after a chain
    of ``max(chain_depths)`` stored responses is built on the runner's gateway. Returns them and
    the chain building's tally (empty without ``chain``). Raises RuntimeError when building fails."""
    ctx = runner.ctx
    workloads = {w.key: w for w in basic_workloads(ctx.model, sizes.nonstream_tokens, sizes.stream_chunks,
                                                   sizes.long_stream_requests)}
    if not chain:
        return workloads, Tally(timings=False)
    depth = max(sizes.chain_depths)
    ctx.log(f"building a chain of {depth} stored responses on {ctx.gateway.url} ...")
    stored, tally = await runner.build_chain(depth)
    for d in sizes.chain_depths:
        wl = chain_workload(ctx.model, d, stored, sizes.nonstream_tokens)
        workloads[wl.key] = wl
    return workloads, tally


async def run_suite(ctx: Context, sizes: Sizes) -> dict:
    """Run every phase of ``ctx.groups``; returns ``{"sizes", "groups", "workloads", "tool_loop",
    "streams_open", "rss_flatness", "gateway_rss_mb", "chain_build", "phase_seconds"}`` (figures
    in ms, MiB, requests/s). Without the ``responses`` group, ``tool_loop``, ``streams_open``,
    ``rss_flatness`` and ``chain_build`` are None (not run)."""
    runner = Runner(ctx, sizes)
    log = ctx.log
    responses = "responses" in ctx.groups
    phase: dict[str, float] = {}
    rss: dict = {"at_start": runner.rss()}
    t = time.perf_counter()
    depth = max(sizes.chain_depths)
    workloads: dict[str, Workload] = {}
    chain_tally = None
    if responses:
        workloads, chain_tally = await workload_set(runner, sizes)
        phase["chain_build"] = time.perf_counter() - t
    if "passthrough" in ctx.groups:
        workloads.update((w.key, w) for w in passthrough_workloads(ctx.model, sizes.nonstream_tokens,
                                                                   sizes.stream_chunks, sizes.long_stream_requests))
    selected = [w for k, w in workloads.items() if not ctx.only or k in ctx.only]

    results: dict = {}
    t = time.perf_counter()
    for wl in selected:
        log(f"latency/CPU rounds: {wl.label} ...")
        results[wl.key] = await runner.latency(wl)
    phase["latency"] = time.perf_counter() - t
    rss["after_latency"] = runner.rss()

    tool_loops = None
    if responses:
        t = time.perf_counter()
        log(f"tool loops of {sizes.loop_turns} turns over the WebSocket and over HTTP/SSE ...")
        tool_loops = await run_tool_loops(ctx.gateway.url.rstrip("/"), ctx.gateway_pid, ctx.model,
                                          api_key=ctx.gateway.api_key, turns=sizes.loop_turns,
                                          loops=sizes.loop_rounds)
        phase["tool_loop"] = time.perf_counter() - t

    t = time.perf_counter()
    peaks = []
    for wl in selected:
        log(f"throughput rounds (c={','.join(map(str, sizes.concurrencies))}): {wl.label} ...")
        hwm_reset = reset_peak_rss(ctx.gateway_pid) if ctx.gateway_pid else False
        results[wl.key]["throughput"] = await runner.throughput(wl)
        mem = runner.rss()
        results[wl.key]["throughput"]["gateway_rss_mb"] = {"peak": mem.get("hwm"), "after": mem.get("rss"),
                                                          "peak_reset": hwm_reset}
        if mem.get("hwm") is not None:
            peaks.append(mem["hwm"])
    phase["throughput"] = time.perf_counter() - t
    rss["after_throughput"] = {"rss": runner.rss().get("rss"), "peak_during_throughput": max(peaks, default=None)}

    streams = flat = None
    if responses:
        t = time.perf_counter()
        log(f"holding {sizes.streams} paced streams open ...")
        streams = await runner.streams_open()
        phase["streams_open"] = time.perf_counter() - t

        t = time.perf_counter()
        log(f"RSS flatness over {sizes.flat_requests} requests (+{sizes.flat_warmup} warm-up) ...")
        flat = await runner.flatness(workloads)
        phase["rss_flatness"] = time.perf_counter() - t
    rss["at_end"] = runner.rss()
    if runner._control is not None:
        runner._control.close()

    return {"sizes": asdict(sizes), "groups": list(ctx.groups), "workloads": results, "tool_loop": tool_loops,
            "streams_open": streams, "rss_flatness": flat,
            "gateway_rss_mb": rss,
            "chain_build": None if chain_tally is None else {"depth": depth, "requests": chain_tally.requests,
                                                             "errors": chain_tally.errors},
            "phase_seconds": phase}
