"""NOMYO Router's token statistics routes: ``GET /api/token_counts``, ``POST /api/stats``,
``POST /api/aggregate_time_series_days``.

The shapes are NOMYO Router's. Counts come from the store (``db_token_stats``: every
replica's, when the store is shared), with what this process has counted and not yet
written added (``engine.token_stats``), so a request's tokens show at once. Models are
named as their endpoints know them (``tiny:latest``), as they were counted. These paths
need the admin key once keys are configured (``api.guard.ADMIN_PATHS``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from api.common import gateway_of, json_response, parse_json
from db_token_stats import count_dict, series_entry
from errors import APIError

__all__ = ["router", "MAX_DAYS"]

router = APIRouter()

#: The most ``days`` an aggregation may be asked to keep (a century).
MAX_DAYS = 36_500


def _check_query(request: Request, allowed: frozenset[str]) -> None:
    """APIError 400 ``unknown_parameter`` for a query parameter the route does not take
    (``api_key`` is the guard's)."""
    for name in request.query_params:
        if name not in allowed and name != "api_key":
            raise APIError(400, f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter")


async def _body(request: Request, fields: frozenset[str]) -> dict:
    """The JSON object sent ({} for an empty body); APIError 400 for one that is not an object or
    has a field not in ``fields``."""
    if not (await request.body()).strip():
        return {}
    data = await parse_json(request)
    if not isinstance(data, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_json")
    for name in data:
        if name not in fields:
            raise APIError(400, f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter")
    return data


@router.get("/api/token_counts")
async def token_counts(request: Request) -> Response:
    """Prompt and completion tokens per endpoint and model, as NOMYO Router's ``/api/token_counts``:
    ``{"total_tokens": N, "breakdown": [{"endpoint", "model", "input_tokens", "output_tokens",
    "total_tokens"}]}``, by endpoint then model."""
    _check_query(request, frozenset())
    rows, pending = await gateway_of(request).token_stats.read(lambda store: store.token_counts())
    counts = {(row["endpoint"], row["model"]): row for row in rows}
    for endpoint, model, _, i, o in pending:
        row = counts.setdefault((endpoint, model), count_dict(endpoint, model, 0, 0, 0))
        row["input_tokens"] += i
        row["output_tokens"] += o
        row["total_tokens"] += i + o
    breakdown = [counts[key] for key in sorted(counts)]
    return json_response({"total_tokens": sum(row["total_tokens"] for row in breakdown), "breakdown": breakdown})


async def _model_stats(store: Any, model: str) -> tuple[dict | None, list[dict], dict[str, int]]:
    return (await store.token_counts_for_model(model), await store.token_time_series(model),
            await store.token_endpoint_distribution(model))


def _with_pending(model: str, counts: dict | None, series: list[dict], distribution: dict[str, int],
                  pending: list[tuple]) -> dict | None:
    """The ``/api/stats`` answer of what the store gave with this process's unwritten counts of
    ``model`` added; None when there is nothing of it at all."""
    found = counts is not None
    counts = dict(counts or {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0})
    minutes = {(entry["endpoint"], entry["timestamp"]): entry for entry in series}
    for endpoint, name, minute, i, o in pending:
        if name != model:
            continue
        found = True
        counts["input_tokens"] += i
        counts["output_tokens"] += o
        counts["total_tokens"] += i + o
        distribution[endpoint] = distribution.get(endpoint, 0) + i + o
        entry = minutes.setdefault((endpoint, minute), series_entry(endpoint, 0, 0, 0, minute))
        entry["input_tokens"] += i
        entry["output_tokens"] += o
        entry["total_tokens"] += i + o
    if not found:
        return None
    ordered = sorted(minutes.values(), key=lambda entry: (-entry["timestamp"], entry["endpoint"]))
    return {"model": model, **counts, "time_series": ordered, "endpoint_distribution": distribution}


@router.post("/api/stats")
async def stats(request: Request) -> Response:
    """One model's token statistics, as NOMYO Router's ``/api/stats``: the model named by
    ``{"model": ...}`` or ``?model=``; ``{"model", "input_tokens", "output_tokens", "total_tokens",
    "time_series": [{"endpoint", "input_tokens", "output_tokens", "total_tokens", "timestamp"}]
    (newest first; a minute each, a day each where old minutes were folded and trimmed),
    "endpoint_distribution": {endpoint: total_tokens}}``. 400 without a model, 404 when it has no
    token data."""
    _check_query(request, frozenset({"model"}))
    body = await _body(request, frozenset({"model"}))
    queried = request.query_params.get("model")
    model = body.get("model", queried)
    if "model" in body and queried is not None and body["model"] != queried:
        raise APIError(400, "'model' is given twice (query and body) with different values.", param="model")
    if model is None or model == "":
        raise APIError(400, "Missing required parameter: 'model'.", param="model",
                       code="missing_required_parameter")
    if not isinstance(model, str):
        raise APIError(400, "'model' must be a string.", param="model", code="invalid_type")
    (counts, series, distribution), pending = await gateway_of(request).token_stats.read(
        lambda store: _model_stats(store, model))
    answer = _with_pending(model, counts, series, distribution, pending)
    if answer is None:
        raise APIError(404, f"No token data found for the model '{model}'.", param="model", code="no_token_data")
    return json_response(answer)


@router.post("/api/aggregate_time_series_days")
async def aggregate_time_series_days(request: Request) -> Response:
    """Fold the time series' minutes of whole UTC days older than ``days`` (default 30) into one
    row per endpoint, model and day, as NOMYO Router's ``/api/aggregate_time_series_days``; with
    ``trim_old`` (default false) the folded minutes are deleted. ``{"status": "ok", "days",
    "trim_old", "aggregated_groups"}``: the groups folded now. 400 naming a bad ``days`` (an
    integer from 1 to :data:`MAX_DAYS`) or ``trim_old`` (a boolean)."""
    _check_query(request, frozenset())
    body = await _body(request, frozenset({"days", "trim_old"}))
    days, trim_old = body.get("days", 30), body.get("trim_old", False)
    if type(days) is not int or not 1 <= days <= MAX_DAYS:
        raise APIError(400, f"'days' must be an integer from 1 to {MAX_DAYS}.", param="days", code="invalid_value")
    if not isinstance(trim_old, bool):
        raise APIError(400, "'trim_old' must be a boolean.", param="trim_old", code="invalid_type")
    groups = await gateway_of(request).store.aggregate_time_series_older_than(days, trim_old)
    return json_response({"status": "ok", "days": days, "trim_old": trim_old, "aggregated_groups": groups})
