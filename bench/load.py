"""Load generation: requests at a given concurrency, many streams held open, and the
bookkeeping of what came back (latencies, stream timings, errors, process CPU).

Each concurrent worker owns one keep-alive connection and sends its next
request as soon as the previous reply ended. Every reply is checked; failures
are counted with a few sample messages, never dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

from bench.client import Connection, Reply, Target
from bench.procs import cpu_seconds, cpu_split, memory_mb, reset_peak_rss
from bench.workloads import Check

MAX_ERROR_KINDS = 8
#: Seconds waited after a counted batch before the last CPU reading.
SETTLE = 0.01


@dataclass
class Op:
    """One request to repeat: complete HTTP bytes, reply mode, and the check of its reply."""

    request: bytes
    mode: int
    check: Check


@dataclass
class Side:
    """Where a round sends its requests: ``name`` ("gateway"/"direct"), the target, the
    pid whose CPU is charged to the round (None: not measured), and the requests to cycle.

    ``others``: the other replicas of the same service, one side each. Requests then go
    round-robin over ``(self, *others)`` (each worker keeps a connection to each), and the
    CPU charged is the sum over their pids."""

    name: str
    target: Target
    pid: int | None
    ops: list[Op]
    others: tuple["Side", ...] = ()

    @property
    def replicas(self) -> tuple["Side", ...]:
        """This side and its ``others``, in round-robin order."""
        return (self, *self.others)

    @property
    def pids(self) -> tuple[int, ...]:
        """Every measured pid (empty: CPU not measured)."""
        return tuple(r.pid for r in self.replicas if r.pid)


@dataclass
class Tally:
    """Outcome of a batch of requests. Times are seconds.

    ``requests``: replies measured (all of them, or those inside a measurement
    window); ``unmeasured``: replies outside the window (ramp-up, drain);
    ``errors``: every failure, measured or not; ``measured_errors``: failures
    among ``requests``. ``latencies``: request-to-end of each successful reply;
    ``ttfts``: request to first content event (streams); ``gaps``: time between
    consecutive content events of a stream; ``cpu``: CPU seconds of the measured pid over the batch
    (None when not measured), ``cpu_sys`` the part spent in the kernel (clock-tick
    resolution); ``wall``: elapsed seconds.
    """

    timings: bool = True
    requests: int = 0
    unmeasured: int = 0
    errors: int = 0
    measured_errors: int = 0
    error_kinds: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    cpu: float | None = None
    cpu_sys: float | None = None
    wall: float = 0.0

    @property
    def ok(self) -> int:
        """Measured replies that succeeded."""
        return self.requests - self.measured_errors

    def add(self, reply: Reply, problem: str | None, measured: bool = True, timed: bool = True) -> None:
        """Count one reply; ``problem`` is its check's verdict (None: success).

        ``measured``: the reply counts in ``requests`` (else in ``unmeasured``);
        ``timed``: its timings join the samples. Errors are always counted.
        """
        if measured:
            self.requests += 1
        else:
            self.unmeasured += 1
        if problem is not None:
            if measured:
                self.measured_errors += 1
            self.fail(problem)
            return
        if not (self.timings and timed):
            return
        self.latencies.append(reply.latency)
        times = reply.content_times
        if times:
            self.ttfts.append(times[0] - reply.t0)
            self.gaps.extend([b - a for a, b in zip(times, times[1:])])

    def fail(self, problem: str) -> None:
        """Count one error (also used for failures that produced no reply)."""
        self.errors += 1
        kind = problem[:200]
        if kind in self.error_kinds or len(self.error_kinds) < MAX_ERROR_KINDS:
            self.error_kinds[kind] += 1
        else:
            self.error_kinds["(other errors)"] += 1

    def merge(self, other: "Tally") -> None:
        """Add ``other``'s counts, samples, CPU and wall time to this tally."""
        self.requests += other.requests
        self.unmeasured += other.unmeasured
        self.errors += other.errors
        self.measured_errors += other.measured_errors
        self.error_kinds.update(other.error_kinds)
        self.latencies += other.latencies
        self.ttfts += other.ttfts
        self.gaps += other.gaps
        if other.cpu is not None:
            self.cpu = (self.cpu or 0.0) + other.cpu
            self.cpu_sys = (self.cpu_sys or 0.0) + (other.cpu_sys or 0.0)
        self.wall += other.wall


def percentile(values: list[float], p: float) -> float | None:
    """The ``p``-th percentile (0-100) of ``values``, linearly interpolated; None when empty."""
    if not values:
        return None
    data = sorted(values)
    rank = (len(data) - 1) * p / 100.0
    low = int(rank)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (rank - low)


async def _connect(target: Target, tally: Tally) -> Connection | None:
    try:
        return await target.connect()
    except (OSError, TimeoutError) as exc:
        tally.fail(f"connect failed: {type(exc).__name__}: {exc}")
        return None


async def run_requests(side: Side, *, concurrency: int = 1, count: int | None = None,
                       duration: float | None = None, ramp: float = 0.0, timeout: float = 60.0,
                       timings: bool = True) -> Tally:
    """Send ``side``'s requests from ``concurrency`` workers, one connection each (with
    ``side.others``: one to each replica, request k of the batch going to replica k mod n).

    Count mode (``count``): every reply is measured; CPU (of ``side.pids``, summed) and
    wall time span the whole batch, from after the connections are open.

    Duration mode (``duration``): steady state. After ``ramp`` seconds the
    measurement window opens at the next reply and closes at a later reply, once
    ``duration`` seconds have passed and the replies counted since opening are a
    non-zero multiple of ``concurrency`` (replies can come in waves of
    ``concurrency``; both edges then fall at the same point of a wave). CPU and
    time are read at the edges; the replies in between give requests/s and CPU
    per request. Timings are sampled from requests started inside the window.
    No request starts after it closes (those in flight finish); a window still
    open ``duration + timeout`` seconds after the ramp is closed by force.
    Errors are counted in every case.
    """
    if (count is None) == (duration is None):
        raise ValueError("give count or duration")
    tally = Tally(timings)
    replicas = side.replicas
    n = len(replicas)
    opened = await asyncio.gather(*(_connect(r.target, tally) for _ in range(concurrency) for r in replicas))
    conns = [list(opened[i:i + n]) for i in range(0, len(opened), n)]
    pids = side.pids
    issued = 0
    counted = 0
    loop = asyncio.get_running_loop()
    window: dict = {}

    def edge(name: str) -> None:
        if name in window:
            return
        window[name] = time.perf_counter()
        if pids:
            window[name + "_cpu"] = sum(cpu_seconds(p) for p in pids)
            window[name + "_sys"] = sum(cpu_split(p)[1] for p in pids)

    def force_close() -> None:
        edge("open")
        edge("close")

    start = time.perf_counter()
    if duration is None:
        edge("open")
    else:
        guard = loop.call_later(ramp + duration + timeout, force_close)

    def measured(reply: Reply) -> bool:
        """Whether ``reply`` counts (duration mode: moves the window edges)."""
        nonlocal counted
        if duration is None:
            return True
        if "close" in window:
            return False
        if "open" not in window:
            if time.perf_counter() - start >= ramp:
                edge("open")  # this reply marks the opening; the ones after it count
            return False
        counted += 1
        if time.perf_counter() - window["open"] >= duration and counted % concurrency == 0:
            edge("close")
        return True

    def timed(reply: Reply) -> bool:
        return duration is None or ("open" in window and reply.t0 >= window["open"])

    async def worker(mine: list[Connection | None]) -> None:
        nonlocal issued
        while (count is None or issued < count) and "close" not in window:
            k = issued
            issued += 1
            to = replicas[k % n]
            op = to.ops[(k // n) % len(to.ops)]
            conn = mine[k % n]
            if conn is None or conn.closed:
                conn = mine[k % n] = await _connect(to.target, tally)
                if conn is None:
                    tally.unmeasured += 1
                    continue
            reply = await conn.send(op.request, op.mode, timeout)
            tally.add(reply, op.check(reply), measured(reply), timed(reply))
        for conn in mine:
            if conn is not None:
                conn.close()

    await asyncio.gather(*(worker(c) for c in conns))
    if duration is not None:
        guard.cancel()
    if "close" not in window:  # count mode (every worker has ended)
        ended = time.perf_counter()
        await asyncio.sleep(SETTLE)  # the server's work after its last reply (stream cleanup) belongs here
        edge("close")
        window["close"] = ended
    tally.wall = window["close"] - window.get("open", window["close"])
    if pids and "open_cpu" in window:
        tally.cpu = window["close_cpu"] - window["open_cpu"]
        tally.cpu_sys = window["close_sys"] - window["open_sys"]
    return tally


async def hold_streams(target: Target, op: Op, count: int, pid: int | None, timeout: float = 120.0) -> dict:
    """Open ``count`` streams at once (one connection each) and let them all run to the end.

    Returns ``streams``, ``completed`` (successes), ``errors``, ``error_kinds``,
    ``max_open`` (most streams seen open together: first delta received, not
    yet ended), ``all_open`` (whether every stream was open at one moment),
    ``seconds``, and with ``pid``: ``rss_before_mb``, ``rss_all_open_mb``
    (VmRSS when the last stream opened), ``peak_rss_mb`` (VmHWM over the phase)
    and ``peak_rss_reset`` (whether VmHWM could be reset at the start, else it
    is the process's lifetime peak).
    """
    tally = Tally(timings=False)
    before = memory_mb(pid) if pid else {}
    was_reset = reset_peak_rss(pid) if pid else False
    conns = await asyncio.gather(*(_connect(target, tally) for _ in range(count)))
    opened = finished = max_open = 0
    at_full: dict = {}

    def on_first() -> None:
        nonlocal opened, max_open
        opened += 1
        max_open = max(max_open, opened - finished)
        if opened == count and pid:
            at_full.update(memory_mb(pid))

    async def one(conn: Connection | None) -> None:
        nonlocal finished
        if conn is None:
            tally.requests += 1
            return
        reply = await conn.send(op.request, op.mode, timeout, on_first_content=on_first)
        finished += 1
        tally.add(reply, op.check(reply))
        conn.close()

    start = time.perf_counter()
    await asyncio.gather(*(one(c) for c in conns))
    out = {"streams": count, "completed": tally.requests - tally.errors, "errors": tally.errors,
           "error_kinds": dict(tally.error_kinds), "max_open": max_open, "all_open": max_open == count,
           "seconds": time.perf_counter() - start}
    if pid:
        out.update(rss_before_mb=before.get("rss"), rss_all_open_mb=at_full.get("rss"),
                   peak_rss_mb=memory_mb(pid).get("hwm"), peak_rss_reset=was_reset)
    return out


async def rss_flatness(side: Side, requests: int, warmup: int, concurrency: int, samples: int = 20,
                       timeout: float = 60.0) -> dict:
    """Send ``warmup`` requests, then ``requests`` more in ``samples`` slices, reading the
    RSS of ``side.pid`` before the first slice and after each.

    Returns ``requests``, ``warmup``, ``errors``, ``error_kinds``,
    ``start_mb``, ``end_mb``, ``change_pct`` ((end - start) / start * 100),
    ``peak_mb`` (VmHWM), ``samples`` (``[requests done, RSS MiB]``) and
    ``requests_per_s``.
    """
    total = Tally(timings=False)
    if warmup:
        total.merge(await run_requests(side, concurrency=concurrency, count=warmup, timeout=timeout,
                                       timings=False))
    start = memory_mb(side.pid).get("rss") if side.pid else None
    trace = [[0, start]]
    done = 0
    wall = 0.0
    for i in range(samples):
        size = requests * (i + 1) // samples - done
        if size <= 0:
            continue
        tally = await run_requests(side, concurrency=concurrency, count=size, timeout=timeout, timings=False)
        total.merge(tally)
        wall += tally.wall
        done += size
        trace.append([done, memory_mb(side.pid).get("rss") if side.pid else None])
    end = trace[-1][1]
    change = (end - start) / start * 100.0 if start and end else None
    return {"requests": requests, "warmup": warmup, "concurrency": concurrency, "errors": total.errors,
            "error_kinds": dict(total.error_kinds), "start_mb": start, "end_mb": end, "change_pct": change,
            "peak_mb": memory_mb(side.pid).get("hwm") if side.pid else None, "samples": trace,
            "requests_per_s": done / wall if wall else None}
