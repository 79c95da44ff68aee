"""The PostgreSQL phases: the store on PostgreSQL beside SQLite, and replicas sharing it.

A second gateway (replica 1) is started on a fresh schema of ``--postgres`` with
``redis_url`` (``--redis``) set, as a replica deployment runs it: its
``max_concurrent_connections`` slots are counted in Redis. The cache stays in
memory, as on the SQLite gateway, so the two differ only by the store and the slots.

1. Store comparison: the store workloads the suite measured on the SQLite gateway
   (``nonstream_store_true`` and the ``previous_response_id`` chain workloads, after
   building the chain again on PostgreSQL), measured the same way on replica 1
   (:meth:`bench.suite.Runner.latency`: alternating concurrency-1 rounds gateway / direct).
   SQLite works inside the gateway process; PostgreSQL and Redis are other processes, so
   their CPU per gateway request (:class:`bench.services.ServiceCpu`) is given beside it.
2. Replica throughput: ``store: true`` non-streamed requests at a fixed concurrency sent
   round-robin over N replicas of one store (N of ``replica_counts``, largest first;
   replicas are started together, then stopped one by one), in the suite's throughput
   windows (:func:`bench.load.run_requests`), CPU summed over every replica process. Over
   each whole round the backend's, PostgreSQL's, Redis's, this client's and the whole
   machine's CPU are read as well; "other" (machine minus those) is everything else running.

The schema is dropped and every replica stopped in :meth:`PostgresPhases.close`, whatever happened.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Callable

from bench.backend import run
from bench.client import Target
from bench.load import Tally, run_requests
from bench.procs import Child, cpu_seconds, launch_gateway, wait_gateway
from bench.report import dig
from bench.suite import Context, Runner, Sizes, throughput_summary, workload_set
from bench.services import ServiceCpu, machine_busy_seconds, probe, run_sql, safe_url, with_settings
from bench.workloads import basic_workloads

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
#: The workload of the replica throughput phase.
REPLICA_WORKLOAD = "nonstream_store_true"
#: ``replica_lease`` of the replicas (seconds; the gateway's default).
LEASE = 5.0


def store_workload_keys(keys) -> list[str]:
    """The keys among ``keys`` the store comparison measures: stored requests and chains."""
    return [k for k in keys if k == "nonstream_store_true" or k.startswith("chain_depth_")]


def _brief(w: dict) -> dict:
    """The comparison figures of one latency summary (:meth:`Runner.latency`), ms."""
    g = w["gateway"]
    return {"cpu_ms_per_request": g["cpu_ms_per_request"], "requests": g["requests"],
            "postgres_cpu_ms_per_request": dig(w, "services", "postgres_cpu_ms_per_request"),
            "redis_cpu_ms_per_request": dig(w, "services", "redis_cpu_ms_per_request"),
            "p50_ms": dig(g, "latency_ms", "p50"), "p99_ms": dig(g, "latency_ms", "p99"),
            "added_p50_ms": dig(w, "added", "latency_ms", "p50"), "added_p99_ms": dig(w, "added", "latency_ms", "p99"),
            "errors": g["errors"] + (dig(w, "direct", "errors") or 0) + (w.get("warmup_errors") or 0)}


class PostgresPhases:
    """Both PostgreSQL phases of one run. :meth:`launch` (at setup: probe, schema, replica 1
    started beside the SQLite gateway), :meth:`wait_first`, :meth:`measure`, :meth:`close`.
    ``reason``: the phases are skipped, and why."""

    def __init__(self, postgres: str, redis_url: str, workdir: Path, log: Callable[..., None] = print,
                 reason: str | None = None):
        self.postgres, self.redis_url, self.workdir, self.log = postgres, redis_url, workdir, log
        self.reason = reason
        self.failure: str | None = None
        self.schema: str | None = None
        self.store_url: str | None = None
        self.backend_port: int | None = None
        self.replicas: list[tuple[Child, int]] = []
        self.services: ServiceCpu | None = None

    @property
    def application_name(self) -> str:
        """The ``application_name`` of the replicas' PostgreSQL connections (how their backends are found)."""
        return f"nomyo-{self.schema}"

    def launch(self, backend_port: int) -> None:
        """Probe PostgreSQL and Redis (unreachable: skipped, the reason logged), create a fresh
        schema and start replica 1 without waiting for it."""
        if self.reason:
            return
        self.reason = run(probe(self.postgres, self.redis_url))
        if self.reason:
            self.log(f"PostgreSQL phases skipped: {self.reason}")
            return
        self.backend_port = backend_port
        schema = f"bench_{uuid.uuid4().hex[:12]}"
        try:
            run(run_sql(self.postgres, f"CREATE SCHEMA {schema}"))
        except Exception as exc:  # noqa: BLE001
            self.reason = f"cannot create a schema in {safe_url(self.postgres)}: {type(exc).__name__}: {exc}"
            self.log(f"PostgreSQL phases skipped: {self.reason}")
            return
        self.schema = schema
        self.store_url = with_settings(self.postgres, search_path=schema, application_name=self.application_name)
        self._launch()

    def _launch(self) -> tuple[Child, int]:
        n = len(self.replicas) + 1
        settings = {"store_url": self.store_url, "redis_url": self.redis_url, "replica_lease": LEASE}
        started = launch_gateway(self.workdir, self.backend_port, settings=settings, name=f"replica{n}")
        self.replicas.append(started)
        return started

    def wait_first(self) -> None:
        """Wait for replica 1; when it does not start the phases are marked failed (not raised)."""
        if self.reason or not self.replicas:
            return
        child, port = self.replicas[0]
        try:
            run(wait_gateway(child, port, 60.0))
        except Exception as exc:  # noqa: BLE001 - reported in the JSON, the rest of the run goes on
            self.failure = f"replica 1 did not start: {exc}"
            self.log(self.failure)
            return
        self.log(f"PostgreSQL replica 1 on http://127.0.0.1:{port} (pid {child.pid}), schema {self.schema}")

    async def measure(self, main: Context, sizes: Sizes, measured: dict) -> dict:
        """Run both phases; returns ``{"postgres": ..., "replicas": ...}`` (see
        :meth:`store_phase`, :meth:`replica_phase`; ``{"skipped": True, "reason"}`` when
        skipped, ``"failed"``: the error when a phase broke). Never raises an Exception."""
        if self.reason or self.failure:
            entry = {"skipped": bool(self.reason), "reason": self.reason, "failed": self.failure}
            return {"postgres": dict(entry), "replicas": dict(entry)}
        out = {}
        self.services = ServiceCpu(self.postgres, self.redis_url, self.application_name)
        try:
            await self.services.open()
            for name, phase in (("postgres", self.store_phase), ("replicas", self.replica_phase)):
                t = time.perf_counter()
                try:
                    out[name] = await phase(main, sizes, measured)
                    out[name]["seconds"] = time.perf_counter() - t
                except Exception as exc:  # noqa: BLE001 - a broken phase is reported, the run's figures kept
                    self.log(f"the {name} phase failed: {type(exc).__name__}: {exc}")
                    out[name] = {"skipped": False, "reason": None, "failed": f"{type(exc).__name__}: {exc}"}
        except Exception as exc:  # noqa: BLE001 - the services' CPU cannot be read
            failed = {"skipped": False, "reason": None, "failed": f"{type(exc).__name__}: {exc}"}
            out = {"postgres": out.get("postgres") or failed, "replicas": out.get("replicas") or dict(failed)}
        finally:
            await self.services.close()
        return out

    def _context(self, main: Context, index: int) -> Context:
        child, port = self.replicas[index]
        return Context(gateway=Target(f"http://127.0.0.1:{port}"), backend=main.backend, gateway_pid=child.pid,
                       backend_pid=main.backend_pid, model=main.model, paced_model=main.paced_model,
                       log=main.log)

    async def store_phase(self, main: Context, sizes: Sizes, measured: dict) -> dict:
        """The store workloads measured on SQLite, measured on replica 1. Returns ``store_url``
        (password masked), ``schema``, ``gateway_pid``, ``workloads`` (key: latency summary as
        in the report's ``workloads``, plus ``services``: ``requests`` sent to the gateway,
        warm-up included, and ``postgres_cpu_ms_per_request``/``redis_cpu_ms_per_request``
        over them), ``summary`` (key: ``{"sqlite", "postgres"}``, each ``cpu_ms_per_request``
        of the gateway, ``postgres_cpu_ms_per_request``, ``redis_cpu_ms_per_request`` (None
        on SQLite), ``p50_ms``/``p99_ms``, ``added_p50_ms``/``added_p99_ms``, ``requests``,
        ``errors``) and ``chain_build``. Figures in ms."""
        keys = store_workload_keys(measured.get("workloads") or {})
        head = {"skipped": False, "reason": None, "failed": None, "store_url": safe_url(self.store_url),
                "redis_url": safe_url(self.redis_url), "schema": self.schema, "gateway_pid": self.replicas[0][0].pid}
        if not keys:
            return {**head, "skipped": True, "reason": "no store workload was measured (--workloads)"}
        runner = Runner(self._context(main, 0), sizes)
        chains = any(k.startswith("chain_depth_") for k in keys)
        try:
            workloads, chain_tally = await workload_set(runner, sizes, chain=chains)
            results = {}
            for key in keys:
                main.log(f"PostgreSQL latency/CPU rounds: {workloads[key].label} ...")
                before = await self.services.read()
                results[key] = await runner.latency(workloads[key])
                spent = self.services.spent(before, await self.services.read())
                sent = results[key]["gateway"]["requests"] + sizes.warmup
                results[key]["services"] = {"requests": sent, **{
                    f"{name}_cpu_ms_per_request": None if cpu is None or not sent else cpu * 1000.0 / sent
                    for name, cpu in spent.items()}}
        finally:
            if runner._control is not None:
                runner._control.close()
        summary = {k: {"sqlite": _brief(measured["workloads"][k]), "postgres": _brief(results[k])} for k in keys}
        return {**head, "workloads": results, "summary": summary,
                "chain_build": {"depth": max(sizes.chain_depths) if chains else 0, "requests": chain_tally.requests,
                                "errors": chain_tally.errors}}

    async def replica_phase(self, main: Context, sizes: Sizes, measured: dict) -> dict:
        """Throughput of ``store: true`` requests round-robin over N replicas, N in
        ``sizes.replica_counts`` (largest first). Returns ``concurrency``, ``cpus``, ``order``,
        ``runs`` (``"N"``: see :meth:`_replica_run`), ``sqlite`` (the SQLite gateway's
        throughput at the same concurrency in this run, or None), ``startup_seconds`` (starting
        the other replicas), ``window`` and ``note``; :meth:`measure` adds ``seconds``."""
        counts = sorted({n for n in sizes.replica_counts if n >= 1}, reverse=True)
        c = sizes.replica_concurrency
        if not counts:
            return {"skipped": True, "reason": "no replica count (--replicas)", "failed": None}
        new = [self._launch() for _ in range(len(self.replicas), counts[0])]
        t = time.perf_counter()
        if new:
            main.log(f"starting {len(new)} more PostgreSQL replica(s) ...")
            await asyncio.gather(*(wait_gateway(child, port, 60.0) for child, port in new))
        startup = time.perf_counter() - t
        runs = {}
        for n in counts:
            while len(self.replicas) > n:
                self.replicas.pop()[0].stop()
            main.log(f"replica throughput: {n} replica(s), c={c} ...")
            runs[str(n)] = await self._replica_run(main, sizes, n, c)
        sqlite = dig(measured, "workloads", REPLICA_WORKLOAD, "throughput", f"c{c}", "gateway")
        cpus = os.cpu_count()
        return {"skipped": False, "reason": None, "failed": None, "workload": REPLICA_WORKLOAD, "concurrency": c,
                "cpus": cpus, "order": counts, "runs": runs, "sqlite": sqlite, "startup_seconds": startup,
                "window": {"ramp_s": sizes.tput_ramp, "seconds": sizes.tput_seconds, "rounds": sizes.tput_rounds},
                "note": (f"client, backend, PostgreSQL, Redis and all replicas share this machine's {cpus} "
                         "CPU(s): more replicas on one small machine cannot scale like replicas on "
                         "separate machines")}

    async def _replica_run(self, main: Context, sizes: Sizes, n: int, c: int) -> dict:
        """Warm-up, then ``tput_rounds`` throughput rounds over replicas 1..n. Returns
        :func:`bench.suite.throughput_summary` (CPU: all replicas summed, in the windows) plus
        ``replicas``, ``pids``, ``warmup_errors``, ``warmup_error_kinds`` and ``round``: over
        whole rounds (ramp included), ``seconds``, ``requests`` sent, ``cores_busy`` (machine
        CPU s / s) and ``cpu_ms_per_request`` per sent request of ``replicas``, ``backend``,
        ``postgres`` (the replicas' backends), ``redis``, ``client`` (this process),
        ``machine`` (all cores) and ``other`` (machine minus the rest: other processes,
        PostgreSQL's background processes, the kernel); None where not measurable."""
        wl = next(w for w in basic_workloads(main.model, sizes.nonstream_tokens, sizes.stream_chunks,
                                             sizes.long_stream_requests) if w.key == REPLICA_WORKLOAD)
        sides = [Runner(self._context(main, i), sizes).gateway_side(wl) for i in range(n)]
        side = replace(sides[0], others=tuple(sides[1:]))
        warm = await run_requests(side, concurrency=c, count=sizes.warmup * n, timeout=sizes.timeout, timings=False)
        total, spent = Tally(), Counter()
        for _ in range(sizes.tput_rounds):
            before = await self._readings(side.pids, main.backend_pid)
            total.merge(await run_requests(side, concurrency=c, duration=sizes.tput_seconds, ramp=sizes.tput_ramp,
                                           timeout=sizes.timeout))
            after = await self._readings(side.pids, main.backend_pid)
            spent.update({k: after[k] - before[k] for k in after if k != "services"})
            spent.update({k: v for k, v in self.services.spent(before["services"], after["services"]).items()
                          if v is not None})
        out = throughput_summary(total)
        sent = total.requests + total.unmeasured
        per = {k: spent[k] * 1000.0 / sent if sent and (k in spent) else None
               for k in ("replicas", "backend", "postgres", "redis", "client", "machine")}
        if main.backend_pid is None:
            per["backend"] = None
        per["other"] = None if not sent else per["machine"] - sum(v for k, v in per.items() if k != "machine" and v)
        out.update(replicas=n, pids=list(side.pids), warmup_errors=warm.errors,
                   warmup_error_kinds=dict(warm.error_kinds),
                   round={"seconds": spent["wall"], "requests": sent, "cpu_ms_per_request": per,
                          "cores_busy": spent["machine"] / spent["wall"] if spent["wall"] else None})
        return out

    async def _readings(self, pids: tuple[int, ...], backend_pid: int | None) -> dict:
        services = await self.services.read()
        out = {"wall": time.perf_counter(), "replicas": sum(cpu_seconds(p) for p in pids),
               "backend": cpu_seconds(backend_pid) if backend_pid else 0.0, "machine": machine_busy_seconds(),
               "client": time.process_time(), "services": services}
        return out

    def close(self) -> None:
        """Stop every replica, then drop the schema (a failure to drop is logged, not raised)."""
        while self.replicas:
            self.replicas.pop()[0].stop()
        if self.schema is None:
            return
        try:
            run(run_sql(self.postgres, f"DROP SCHEMA IF EXISTS {self.schema} CASCADE"))
        except Exception as exc:  # noqa: BLE001
            self.log(f"could not drop the schema {self.schema}: {type(exc).__name__}: {exc}")
        else:
            self.schema = None
