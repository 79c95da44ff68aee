"""The report: the issue's targets with pass/miss verdicts, the printed tables, the JSON file.

Units: CPU and latency in milliseconds (``_ms``), per-chunk CPU in
microseconds (``_us``), memory in MB (10^6 bytes), throughput in requests/s.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


@dataclass
class Goal:
    """One target: ``value(report)`` must be <= ``limit`` (in ``unit``)."""

    key: str
    label: str
    unit: str
    limit: float
    value: Callable[[dict], float | None]
    note: Callable[[dict], str] = lambda r: ""


def dig(data: Any, *path: Any) -> Any:
    """``data[p0][p1]...``, or None as soon as a step is missing."""
    for step in path:
        if not isinstance(data, dict) or data.get(step) is None:
            return None
        data = data[step]
    return data


def _cpu(r: dict, key: str) -> float | None:
    return dig(r, "workloads", key, "gateway", "cpu_ms_per_request")


def _per_chunk_us(r: dict) -> float | None:
    short, long = r["sizes"]["stream_chunks"]
    a, b = _cpu(r, f"stream_{short}"), _cpu(r, f"stream_{long}")
    return None if a is None or b is None else (b - a) / (long - short) * 1000.0


def _chain_ratio(r: dict) -> float | None:
    depths = r["sizes"]["chain_depths"]
    low, high = _cpu(r, f"chain_depth_{min(depths)}"), _cpu(r, f"chain_depth_{max(depths)}")
    return None if not low or high is None else high / low


def _litellm_ratio(r: dict) -> float | None:
    """Gateway CPU per plain request over LiteLLM's, same run and backend (None: not compared)."""
    peer = dig(r, "peers", "litellm", "workloads", "nonstream_store_false", "gateway", "cpu_ms_per_request")
    ours = _cpu(r, "nonstream_store_false")
    return None if peer is None or ours is None else ours / peer


def _added(key: str, p: str) -> Callable[[dict], float | None]:
    return lambda r: dig(r, "workloads", key, "added", "latency_ms", p)


def _streams_note(r: dict) -> str:
    s = r.get("streams_open") or {}
    note = f"{s.get('max_open')}/{s.get('streams')} streams open together"
    if s.get("streams", 0) < 500:
        note += " (fewer than the target's 500)"
    return note


def _flat_value(r: dict) -> float | None:
    change = dig(r, "rss_flatness", "change_pct")
    return None if change is None else abs(change)


def _flat_note(r: dict) -> str:
    f = r.get("rss_flatness") or {}
    note = f"{f.get('start_mb') or 0:.1f} -> {f.get('end_mb') or 0:.1f} MB over {f.get('requests')} requests"
    if (f.get("requests") or 0) < 20_000:
        note += " (fewer than the target's 20,000)"
    return note


GOALS = [
    Goal("cpu_nonstream_store_true", "CPU / non-stream request, store:true", "ms", 1.0,
         lambda r: _cpu(r, "nonstream_store_true")),
    Goal("cpu_nonstream_store_false", "CPU / non-stream request, store:false", "ms", 1.0,
         lambda r: _cpu(r, "nonstream_store_false")),
    Goal("cpu_stream_short", "CPU / streamed request, 8 chunks", "ms", 4.0,
         lambda r: _cpu(r, f"stream_{r['sizes']['stream_chunks'][0]}")),
    Goal("cpu_per_extra_chunk", "CPU / additional chunk ((256 - 8 chunks) / 248)", "us", 20.0, _per_chunk_us),
    Goal("added_p50_store_false", "Added latency p50, c=1, store:false", "ms", 2.0,
         _added("nonstream_store_false", "p50")),
    Goal("added_p99_store_false", "Added latency p99, c=1, store:false", "ms", 6.0,
         _added("nonstream_store_false", "p99")),
    Goal("added_p50_store_true", "Added latency p50, c=1, store:true", "ms", 2.0,
         _added("nonstream_store_true", "p50")),
    Goal("added_p99_store_true", "Added latency p99, c=1, store:true", "ms", 6.0,
         _added("nonstream_store_true", "p99")),
    Goal("chain_cpu_ratio", "CPU chain depth 100 / depth 1", "x", 2.0, _chain_ratio),
    Goal("peak_rss_streams", "Peak RSS with 500 streams open", "MB", 200.0,
         lambda r: dig(r, "streams_open", "peak_rss_mb"), _streams_note),
    Goal("rss_flatness", "RSS change over 20,000 requests (abs)", "%", 10.0, _flat_value, _flat_note),
    Goal("cpu_cache_hit", "CPU / cache hit", "ms", 1.0, lambda r: _cpu(r, "cache_hit")),
    Goal("cpu_vs_litellm", "CPU / non-stream request, gateway / LiteLLM bridge", "x", 0.1, _litellm_ratio),
]


def evaluate(report: dict) -> list[dict]:
    """The verdict of every goal: ``key``, ``label``, ``value``, ``unit``, ``limit``,
    ``pass`` (True/False, None when the figure could not be measured), ``note``."""
    out = []
    for goal in GOALS:
        try:
            value = goal.value(report)
        except (KeyError, TypeError, ZeroDivisionError):
            value = None
        out.append({"key": goal.key, "label": goal.label, "value": value, "unit": goal.unit,
                    "limit": goal.limit, "pass": None if value is None else value <= goal.limit,
                    "note": goal.note(report)})
    return out


def count_errors(report: dict) -> dict:
    """Every error of the run: ``{"total", "by_phase": {name: n}, "kinds": {message: n}}``."""
    by_phase: Counter = Counter()
    kinds: Counter = Counter()

    def add(name: str, n: int | None, k: dict | None) -> None:
        if n:
            by_phase[name] += n
        kinds.update(k or {})

    for key, w in (report.get("workloads") or {}).items():
        add(f"{key}/warmup", w.get("warmup_errors"), w.get("warmup_error_kinds"))
        for side in ("gateway", "direct"):
            if w.get(side):
                add(f"{key}/{side}", w[side]["errors"], w[side]["error_kinds"])
            for c, entry in (w.get("throughput") or {}).items():
                if entry.get(side):
                    add(f"{key}/{side}/{c}", entry[side]["errors"], entry[side]["error_kinds"])
    for name, peer in (report.get("peers") or {}).items():
        for key, w in (peer.get("workloads") or {}).items():
            add(f"{name}/{key}/warmup", w.get("warmup_errors"), w.get("warmup_error_kinds"))
            add(f"{name}/{key}", w["gateway"]["errors"], w["gateway"]["error_kinds"])
    add("chain_build", dig(report, "chain_build", "errors"), None)
    for side in ("websocket", "http_sse"):
        add(f"tool_loop/{side}", dig(report, "tool_loop", side, "errors"), None)
    for phase in ("streams_open", "rss_flatness"):
        add(phase, dig(report, phase, "errors"), dig(report, phase, "error_kinds"))
    _postgres_errors(report, add)
    return {"total": sum(by_phase.values()), "by_phase": dict(by_phase), "kinds": dict(kinds)}


def _postgres_errors(report: dict, add: Callable[[str, int | None, dict | None], None]) -> None:
    """Add the errors of the PostgreSQL phases (``postgres``, ``replicas``); a phase that broke
    (``failed``) counts as one error."""
    for name in ("postgres", "replicas"):
        section = report.get(name) or {}
        if section.get("failed"):
            add(f"{name}/failed", 1, {section["failed"][:200]: 1})
    for key, w in (dig(report, "postgres", "workloads") or {}).items():
        add(f"postgres/{key}/warmup", w.get("warmup_errors"), w.get("warmup_error_kinds"))
        for side in ("gateway", "direct"):
            if w.get(side):
                add(f"postgres/{key}/{side}", w[side]["errors"], w[side]["error_kinds"])
    add("postgres/chain_build", dig(report, "postgres", "chain_build", "errors"), None)
    for n, run in (dig(report, "replicas", "runs") or {}).items():
        add(f"replicas/{n}/warmup", run.get("warmup_errors"), run.get("warmup_error_kinds"))
        add(f"replicas/{n}", run.get("errors"), run.get("error_kinds"))


# ── printing ─────────────────────────────────────────────────────────────────────

def _f(value: float | None, digits: int = 2, sign: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def render(report: dict) -> str:
    """The tables of ``report`` as text."""
    meta = report["meta"]
    w = report["workloads"]
    out = [f"NOMYO Router benchmark ({meta['mode']}), {meta['started']}, {meta['duration_s']:.0f} s",
           f"gateway {meta['gateway_url']} (pid {meta.get('gateway_pid') or '-'}), "
           f"backend {meta.get('backend_url') or '-'} (pid {meta.get('backend_pid') or '-'}), "
           f"{meta['cpus']} CPUs, Python {meta['python']}; over the run {_f(dig(meta, 'machine', 'cores_busy'), 2)} "
           f"of the machine's cores busy (every process), {_f(dig(meta, 'machine', 'steal_pct'), 1)}% steal", ""]
    s = report["sizes"]
    routes = ("Gateway rounds send each workload to its route (POST /v1/responses; chat/completions: POST "
              "/v1/chat/completions, passed through; /api/chat: Ollama's route, translated to and from the "
              "backend's Chat Completions), direct rounds the body the gateway sends upstream to the backend's "
              "POST /v1/chat/completions. "
              if any(r.get("route", "/v1/responses") != "/v1/responses" for r in w.values()) else "")
    out.append(f"Concurrency 1: {s['rounds']} round(s) per side of {s['requests']} requests "
               f"({s['long_stream_requests']} for the long stream), gateway and direct alternating. {routes}"
               "CPU = OS CPU time of the gateway (direct rounds: of the backend) / requests; sys = its kernel "
               "share; up conn/req = new gateway->backend connections per request. Times in ms.")
    rows = []
    for key, r in w.items():
        g, d, a = r["gateway"], r.get("direct") or {}, r.get("added", {}).get("latency_ms", {})
        sys_share = g.get("cpu_sys_share")
        rows.append([r["label"], _f(g["cpu_ms_per_request"], 3), "-" if sys_share is None else f"{sys_share:.0%}",
                     _f(d.get("cpu_ms_per_request"), 3),
                     _f(dig(g, "latency_ms", "p50")), _f(dig(d, "latency_ms", "p50")), _f(a.get("p50"), 2, True),
                     _f(dig(g, "latency_ms", "p99")), _f(dig(d, "latency_ms", "p99")), _f(a.get("p99"), 2, True),
                     _f(dig(r, "upstream", "connections_per_request"), 2),
                     str(g["errors"] + (d.get("errors") or 0) + (r.get("warmup_errors") or 0))])
    out += [table(["workload", "CPU/req gw", "sys", "CPU/req be", "p50 gw", "p50 dir", "+p50", "p99 gw", "p99 dir", "+p99",
                   "up conn/req", "errors"], rows), ""]
    rows = []
    for key, r in w.items():
        if not r["stream"]:
            continue
        g, d, a = r["gateway"], r.get("direct") or {}, r.get("added", {})
        rows.append([r["label"], _f(dig(g, "ttft_ms", "p50")), _f(dig(d, "ttft_ms", "p50")),
                     _f(dig(a, "ttft_ms", "p50"), 2, True), _f(dig(a, "ttft_ms", "p99"), 2, True),
                     _f(dig(g, "gap_ms", "p50"), 3), _f(dig(g, "gap_ms", "p99"), 3),
                     _f(dig(d, "gap_ms", "p50"), 3), _f(dig(d, "gap_ms", "p99"), 3),
                     _f(dig(a, "gap_ms", "p50"), 3, True), _f(dig(a, "gap_ms", "p99"), 3, True)])
    if rows:
        out.append("Streaming, concurrency 1: time to the first content event (Responses: output_text.delta; "
                   "chat/completions and direct: a chunk with content; /api/chat: a message object with content) "
                   "and gap between content events, ms.")
        out += [table(["workload", "TTFT gw p50", "dir p50", "+p50", "+p99", "gap gw p50", "gw p99", "dir p50",
                       "dir p99", "+gap p50", "+gap p99"], rows), ""]
    concs = [f"c{c}" for c in s["concurrencies"]]
    rows = []
    for key, r in w.items():
        tp = r.get("throughput") or {}
        row = [r["label"]]
        for c in concs:
            e = tp.get(c) or {}
            row += [_f(dig(e, "gateway", "requests_per_s"), 0), _f(dig(e, "direct", "requests_per_s"), 0),
                    _f(dig(e, "gateway", "cpu_ms_per_request"), 3), _f(dig(e, "gateway", "latency_ms", "p99"), 1),
                    _f(dig(e, "upstream", "connections_per_request"), 2)]
        rows.append(row + [_f(dig(tp, "gateway_rss_mb", "peak"), 1), _f(dig(tp, "gateway_rss_mb", "after"), 1)])
    headers = ["workload"]
    for c in concs:
        headers += [f"req/s {c} gw", "dir", "CPU/req gw", "p99 gw", "up conn/req"]
    headers += ["peak RSS", "RSS after"]
    out.append(f"Throughput (steady state): {s['tput_rounds']} round(s) per side and concurrency, each "
               f"{s['tput_ramp']:g} s ramp-up then a {s['tput_seconds']:g} s window; p99 in ms; up conn/req over "
               "whole rounds; gateway RSS in MB (peak: VmHWM during the workload's rounds).")
    out += [table(headers, rows), ""]
    out += _per_chunk_lines(report)
    loop = report.get("tool_loop") or {}
    if loop:
        out.append(f"Tool loop: {loop.get('loops')} loop(s) per transport of {loop.get('turns')} turns, each turn one "
                   "tool call answered by previous_response_id and the tool's output alone (WebSocket: store false, "
                   "the socket's memory; HTTP/SSE: store true, the chain from the store). Wall per loop in ms; CPU = "
                   "gateway CPU per turn.")
        out += [table(["transport", "wall median", "wall best", "CPU/turn gw", "errors"],
                      [[name, _f(dig(loop, side, "wall_ms", "median"), 1), _f(dig(loop, side, "wall_ms", "best"), 1),
                        _f(dig(loop, side, "cpu_ms_per_turn"), 3), str(dig(loop, side, "errors"))]
                       for name, side in (("WebSocket", "websocket"), ("HTTP/SSE", "http_sse"))]),
                f"  WebSocket / HTTP wall: {_f(loop.get('wall_ratio'), 2)}x", ""]
    out += _memory_lines(report)
    out += _peers_table(report)
    out += _postgres_tables(report)
    out += _targets_table(report)
    errs = report["errors"]
    out.append(f"Errors: {errs['total']}" + ("" if not errs["total"] else
               " -- " + "; ".join(f"{k}: {n}" for k, n in errs["by_phase"].items())))
    for kind, n in list(errs["kinds"].items())[:10]:
        out.append(f"  {n} x {kind}")
    return "\n".join(out)


def _per_chunk_lines(report: dict) -> list[str]:
    """The gateway's CPU per additional stream chunk on each route measured with both chunk counts."""
    short, long = report["sizes"]["stream_chunks"]
    parts = []
    for name, prefix in (("Responses", "stream_"), ("chat/completions", "chat_stream_"),
                         ("/api/chat", "ollama_chat_stream_")):
        a, b = _cpu(report, f"{prefix}{short}"), _cpu(report, f"{prefix}{long}")
        if a is not None and b is not None and long != short:
            parts.append(f"{name} {(b - a) / (long - short) * 1000.0:.1f}")
    if not parts:
        return []
    return [f"Gateway CPU per additional stream chunk (({long} - {short} chunks) / {long - short}), us: "
            + ", ".join(parts), ""]


def _memory_lines(report: dict) -> list[str]:
    """The gateway's memory: start, peak during throughput, end; the held streams and the RSS
    flatness phases when they ran (the ``responses`` group)."""
    mem = report.get("gateway_rss_mb") or {}
    so = report.get("streams_open")
    fl = report.get("rss_flatness")
    out = []
    out.append("Gateway memory (MB): "
               f"start {_f(dig(mem, 'at_start', 'rss'), 1)}, peak during throughput "
               f"{_f(dig(mem, 'after_throughput', 'peak_during_throughput'), 1)}, end {_f(dig(mem, 'at_end', 'rss'), 1)}")
    if so:
        out.append(f"  {so.get('streams')} paced streams ({so.get('chunks')} chunks, {_f(so.get('pace_ms'), 0)} ms "
                   f"apart): {so.get('max_open')} open together, RSS {_f(so.get('rss_before_mb'), 1)} -> "
                   f"{_f(so.get('rss_all_open_mb'), 1)} when all open, peak {_f(so.get('peak_rss_mb'), 1)}, "
                   f"{so.get('errors')} errors, {_f(so.get('seconds'), 1)} s")
    if fl:
        out.append(f"  flatness: {fl.get('requests')} requests (+{fl.get('warmup')} warm-up, "
                   f"c={fl.get('concurrency')}, mix {'+'.join(fl.get('mix') or [])}): RSS {_f(fl.get('start_mb'), 1)} "
                   f"-> {_f(fl.get('end_mb'), 1)} ({_f(fl.get('change_pct'), 1, True)}%), "
                   f"{_f(fl.get('requests_per_s'), 0)} req/s, {fl.get('errors')} errors")
    out.append("")
    return out


def _targets_table(report: dict) -> list[str]:
    """The targets with their verdicts; one line instead when none could be judged because the
    ``responses`` group, which they are about, did not run."""
    if "responses" not in report.get("groups", ["responses"]) and all(t["value"] is None for t in report["targets"]):
        return ["Targets: not judged (they are about the responses group, which did not run: "
                f"--group {','.join(report.get('groups') or [])})", ""]
    rows = []
    for t in report["targets"]:
        verdict = "n/a" if t["pass"] is None else ("PASS" if t["pass"] else "MISS")
        digits = 1 if t["unit"] in ("us", "MB", "%") else (2 if t["unit"] == "x" else 3)
        rows.append([t["label"], f"{_f(t['value'], digits)} {t['unit']}", f"<= {t['limit']:g} {t['unit']}",
                     verdict, t["note"]])
    return [table(["target", "measured", "target", "verdict", "note"], rows), ""]


def _peers_table(report: dict) -> list[str]:
    peers = report.get("peers") or {}
    if not peers:
        return []
    rows = []
    for name, peer in peers.items():
        for key, w in peer["workloads"].items():
            ours = dig(report, "workloads", key, "gateway") or {}
            theirs = w["gateway"]
            ratio = (None if not ours.get("cpu_ms_per_request") or not theirs.get("cpu_ms_per_request")
                     else theirs["cpu_ms_per_request"] / ours["cpu_ms_per_request"])
            rows.append([f"{w['label']} vs {name}", _f(ours.get("cpu_ms_per_request"), 3),
                         _f(theirs.get("cpu_ms_per_request"), 3), _f(ratio, 1),
                         _f(dig(ours, "latency_ms", "p50")), _f(dig(theirs, "latency_ms", "p50")),
                         str(theirs["errors"])])
    return ["Peers on the same backend, concurrency 1, same run (CPU = OS CPU time of the process / request, ms).",
            table(["workload", "CPU/req gw", "CPU/req peer", "peer / gw", "p50 gw", "p50 peer", "peer errors"],
                  rows), ""]


def _skipped(section: dict | None, what: str) -> list[str] | None:
    """The line of a PostgreSQL phase that did not run (or broke), else None."""
    if not section:
        return [f"{what}: not run", ""]
    if section.get("skipped"):
        return [f"{what} skipped: {section.get('reason')}", ""]
    if section.get("failed"):
        return [f"{what} failed: {section['failed']}", ""]
    return None


def _postgres_tables(report: dict) -> list[str]:
    """The PostgreSQL store comparison and the replica throughput tables."""
    pg = report.get("postgres")
    out = _skipped(pg, "PostgreSQL store comparison")
    if out is None:
        out = ["Store: the SQLite gateway vs a gateway on PostgreSQL (fresh schema, redis_url set: slots in "
               "Redis), concurrency 1, same backend, rounds as above. CPU/req gw = gateway process CPU / request "
               "(SQLite's work is inside it); PG srv, Redis = CPU of the PostgreSQL backends of the gateway's "
               "connections and of the Redis server / gateway request; PG total / SQLite = (gw + PG srv + Redis) "
               "/ SQLite gw; +p50/+p99 = added latency over the backend direct; ms."]
        rows = []
        for key, both in pg["summary"].items():
            lite, post = both["sqlite"], both["postgres"]
            parts = [post["cpu_ms_per_request"], post.get("postgres_cpu_ms_per_request"),
                     post.get("redis_cpu_ms_per_request")]
            ratio = (None if not lite["cpu_ms_per_request"] or parts[0] is None
                     else sum(x or 0.0 for x in parts) / lite["cpu_ms_per_request"])
            rows.append([pg["workloads"][key]["label"], _f(lite["cpu_ms_per_request"], 3),
                         _f(parts[0], 3), _f(parts[1], 3), _f(parts[2], 3), _f(ratio, 2),
                         _f(lite["added_p50_ms"], 2, True), _f(post["added_p50_ms"], 2, True),
                         _f(lite["added_p99_ms"], 2, True), _f(post["added_p99_ms"], 2, True),
                         str(post["errors"])])
        out += [table(["workload", "CPU/req SQLite", "CPU/req PG gw", "PG srv", "Redis", "PG total / SQLite",
                       "+p50 SQLite", "+p50 PG", "+p99 SQLite", "+p99 PG", "errors PG"], rows), ""]
    reps = report.get("replicas")
    skipped = _skipped(reps, "Replica throughput")
    return out + (skipped if skipped is not None else _replicas_table(reps))


def _replicas_table(reps: dict) -> list[str]:
    w = reps["window"]
    out = [f"Replicas on one PostgreSQL store + Redis: store:true non-stream requests, c={reps['concurrency']} "
           f"round-robin over N replicas (largest N first), {w['rounds']} round(s) of {w['ramp_s']:g} s ramp + "
           f"{w['seconds']:g} s window. CPU/req replicas: all replica processes summed, in the windows; backend, "
           "PG srv (the replicas' PostgreSQL backends), Redis, client (this process), other (the machine's busy "
           "CPU minus all those: other processes, PostgreSQL's background writers, the kernel) and cores busy "
           "(busy CPU s / s): over whole rounds. CPU in ms per request."]
    rows = []
    one = dig(reps, "runs", "1", "requests_per_s")
    for n in sorted(reps["runs"], key=int):
        r = reps["runs"][n]
        per = dig(r, "round", "cpu_ms_per_request") or {}
        rps = r.get("requests_per_s")
        rows.append([f"{n} replica(s)", _f(rps, 0), _f(None if not one or rps is None else rps / one, 2),
                     _f(dig(r, "latency_ms", "p50"), 1), _f(dig(r, "latency_ms", "p99"), 1),
                     _f(r.get("cpu_ms_per_request"), 3)]
                    + [_f(per.get(k), 3) for k in ("backend", "postgres", "redis", "client", "other")]
                    + [_f(dig(r, "round", "cores_busy"), 2),
                       str((r.get("errors") or 0) + (r.get("warmup_errors") or 0))])
    lite = reps.get("sqlite")
    if lite:
        rows.append(["SQLite gateway (above)", _f(lite.get("requests_per_s"), 0), "-",
                     _f(dig(lite, "latency_ms", "p50"), 1), _f(dig(lite, "latency_ms", "p99"), 1),
                     _f(lite.get("cpu_ms_per_request"), 3)] + ["-"] * 6 + [str(lite.get("errors"))])
    out += [table(["replicas", "req/s", "vs 1", "p50", "p99", "CPU/req replicas", "backend", "PG srv", "Redis",
                   "client", "other", "cores busy", "errors"], rows),
            f"  Note: {reps['note']} (os.cpu_count() = {reps['cpus']}).", ""]
    return out


def write_json(report: dict, path: Path) -> Path:
    """Write ``report`` as indented JSON to ``path`` (parents created); returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    return path
