"""Fuzz the Responses routes of a running gateway with schemathesis's Python API.

Run in its own process, outside the repository's ``sys.path``: the gateway's own
``requests`` package would shadow the HTTP library schemathesis needs. Prints one
JSON summary on stdout.

Usage: ``python schemathesis_runner.py SCHEMA_JSON BASE_URL MAX_EXAMPLES BUDGET_SECONDS FIXTURES_JSON``
where FIXTURES_JSON is ``{"response_ids": [...], "item_ids": [...], "model": "..."}``.
"""

from __future__ import annotations

import json
import sys
import time

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

OPERATIONS = [("/v1/responses", "POST"), ("/v1/responses/{response_id}", "GET"),
              ("/v1/responses/{response_id}/cancel", "POST"), ("/v1/responses/{response_id}/input_items", "GET"),
              ("/v1/responses/{response_id}", "DELETE")]        # last: it removes the fixtures


def _describe(case) -> dict:
    body = getattr(case, "body", None)
    try:
        text = json.dumps(body)[:600]
    except (TypeError, ValueError):
        text = repr(body)[:600]
    return {"method": case.method, "path": case.formatted_path, "query": repr(case.query)[:300], "body": text}


def run_operation(schema, path: str, method: str, mode: GenerationMode, base_url: str, max_examples: int,
                  deadline: float, fixtures: dict, summary: dict) -> None:
    operation = schema[path][method]
    strategy = operation.as_strategy(generation_mode=mode)
    key = f"{method} {path} [{mode.value}]"
    stats = summary.setdefault(key, {"examples": 0, "statuses": {}, "server_errors": [], "transport_errors": []})

    @settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=strategy, pick=st.integers(0, 9))
    def fuzz(case, pick):
        if time.monotonic() > deadline:
            return
        if "response_id" in (case.path_parameters or {}) and pick < 6 and fixtures["response_ids"]:
            case.path_parameters["response_id"] = fixtures["response_ids"][pick % len(fixtures["response_ids"])]
        if method == "POST" and path == "/v1/responses" and isinstance(case.body, dict) and pick < 6:
            case.body["model"] = fixtures["model"]
            if pick < 2 and fixtures["response_ids"]:
                case.body["previous_response_id"] = fixtures["response_ids"][pick]
            elif pick == 2 and fixtures["item_ids"]:
                case.body["input"] = [{"type": "item_reference", "id": fixtures["item_ids"][0]}]
        stats["examples"] += 1
        try:
            response = case.call(base_url=base_url, timeout=20)
        except Exception as exc:  # a dropped connection is as bad as a 5xx
            stats["transport_errors"].append({**_describe(case), "error": f"{type(exc).__name__}: {exc}"[:300]})
            return
        code = str(response.status_code)
        stats["statuses"][code] = stats["statuses"].get(code, 0) + 1
        if response.status_code >= 500 and len(stats["server_errors"]) < 5:
            stats["server_errors"].append({**_describe(case), "status": response.status_code,
                                           "answer": response.text[:300]})
        elif response.status_code >= 500:
            stats.setdefault("more_server_errors", 0)
            stats["more_server_errors"] += 1

    try:
        fuzz()
    except Unsatisfiable:  # no invalid request can be generated for this operation in this mode
        stats["unsatisfiable"] = True


def main(argv: list[str]) -> int:
    schema_path, base_url, max_examples, budget, fixtures_json = argv[1:6]
    with open(schema_path) as fh:
        raw = json.load(fh)
    schema = schemathesis.openapi.from_dict(raw)
    fixtures = json.loads(fixtures_json)
    deadline = time.monotonic() + float(budget)
    summary: dict = {}
    started = time.monotonic()
    for path, method in OPERATIONS:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            run_operation(schema, path, method, mode, base_url, int(max_examples), deadline, fixtures, summary)
    print(json.dumps({"schemathesis": schemathesis.__version__, "elapsed": time.monotonic() - started,
                      "budget_exhausted": time.monotonic() > deadline, "operations": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
