"""Smoke test of the benchmark harness: its tiniest mode runs end to end and reports every figure.

Starts the bench backend and the gateway (uvicorn) as real processes on
127.0.0.1, and the PostgreSQL phases' replicas when PostgreSQL and Redis answer
(127.0.0.1:5432, 127.0.0.1:6379). The run measures both workload groups
(``--group all``): the Responses workloads and the passed-through routes
(``/v1/chat/completions``, ``/api/chat``); a second, shorter run measures the
passthrough group alone. No timing is asserted: only that each figure is present
and that no request failed. The reply checks are also shown to refuse replies of
the wrong shape.
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
RESPONSES_WORKLOADS = ("nonstream_store_false", "nonstream_store_true", "stream_8", "stream_256", "cache_hit",
                       "chain_depth_1", "chain_depth_10", "chain_depth_100")
PASSTHROUGH_WORKLOADS = {"chat_nonstream": "/v1/chat/completions", "chat_stream_8": "/v1/chat/completions",
                         "chat_stream_256": "/v1/chat/completions", "ollama_chat_nonstream": "/api/chat",
                         "ollama_chat_stream_8": "/api/chat", "ollama_chat_stream_256": "/api/chat"}
WORKLOADS = RESPONSES_WORKLOADS + tuple(PASSTHROUGH_WORKLOADS)
SIDE_FIGURES = (("cpu_ms_per_request",), ("latency_ms", "p50"), ("latency_ms", "p99"))
STREAM_FIGURES = (("ttft_ms", "p50"), ("ttft_ms", "p99"), ("gap_ms", "p50"), ("gap_ms", "p99"))


def _get(data, path):
    for step in path:
        assert isinstance(data, dict) and step in data, f"missing {'.'.join(path)}"
        data = data[step]
    return data


def _bench(tmp_path_factory, *args: str) -> dict:
    """The JSON report of one ``python -m bench --tiny`` run with ``args``, plus its exit status
    (``_exit``) and printed tables (``_stdout``)."""
    out = tmp_path_factory.mktemp("bench") / "report.json"
    run = subprocess.run([sys.executable, "-m", "bench", "--tiny", "--quiet", "--tput-seconds", "0.1", *args,
                          "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.exists(), f"no report (exit {run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    data = json.loads(out.read_text())
    data["_exit"] = run.returncode
    data["_stdout"] = run.stdout
    return data


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    """The JSON report of one ``python -m bench --tiny --group all`` run."""
    return _bench(tmp_path_factory, "--group", "all")


@pytest.fixture(scope="module")
def passthrough_report(tmp_path_factory) -> dict:
    """The JSON report of a ``--group passthrough`` run, briefer still."""
    return _bench(tmp_path_factory, "--group", "passthrough", "--concurrency", "8")


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
    chains = {k for k in RESPONSES_WORKLOADS if k.startswith("chain_depth_")}
    assert set(pg["workloads"]) == {"nonstream_store_true"} | chains
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


def test_the_passed_through_routes_are_measured(report):
    assert report["groups"] == ["responses", "passthrough"]
    for key, route in PASSTHROUGH_WORKLOADS.items():
        w = report["workloads"][key]
        assert w["route"] == route and w["group"] == "passthrough", key
        assert w["warmup_errors"] == 0
        # each request through the gateway is one call of the backend, on a kept-open connection
        assert w["upstream"]["requests_per_request"] == 1.0, (key, w["upstream"])
        for c in (f"c{n}" for n in report["sizes"]["concurrencies"]):
            assert w["throughput"][c]["upstream"]["requests_per_request"] == 1.0, (key, c)
    for label in ("chat/completions, non-stream", "chat/completions, stream, 8 chunks", "/api/chat, non-stream",
                  "/api/chat, stream, 256 chunks"):
        assert label in report["_stdout"], label
    assert "Gateway CPU per additional stream chunk" in report["_stdout"]


def test_the_passthrough_group_alone(passthrough_report):
    r = passthrough_report
    assert r["errors"]["total"] == 0 and r["_exit"] == 0, r["errors"]
    assert r["groups"] == ["passthrough"] and set(r["workloads"]) == set(PASSTHROUGH_WORKLOADS)
    assert list(r["workloads"]["chat_nonstream"]["throughput"]) == ["c8", "gateway_rss_mb"]
    for section in ("tool_loop", "streams_open", "rss_flatness", "chain_build"):
        assert r[section] is None, section
    for name in ("postgres", "replicas"):
        assert r[name]["skipped"] and r[name]["reason"].startswith("--group passthrough"), r[name]
    assert "Targets: not judged" in r["_stdout"] and "paced streams" not in r["_stdout"]


def test_an_unknown_workload_or_group_is_refused():
    for args, says in ((["--workloads", "chat_nonstream"], "unknown workload chat_nonstream for --group responses"),
                       (["--group", "ollama"], "unknown group ollama")):
        run = subprocess.run([sys.executable, "-m", "bench", "--tiny", "--quiet", *args], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 2 and says in run.stderr, (args, run.returncode, run.stderr[-2000:])


def _parsed(mode: int, raw: bytes):
    """The :class:`bench.client.Reply` a connection makes of the raw HTTP reply ``raw``."""
    from bench.client import Connection, Reply
    conn = Connection()
    conn.reply = Reply(mode)
    conn.data_received(raw)
    assert conn.state == 5, "the reply was not read to its end"  # _DONE
    return conn.reply


def _chunked(status: str, ctype: str, parts: list[bytes]) -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    return f"HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ntransfer-encoding: chunked\r\n\r\n".encode() + body


def _whole(obj: dict) -> bytes:
    body = json.dumps(obj).encode()
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


def test_the_chat_checks_want_the_chat_shapes():
    from bench.client import JSON, SSE_CHAT
    from bench.workloads import check_chat_json, check_chat_stream
    completion = {"object": "chat.completion", "usage": {"completion_tokens": 2},
                  "choices": [{"message": {"role": "assistant", "content": "hi there"}}]}
    assert check_chat_json(_parsed(JSON, _whole(completion))) is None
    assert "not 'chat.completion'" in check_chat_json(_parsed(JSON, _whole({**completion, "object": "response"})))
    assert "no usage" in check_chat_json(_parsed(JSON, _whole({k: v for k, v in completion.items() if k != "usage"})))

    def chunk(content=None, usage=False):
        obj = {"object": "chat.completion.chunk", "choices": [] if usage else [{"delta": {"content": content}}]}
        if usage:
            obj["usage"] = {"completion_tokens": 2}
        return b"data: " + json.dumps(obj).encode() + b"\n\n"   # spaced JSON: read by parsing
    good = [chunk("a"), chunk("b"), chunk(usage=True), b"data: [DONE]\n\n"]
    check = check_chat_stream(2)
    assert check(_parsed(SSE_CHAT, _chunked("200 OK", "text/event-stream", good))) is None
    assert "without [DONE]" in check(_parsed(SSE_CHAT, _chunked("200 OK", "text/event-stream", good[:-1])))
    broken = good[:2] + [b'data: {"error": {"message": "the backend broke"}}\n\n'] + good[2:]
    assert "the backend broke" in check(_parsed(SSE_CHAT, _chunked("200 OK", "text/event-stream", broken)))
    assert "after [DONE]" in check(_parsed(SSE_CHAT, _chunked("200 OK", "text/event-stream", good + [chunk("c")])))


def test_the_ollama_checks_want_ollama_objects():
    from bench.client import JSON, NDJSON
    from bench.workloads import check_ollama_json, check_ollama_stream
    done = {"model": "bench", "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop",
            "eval_count": 2}
    whole = {**done, "message": {"role": "assistant", "content": "a b"}}
    assert check_ollama_json(2)(_parsed(JSON, _whole(whole))) is None
    assert "not an Ollama done object" in check_ollama_json(2)(_parsed(JSON, _whole({**whole, "done": False})))
    assert "eval_count 2, expected 3" in check_ollama_json(3)(_parsed(JSON, _whole(whole)))

    def line(obj):
        return json.dumps(obj).encode() + b"\n"
    parts = [line({"model": "bench", "message": {"role": "assistant", "content": w}, "done": False}) for w in "ab"]
    check = check_ollama_stream(2)
    # objects split across HTTP chunks anywhere, the last line without its newline
    raw = b"".join(parts) + line(done)[:-1]
    assert check(_parsed(NDJSON, _chunked("200 OK", "application/x-ndjson", [raw[:7], raw[7:60], raw[60:]]))) is None
    assert "without a done: true" in check(_parsed(NDJSON, _chunked("200 OK", "application/x-ndjson", parts)))
    errored = parts + [line({"error": "the backend broke"})]
    assert "the backend broke" in check(_parsed(NDJSON, _chunked("200 OK", "application/x-ndjson", errored)))
    after = parts + [line(done), parts[0]]
    assert "after the done object" in check(_parsed(NDJSON, _chunked("200 OK", "application/x-ndjson", after)))
    assert "expected 3 message objects" in check_ollama_stream(3)(
        _parsed(NDJSON, _chunked("200 OK", "application/x-ndjson", parts + [line(done)])))
