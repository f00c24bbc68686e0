"""PrometheusProvider: the MetricProvider over Prometheus' HTTP API (instant queries, httpx).

Errors are translated once, here: Prometheus unreachable, timing out or answering 5xx ->
``MetricsUnavailableError`` (temporary: the rollout pauses, it never promotes); a query Prometheus
rejects (bad PromQL, 400/422) or one that yields no value, several values or NaN ->
``MetricQueryError``. Who calls it: the local runner and the controller (for analysis
measurements), the demo's plots (``query_range``).
"""

from __future__ import annotations

import math
from typing import Any

import httpx

from rollout.errors import MetricQueryError, MetricsUnavailableError


def series_key(labels: dict[str, str]) -> str:
    """How ``query_vector`` names a series: the value of its only label, else ``a=1,b=2`` sorted."""
    labels = {k: v for k, v in labels.items() if k != "__name__"}
    if len(labels) == 1:
        return next(iter(labels.values()))
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


class PrometheusProvider:
    """Instant (and range) queries against one Prometheus, e.g. ``http://127.0.0.1:9090``."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._client = httpx.Client(timeout=timeout)

    def _api(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        try:
            resp = self._client.post(f"{self.url}{path}", data=params)
        except httpx.HTTPError as exc:
            raise MetricsUnavailableError(
                f"Prometheus at {self.url} is unreachable ({type(exc).__name__}: {exc}); "
                "no promotion until it answers",
                delay=2.0,
            ) from exc
        try:
            body = resp.json()
        except ValueError:
            body = {}
        if resp.status_code in (400, 422):
            raise MetricQueryError(
                f"Prometheus rejected the query {params.get('query')!r}: {body.get('error', resp.text)}"
            )
        if resp.status_code != 200 or body.get("status") != "success":
            raise MetricsUnavailableError(
                f"Prometheus at {self.url} answered {resp.status_code}: {body.get('error', resp.text[:200])}",
                delay=2.0,
            )
        return dict(body["data"])

    def _instant(self, query: str) -> dict[str, Any]:
        return self._api("/api/v1/query", {"query": query})

    def run_query(self, query: str) -> float:
        """The single number ``query`` yields now. MetricQueryError for none, several or NaN."""
        data = self._instant(query)
        kind, result = data["resultType"], data["result"]
        if kind == "scalar":
            value = float(result[1])
        elif kind == "vector":
            if not result:
                raise MetricQueryError(f"query returned no value (no matching series yet?): {query}")
            if len(result) > 1:
                names = ", ".join("{" + series_key(r["metric"]) + "}" for r in result[:5])
                raise MetricQueryError(
                    f"query returned {len(result)} values where one was expected ({names}); "
                    f"aggregate it, e.g. sum(...): {query}"
                )
            value = float(result[0]["value"][1])
        else:
            raise MetricQueryError(f"query returned a {kind}, not a number: {query}")
        if math.isnan(value):
            raise MetricQueryError(f"query returned NaN (no traffic in the window?): {query}")
        return value

    def query_vector(self, query: str) -> dict[str, float]:
        """Every series of an instant vector, keyed by ``series_key``; empty when there is none."""
        data = self._instant(query)
        if data["resultType"] == "scalar":
            return {"": float(data["result"][1])}
        if data["resultType"] != "vector":
            raise MetricQueryError(f"query returned a {data['resultType']}, not a vector: {query}")
        out: dict[str, float] = {}
        for r in data["result"]:
            key = series_key(r["metric"])
            if key in out:
                raise MetricQueryError(
                    f"two series share the key {key!r}; aggregate by fewer labels: {query}"
                )
            out[key] = float(r["value"][1])
        return out

    def query_range(
        self, query: str, start: float, end: float, step: float
    ) -> dict[str, list[tuple[float, float]]]:
        """Series of (unix time, value) between ``start`` and ``end`` (unix seconds), for plots."""
        data = self._api("/api/v1/query_range", {"query": query, "start": start, "end": end, "step": step})
        return {
            series_key(r["metric"]): [(float(t), float(v)) for t, v in r["values"]] for r in data["result"]
        }

    def is_online(self) -> bool:
        try:
            return self._client.get(f"{self.url}/-/ready").status_code == 200
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        self._client.close()
