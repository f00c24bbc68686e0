"""PrometheusProvider: the MetricProvider over Prometheus' HTTP API (instant queries, httpx).

Errors are translated once, here: Prometheus unreachable, timing out, answering 5xx or answering
with something that is not its API's JSON envelope -> ``MetricsUnavailableError`` (temporary: the
rollout pauses, it never promotes); a query Prometheus rejects (bad PromQL, 400/422), one that yields
no value, several values or NaN, or a result that is not made of numbers -> ``MetricQueryError``.
Nothing else escapes a query (no KeyError / ValueError / TypeError from an odd body), and no
message carries more of an answer than ``excerpt`` gives (at most 120 printable ASCII characters on
one line, terminal escapes dropped): a status, an Event or a log line never holds a body, nor an
``error`` field a server made up. Redirects are never followed.

A hung Prometheus (stopped, swapping, stuck on a query) must cost an analysis round at most about one
``timeout``, not one per query: every wait (connect, read, write, pool) is bounded by ``timeout``
(2 s), and so is reading a body once it starts (a server that drips it out byte by byte; no more
than ``MAX_ANSWER``, 16 MiB, of one is read); once a query finds Prometheus unavailable every
query fails at once with the same message for ``hold_off`` seconds (a small circuit breaker); the
first query after that tries again.
Only a time-out opens it: a refused connection or a 5xx answers at once anyway.
Who calls it: the local runner and the controller (for analysis measurements), the demo's plots
(``query_range``).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from rollout.errors import MetricQueryError, MetricsUnavailableError, excerpt

DEFAULT_TIMEOUT = 2.0  # seconds per connect / read / write wait: a hang is noticed within one interval
DEFAULT_HOLD_OFF = 2.0  # seconds queries fail fast after Prometheus was found unavailable
MAX_ANSWER = 16 << 20  # bytes of an answer read: a query's answer here is kilobytes
_NO_PROMOTION = "no promotion until it answers"


def series_key(labels: dict[str, str]) -> str:
    """How ``query_vector`` names a series: the value of its only label, else ``a=1,b=2`` sorted."""
    labels = {k: v for k, v in labels.items() if k != "__name__"}
    if len(labels) == 1:
        return next(iter(labels.values()))
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _malformed(query: str, what: str, raw: Any) -> MetricQueryError:
    """``raw``, the part of the answer that is wrong, is quoted as an excerpt only."""
    return MetricQueryError(f"Prometheus answered with a malformed result ({what}: {excerpt(raw)}): {query}")


def _number(raw: Any, query: str) -> float:
    """A sample value as Prometheus encodes it (a string: "1.5", "NaN", "+Inf") -> float."""
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise _malformed(query, "a value is not a number", raw)
    try:
        return float(raw)
    except ValueError:
        raise _malformed(query, "a value is not a number", raw) from None


def _point(raw: Any, query: str) -> tuple[float, float]:
    """``[<unix time>, "<value>"]`` -> (time, value)."""
    if not isinstance(raw, list | tuple) or len(raw) != 2:
        raise _malformed(query, "a sample is not [time, value]", raw)
    return _number(raw[0], query), _number(raw[1], query)


def _series(result: Any, query: str) -> list[tuple[dict[str, str], dict[str, Any]]]:
    """An instant vector's or a matrix's ``result`` -> (labels, series) pairs, checked."""
    if not isinstance(result, list):
        raise _malformed(query, "the result is not a list of series", result)
    out = []
    for item in result:
        labels = item.get("metric", {}) if isinstance(item, dict) else None
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            raise _malformed(query, "a series has no label set", item)
        out.append((labels, item))
    return out


class PrometheusProvider:
    """Instant (and range) queries against one Prometheus, e.g. ``http://127.0.0.1:9090``.

    ``timeout`` bounds each connect / read / write wait of a request; ``hold_off`` is how long
    queries fail fast after one found Prometheus unavailable; ``clock`` is monotonic seconds;
    ``transport``: httpx's own by default (the controller's checks where it connects: guard.py).
    """

    def __init__(
        self,
        url: str,
        timeout: float = DEFAULT_TIMEOUT,
        hold_off: float = DEFAULT_HOLD_OFF,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.hold_off = hold_off
        self._clock = clock
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout), transport=transport, follow_redirects=False
        )
        self._lock = threading.Lock()
        self._down: str | None = None  # the message of the failure that opened the breaker
        self._down_until = 0.0

    # --- the circuit breaker ---------------------------------------------------------------------

    def _fail_fast(self) -> None:
        with self._lock:
            if self._down is None:
                return
            left = self._down_until - self._clock()
            message = self._down
        if left > 0:
            raise MetricsUnavailableError(message, delay=left)

    def _opened(self, exc: MetricsUnavailableError) -> None:
        with self._lock:
            self._down, self._down_until = exc.message, self._clock() + self.hold_off

    def _closed(self) -> None:
        with self._lock:
            self._down = None

    # --- HTTP ------------------------------------------------------------------------------------

    def _api(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        """The ``data`` of a successful answer; the errors of the module docstring otherwise."""
        self._fail_fast()
        try:
            data = self._request(path, params)
        except MetricsUnavailableError as exc:
            # only an answer that never came opens the breaker: a refused connection or a 5xx is
            # answered at once, so trying again costs nothing (and finds a restarted Prometheus)
            if isinstance(exc.__cause__, httpx.TimeoutException):
                self._opened(exc)
            raise
        except MetricQueryError:
            self._closed()  # it answered
            raise
        self._closed()
        return data

    def _request(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        try:
            with self._client.stream("POST", f"{self.url}{path}", data=params) as resp:
                raw = self._read(resp)
        except httpx.TimeoutException as exc:
            raise MetricsUnavailableError(
                f"Prometheus at {self.url} is unreachable (no answer within {self.timeout:g} s: "
                f"{type(exc).__name__}); {_NO_PROMOTION}",
                delay=self.hold_off,
            ) from exc
        except httpx.HTTPError as exc:
            raise MetricsUnavailableError(
                f"Prometheus at {self.url} is unreachable ({type(exc).__name__}: {excerpt(exc)}); "
                f"{_NO_PROMOTION}",
                delay=self.hold_off,
            ) from exc
        text = raw.decode(resp.encoding or "utf-8", errors="replace")
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):  # not JSON (also not UTF-8; nested past the parser's depth)
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        said = excerpt(error or text) or "(empty)"  # all of the answer a message may quote
        if resp.status_code in (400, 422):
            raise MetricQueryError(f"Prometheus rejected the query {params.get('query')!r}: {said}")
        if resp.status_code != 200 or not isinstance(body, dict) or body.get("status") != "success":
            raise MetricsUnavailableError(
                f"Prometheus at {self.url} answered {resp.status_code}: {said}; {_NO_PROMOTION}",
                delay=self.hold_off,
            )
        data = body.get("data")
        if not isinstance(data, dict) or not isinstance(data.get("resultType"), str) or "result" not in data:
            raise MetricsUnavailableError(
                f"Prometheus at {self.url} answered without a result (not its query API?): "
                f"{excerpt(text)}; {_NO_PROMOTION}",
                delay=self.hold_off,
            )
        return data

    def _read(self, resp: httpx.Response) -> bytes:
        """The body, read within ``timeout`` of its start (a server that drips it out is as good as
        hung: httpx.ReadTimeout) and at most ``MAX_ANSWER`` bytes (more is not a query's answer)."""
        deadline = time.monotonic() + self.timeout
        chunks: list[bytes] = []
        size = 0
        for chunk in resp.iter_bytes():
            size += len(chunk)
            if size > MAX_ANSWER:
                raise MetricsUnavailableError(
                    f"Prometheus at {self.url} answered more than {MAX_ANSWER >> 20} MiB (not its query "
                    f"API?); {_NO_PROMOTION}",
                    delay=self.hold_off,
                )
            chunks.append(chunk)
            if time.monotonic() > deadline:
                raise httpx.ReadTimeout("the answer did not arrive within the timeout", request=resp.request)
        return b"".join(chunks)

    def _instant(self, query: str) -> tuple[str, Any]:
        data = self._api("/api/v1/query", {"query": query})
        return data["resultType"], data["result"]

    # --- MetricProvider --------------------------------------------------------------------------

    def run_query(self, query: str) -> float:
        """The single number ``query`` yields now. MetricQueryError for none, several or NaN."""
        kind, result = self._instant(query)
        if kind == "scalar":
            value = _point(result, query)[1]
        elif kind == "vector":
            series = _series(result, query)
            if not series:
                raise MetricQueryError(f"query returned no value (no matching series yet?): {query}")
            if len(series) > 1:
                names = excerpt(", ".join("{" + series_key(labels) + "}" for labels, _ in series[:5]))
                raise MetricQueryError(
                    f"query returned {len(series)} values where one was expected ({names}); "
                    f"aggregate it, e.g. sum(...): {query}"
                )
            value = _point(series[0][1].get("value"), query)[1]
        else:
            raise MetricQueryError(f"query returned a {excerpt(kind, 20)}, not a number: {query}")
        if math.isnan(value):
            raise MetricQueryError(f"query returned NaN (no traffic in the window?): {query}")
        return value

    def query_vector(self, query: str) -> dict[str, float]:
        """Every series of an instant vector, keyed by ``series_key``; empty when there is none.

        A NaN sample stays NaN (Prometheus' value of 0/0; the sampler reads it as 0)."""
        kind, result = self._instant(query)
        if kind == "scalar":
            return {"": _point(result, query)[1]}
        if kind != "vector":
            raise MetricQueryError(f"query returned a {excerpt(kind, 20)}, not a vector: {query}")
        out: dict[str, float] = {}
        for labels, r in _series(result, query):
            key = series_key(labels)
            if key in out:
                raise MetricQueryError(
                    f"two series share the key {excerpt(key)}; aggregate by fewer labels: {query}"
                )
            out[key] = _point(r.get("value"), query)[1]
        return out

    def query_range(
        self, query: str, start: float, end: float, step: float
    ) -> dict[str, list[tuple[float, float]]]:
        """Series of (unix time, value) between ``start`` and ``end`` (unix seconds), for plots."""
        data = self._api("/api/v1/query_range", {"query": query, "start": start, "end": end, "step": step})
        out: dict[str, list[tuple[float, float]]] = {}
        for labels, r in _series(data["result"], query):
            values = r.get("values")
            if not isinstance(values, list):
                raise _malformed(query, "a series has no values", r)
            out[series_key(labels)] = [_point(v, query) for v in values]
        return out

    def is_online(self) -> bool:
        try:
            return self._client.get(f"{self.url}/-/ready").status_code == 200
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        self._client.close()
