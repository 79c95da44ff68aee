"""Smoke test of the benchmark harness: its tiniest mode runs end to end and reports every figure.

Starts the bench backend and the gateway (uvicorn) as real processes on
127.0.0.1, and the PostgreSQL phases' replicas when PostgreSQL and Redis answer
(127.0.0.1:5432, 127.0.0.1:6379). No timing is asserted: only that each figure is
present and that no request failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
WORKLOADS = ("nonstream_store_false", "nonstream_store_true", "stream_8", "stream_256", "cache_hit",
             "chain_depth_1", "chain_depth_10", "chain_depth_100")
SIDE_FIGURES = (("cpu_ms_per_request",), ("latency_ms", "p50"), ("latency_ms", "p99"))
STREAM_FIGURES = (("ttft_ms", "p50"), ("ttft_ms", "p99"), ("gap_ms", "p50"), ("gap_ms", "p99"))


def _get(data, path):
    for step in path:
        assert isinstance(data, dict) and step in data, f"missing {'.'.join(path)}"
        data = data[step]
    return data


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    """The JSON report of one ``python -m bench --tiny`` run."""
    out = tmp_path_factory.mktemp("bench") / "report.json"
    run = subprocess.run([sys.executable, "-m", "bench", "--tiny", "--quiet", "--tput-seconds", "0.1",
                          "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.exists(), f"no report (exit {run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    data = json.loads(out.read_text())
    data["_exit"] = run.returncode
    data["_stdout"] = run.stdout
    return data


def test_no_errors(report):
    assert report["errors"]["total"] == 0, report["errors"]
    assert report["_exit"] == 0


def test_every_workload_has_its_figures(report):
    for key in WORKLOADS:
        w = report["workloads"][key]
        for side in ("gateway", "direct"):
            assert w[side]["requests"] > 0
            for path in SIDE_FIGURES + (STREAM_FIGURES if w["stream"] else ()):
                assert _get(w[side], path) is not None, f"{key}.{side}.{'.'.join(path)}"
        for path in (("latency_ms", "p50"), ("latency_ms", "p99")) + (STREAM_FIGURES if w["stream"] else ()):
            assert _get(w["added"], path) is not None, f"{key}.added.{'.'.join(path)}"
        assert w["upstream"]["connections_per_request"] is not None
        for c in (f"c{n}" for n in report["sizes"]["concurrencies"]):
            for side in ("gateway", "direct"):
                assert _get(w["throughput"], (c, side, "requests_per_s")) is not None, f"{key}.{c}.{side}"
        assert _get(w["throughput"], ("gateway_rss_mb", "peak")) is not None


def test_memory_figures(report):
    streams = report["streams_open"]
    assert streams["completed"] == streams["streams"] > 0
    for key in ("rss_before_mb", "rss_all_open_mb", "peak_rss_mb"):
        assert streams[key] is not None, key
    flat = report["rss_flatness"]
    assert flat["start_mb"] and flat["end_mb"] and flat["change_pct"] is not None
    assert report["gateway_rss_mb"]["after_throughput"]["peak_during_throughput"] is not None


def test_every_target_is_judged(report):
    keys = {t["key"] for t in report["targets"]}
    assert {"cpu_nonstream_store_true", "cpu_nonstream_store_false", "cpu_stream_short", "cpu_per_extra_chunk",
            "added_p50_store_false", "added_p99_store_false", "chain_cpu_ratio", "peak_rss_streams",
            "rss_flatness", "cpu_cache_hit"} <= keys
    for target in report["targets"]:
        if target["key"] == "cpu_vs_litellm":  # judged only with --compare-litellm
            assert "peers" not in report and target["value"] is None and target["pass"] is None
            continue
        assert target["value"] is not None, target["key"]
        assert target["pass"] in (True, False), target["key"]


def test_peer_comparison_is_judged_and_shown(report):
    from bench.report import evaluate, render
    peer = {"label": "non-stream, store:false", "gateway": {"cpu_ms_per_request": 8.0, "errors": 0,
                                                            "error_kinds": {}, "latency_ms": {"p50": 9.0}}}
    compared = {**report, "peers": {"litellm": {"workloads": {"nonstream_store_false": peer}}}}
    ours = report["workloads"]["nonstream_store_false"]["gateway"]["cpu_ms_per_request"]
    verdict = {t["key"]: t for t in evaluate(compared)}["cpu_vs_litellm"]
    assert verdict["value"] == ours / 8.0 and verdict["pass"] == (ours / 8.0 <= 0.1)
    compared["targets"] = evaluate(compared)
    assert "non-stream, store:false vs litellm" in render(compared)


def test_the_tool_loop_figures(report):
    loop = report["tool_loop"]
    for side in ("websocket", "http_sse"):
        assert loop[side]["errors"] == 0 and loop[side]["loops"] == report["sizes"]["loop_rounds"]
        assert loop[side]["wall_ms"]["median"] is not None and loop[side]["cpu_ms_per_turn"] is not None
    assert loop["wall_ratio"] is not None


def _postgres_there(report) -> bool:
    """Whether the PostgreSQL phases ran; when they were skipped, both sections say why."""
    pg, reps = report["postgres"], report["replicas"]
    assert pg["failed"] is None and reps["failed"] is None, (pg["failed"], reps["failed"])
    if pg["skipped"] and pg["reason"].startswith("cannot"):
        assert reps["skipped"] and reps["reason"] == pg["reason"]
        assert f"skipped: {pg['reason']}" in report["_stdout"]
        return False
    return True


def test_the_postgres_store_comparison(report):
    if not _postgres_there(report):
        pytest.skip(f"PostgreSQL phases skipped: {report['postgres']['reason']}")
    pg = report["postgres"]
    assert not pg["skipped"] and pg["chain_build"]["errors"] == 0
    assert set(pg["workloads"]) == {"nonstream_store_true"} | {k for k in WORKLOADS if k.startswith("chain_depth_")}
    for key, w in pg["workloads"].items():
        for side in ("gateway", "direct"):
            assert w[side]["requests"] > 0 and w[side]["errors"] == 0, f"postgres.{key}.{side}"
        assert w["warmup_errors"] == 0
        assert w["gateway"]["cpu_ms_per_request"] is not None
        assert w["services"]["postgres_cpu_ms_per_request"] is not None
        for p in ("p50", "p99"):
            assert w["added"]["latency_ms"][p] is not None, f"postgres.{key}.added.{p}"
        both = pg["summary"][key]
        assert both["sqlite"]["cpu_ms_per_request"] is not None and both["postgres"]["errors"] == 0
    assert "Store: the SQLite gateway vs a gateway on PostgreSQL" in report["_stdout"]


def test_the_replica_throughput(report):
    if not _postgres_there(report):
        pytest.skip(f"PostgreSQL phases skipped: {report['replicas']['reason']}")
    reps = report["replicas"]
    assert reps["cpus"] == os.cpu_count() and "share this machine" in reps["note"]
    assert sorted(reps["runs"], key=int) == [str(n) for n in sorted(report["sizes"]["replica_counts"])]
    for n, run in reps["runs"].items():
        assert run["replicas"] == int(n) == len(run["pids"])
        assert run["requests"] > 0 and run["errors"] == 0 and run["warmup_errors"] == 0, (n, run["error_kinds"])
        assert run["requests_per_s"] and run["cpu_ms_per_request"] is not None
        for part in ("replicas", "backend", "client", "machine", "other"):
            assert run["round"]["cpu_ms_per_request"][part] is not None, f"replicas.{n}.round.{part}"
    assert "Replicas on one PostgreSQL store + Redis" in report["_stdout"]
    assert f"os.cpu_count() = {os.cpu_count()}" in report["_stdout"]


def test_skipped_postgres_phases_are_shown(report):
    from bench.report import render
    skipped = {"skipped": True, "reason": "--no-postgres", "failed": None}
    text = render({**report, "postgres": skipped, "replicas": dict(skipped)})
    assert "PostgreSQL store comparison skipped: --no-postgres" in text
    assert "Replica throughput skipped: --no-postgres" in text
