"""Prometheus metrics of the model service, correct across the server's worker processes.

``bentoml serve`` runs several worker processes, so the metrics use prometheus_client's
multiprocess mode: each worker writes its values to memory-mapped files in one directory per
server, and ``/metrics`` (any worker) aggregates them. BentoML keeps its own multiprocess directory
under $BENTOML_HOME and *wipes it* whenever another server starts from the same BENTOML_HOME, which
would mix or lose the series of a stable and a canary server running side by side; so each server
gets its own directory, named after the supervisor process (the workers' parent, with its start
time, so a recycled pid never reuses stale files). :func:`use_server_metrics_dir` must run before any
metric is created in the worker. Names come from ``rollout/metrics/names.py``; every series has the
labels ``model`` and ``version``. Called by ``bentos/service.py`` (set-up) and ``bentos/app.py``.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from bentos.background import Periodic
from rollout.metrics import names

if TYPE_CHECKING:
    from prometheus_client import Counter
    from prometheus_client.metrics_core import Metric
    from prometheus_client.samples import Sample

METRICS_DIR_ENV = "BENTO_METRICS_DIR"
_BASE = Path(tempfile.gettempdir()) / "bento-rollout-metrics"


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[19]


def server_metrics_dir() -> Path:
    """This server's directory: $BENTO_METRICS_DIR, else one per supervisor (parent) process."""
    if explicit := os.environ.get(METRICS_DIR_ENV):
        return Path(explicit)
    ppid = os.getppid()
    return _BASE / f"{ppid}-{_start_time(ppid) or 0}"


def _remove_stale_dirs(keep: Path) -> None:
    if not _BASE.is_dir():
        return
    for entry in _BASE.iterdir():
        pid, _, start = entry.name.partition("-")
        if entry == keep or not pid.isdigit():
            continue
        if _start_time(int(pid)) != start:
            shutil.rmtree(entry, ignore_errors=True)


def use_server_metrics_dir() -> Path:
    """Point prometheus_client at this server's directory (call before creating any metric)."""
    path = server_metrics_dir()
    path.mkdir(parents=True, exist_ok=True)
    if METRICS_DIR_ENV not in os.environ:
        with contextlib.suppress(OSError):
            _remove_stale_dirs(path)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return path


class _Histograms:
    """Observations for label children of one histogram, buffered in numpy arrays.

    The hot path only bumps bucket counts and sums in memory; ``flush()`` adds them to the shared
    multiprocess files (one file write per non-empty bucket, not per observation). Non-cumulative
    bucket counts, as prometheus_client stores them: a value goes to the first bucket whose upper
    bound is >= the value.
    """

    def __init__(self, children: list[Any]) -> None:
        for child in children:
            if not (
                hasattr(child, "_buckets") and hasattr(child, "_sum") and hasattr(child, "_upper_bounds")
            ):
                raise RuntimeError(
                    "prometheus_client's Histogram has changed; bentos/metrics.py needs updating"
                )
        self.children = children
        # without +Inf; no children (a model without numeric features has no z-scores): no bounds
        upper = children[0]._upper_bounds[:-1] if children else []
        self.bounds = np.asarray(upper, dtype=np.float64)
        self._bound_list = self.bounds.tolist()
        self._rows = np.arange(len(children))
        self.counts = np.zeros((len(children), len(self.bounds) + 1), dtype=np.int64)
        self.sums = np.zeros(len(children), dtype=np.float64)

    def observe_row(self, values: np.ndarray) -> None:
        """One value per child."""
        self.counts[self._rows, np.searchsorted(self.bounds, values)] += 1
        self.sums += values

    def observe_scalar(self, value: float) -> None:
        """For a histogram with one child."""
        self.counts[0, bisect.bisect_left(self._bound_list, value)] += 1
        self.sums[0] += value

    def observe_matrix(self, values: np.ndarray) -> None:
        """An (n, children) matrix: n values per child."""
        for j in range(len(self.children)):
            np.add.at(self.counts[j], np.searchsorted(self.bounds, values[:, j]), 1)
        self.sums += values.sum(axis=0)

    def take(self) -> tuple[np.ndarray, np.ndarray]:
        counts, sums = self.counts, self.sums
        self.counts = np.zeros_like(counts)
        self.sums = np.zeros_like(sums)
        return counts, sums

    def write(self, counts: np.ndarray, sums: np.ndarray) -> None:
        for i, child in enumerate(self.children):
            for bucket in np.flatnonzero(counts[i]):
                child._buckets[bucket].inc(int(counts[i, bucket]))
            if counts[i].any():
                child._sum.inc(float(sums[i]))


class _VersionMetrics:
    """The series every served model has: requests, their durations, the numeric input features'
    z-scores (``feature_names``: those features), ``model_info`` and the feedback labels received.
    Each task's class adds its own series in its constructor, with the same builders
    (:meth:`_metric`, :meth:`_counter`, :meth:`_histogram`).

    Label children are bound once at start-up and observations are buffered per worker (see
    :class:`_Histograms`); a background thread writes them to the server's shared files every
    ``flush_interval`` seconds and ``/metrics`` flushes its own worker first, so a scrape is at most
    ``flush_interval`` behind for requests answered by other workers.
    """

    def __init__(
        self,
        model: str,
        version: str,
        feature_names: list[str],
        framework_version: str,
        dataset_sha256: str,
        flush_interval: float = 0.5,
    ) -> None:
        self.model, self.version = model, version
        self.flush_interval = flush_interval
        self._requests = self._metric(
            "Counter", names.REQUESTS_TOTAL, "Requests by endpoint and HTTP status", "endpoint", "code"
        )
        self._duration = self._metric(
            "Histogram", names.REQUEST_DURATION_SECONDS, "Server-side handling time of a request", "endpoint",
            buckets=names.LATENCY_BUCKETS,
        )  # fmt: skip
        zscore = self._metric(
            "Histogram", names.FEATURE_ZSCORE, "Input features as z-scores against the training data", "feature",
            buckets=names.ZSCORE_BUCKETS,
        )  # fmt: skip
        info = self._metric(
            "Gauge", names.MODEL_INFO, "1 while the model is loaded", "framework_version", "dataset_sha256",
            multiprocess_mode="max",
        )  # fmt: skip
        info.labels(model, version, framework_version, dataset_sha256).set(1)
        self._zscores = _Histograms([zscore.labels(model, version, f) for f in feature_names])
        self._feedback = self._counter(
            names.FEEDBACK_TOTAL, "Feedback labels received for earlier predictions"
        )
        self._request_counts: dict[tuple[str, int], int] = {}
        self._durations: dict[str, _Histograms] = {}
        self._lock = threading.Lock()
        self._flusher = Periodic("metrics-flush", flush_interval, self.flush)

    def _metric(
        self,
        kind: Literal["Counter", "Histogram", "Gauge"],
        name: str,
        documentation: str,
        *labels: str,
        **options: Any,
    ) -> Any:
        """A prometheus_client ``kind`` (Counter, Histogram, Gauge) with the labels model, version and
        ``labels``, in no registry (``/metrics`` reads the multiprocess files)."""
        import prometheus_client  # not before use_server_metrics_dir: it picks the mode on import

        labelnames = [names.LABEL_MODEL, names.LABEL_VERSION, *labels]
        return getattr(prometheus_client, kind)(name, documentation, labelnames, registry=None, **options)

    def _counter(self, name: str, documentation: str) -> Counter:
        """A counter of this model version, at 0 from the start (increase() sees its first count)."""
        counter: Counter = self._metric("Counter", name, documentation).labels(self.model, self.version)
        counter.inc(0)
        return counter

    def _histogram(self, name: str, documentation: str, buckets: Sequence[float]) -> _Histograms:
        """A histogram of this model version, its observations buffered (:class:`_Histograms`)."""
        histogram = self._metric("Histogram", name, documentation, buckets=buckets)
        return _Histograms([histogram.labels(self.model, self.version)])

    def start(self) -> None:
        self._flusher.start()

    def close(self) -> None:
        self._flusher.stop()

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        key = (endpoint, status)
        with self._lock:
            self._request_counts[key] = self._request_counts.get(key, 0) + 1
            histogram = self._durations.get(endpoint)
            if histogram is None:
                histogram = _Histograms([self._duration.labels(self.model, self.version, endpoint)])
                self._durations[endpoint] = histogram
            histogram.observe_scalar(seconds)

    def _take_outputs(self) -> Any:
        """Under the lock: what the task's own series buffered (written by ``_write_outputs``)."""
        raise NotImplementedError

    def _write_outputs(self, taken: Any) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """Add everything buffered since the last flush to the shared files (thread-safe)."""
        with self._lock:
            outputs = self._take_outputs()
            zscores = self._zscores.take()
            requests, self._request_counts = self._request_counts, {}
            durations = [(histogram, histogram.take()) for histogram in self._durations.values()]
        self._write_outputs(outputs)
        self._zscores.write(*zscores)
        for (endpoint, status), count in requests.items():
            self._requests.labels(self.model, self.version, endpoint, str(status)).inc(count)
        for histogram, taken in durations:
            histogram.write(*taken)


class ModelMetrics(_VersionMetrics):
    """A classifier's series: the shared ones, and per-class prediction counters, the confidence
    histogram and the labels that matched."""

    def __init__(
        self,
        model: str,
        version: str,
        feature_names: list[str],
        class_names: list[str],
        framework_version: str,
        dataset_sha256: str,
        flush_interval: float = 0.5,
    ) -> None:
        super().__init__(model, version, feature_names, framework_version, dataset_sha256, flush_interval)
        predictions = self._metric("Counter", names.PREDICTIONS_TOTAL, "Predicted rows by class", "class")
        self._class_counters = [predictions.labels(model, version, c) for c in class_names]
        for c in self._class_counters:  # every class visible at 0 from the start
            c.inc(0)
        self._class_counts = np.zeros(len(class_names), dtype=np.int64)
        self._confidence = self._histogram(
            names.PREDICTION_CONFIDENCE,
            "Highest class probability of each predicted row",
            names.CONFIDENCE_BUCKETS,
        )
        self._correct = self._counter(names.FEEDBACK_CORRECT_TOTAL, "Feedback labels equal to the prediction")

    def predictions(self, class_index: np.ndarray, confidence: np.ndarray, zscores: np.ndarray) -> None:
        """One call per request: rows' predicted classes, max probabilities, feature z-scores."""
        with self._lock:
            if len(class_index) == 1:
                self._class_counts[class_index[0]] += 1
                self._confidence.observe_row(confidence)
                self._zscores.observe_row(zscores[0])
            else:
                self._class_counts += np.bincount(class_index, minlength=len(self._class_counts))
                self._confidence.observe_matrix(confidence.reshape(-1, 1))
                self._zscores.observe_matrix(zscores)

    def feedback(self, received: int, correct: int) -> None:
        """Rare (one per feedback request): written straight to the shared files."""
        self._feedback.inc(received)
        if correct:
            self._correct.inc(correct)

    def _take_outputs(self) -> Any:
        classes, self._class_counts = self._class_counts, np.zeros_like(self._class_counts)
        return classes, self._confidence.take()

    def _write_outputs(self, taken: Any) -> None:
        classes, confidence = taken
        for k in np.flatnonzero(classes):
            self._class_counters[k].inc(int(classes[k]))
        self._confidence.write(*confidence)


class RegressorMetrics(_VersionMetrics):
    """A regressor's series: the predicted values' histogram (``buckets``: the metadata's
    ``prediction_buckets``) and the labelled rows' absolute and squared error sums."""

    def __init__(
        self,
        model: str,
        version: str,
        feature_names: list[str],
        buckets: list[float],
        framework_version: str,
        dataset_sha256: str,
        flush_interval: float = 0.5,
    ) -> None:
        super().__init__(model, version, feature_names, framework_version, dataset_sha256, flush_interval)
        self._values = self._histogram(names.PREDICTION_VALUE, "Each value the regressor predicted", buckets)
        self._absolute = self._counter(
            names.FEEDBACK_ABSOLUTE_ERROR_SUM, "Sum of |prediction - label| over the labelled rows"
        )
        self._squared = self._counter(
            names.FEEDBACK_SQUARED_ERROR_SUM, "Sum of (prediction - label)^2 over the labelled rows"
        )

    def values(self, predicted: np.ndarray, zscores: np.ndarray) -> None:
        """One call per request: the rows' predicted values and feature z-scores."""
        with self._lock:
            if len(predicted) == 1:
                self._values.observe_row(predicted)
                self._zscores.observe_row(zscores[0])
            else:
                self._values.observe_matrix(predicted.reshape(-1, 1))
                self._zscores.observe_matrix(zscores)

    def feedback(self, received: int, absolute_error: float, squared_error: float) -> None:
        """Rare (one per feedback request): written straight to the shared files."""
        self._feedback.inc(received)
        self._absolute.inc(absolute_error)
        self._squared.inc(squared_error)

    def _take_outputs(self) -> Any:
        return self._values.take()

    def _write_outputs(self, taken: Any) -> None:
        self._values.write(*taken)


def render(path: Path) -> tuple[bytes, str]:
    """The exposition text aggregated over every worker's files in ``path``."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(path))
    text = generate_latest(_Ordered(registry))
    for name in _NOT_TOTAL:
        text = text.replace(name + b"_total", name)
    return text, CONTENT_TYPE_LATEST


# counters whose contract name (rollout/metrics/names.py) does not end in _total: prometheus_client
# exposes a Counter as <name>_total, so the exposition text gets their own names back (the text
# format allows a counter of any name; bentos/join_exporter.py exports them so too)
_NOT_TOTAL = (names.FEEDBACK_ABSOLUTE_ERROR_SUM.encode(), names.FEEDBACK_SQUARED_ERROR_SUM.encode())


_SUFFIX_ORDER = {"_bucket": 0, "_count": 1, "_sum": 2}


class _Ordered:
    """The multiprocess collector emits a histogram's _sum before its buckets; put buckets first,
    in ascending ``le`` order, as the exposition format has them."""

    def __init__(self, registry: object) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for metric in self.registry.collect():  # type: ignore[attr-defined]
            if metric.type == "histogram":
                metric.samples.sort(key=_sample_key)
            yield metric


def _sample_key(sample: Sample) -> tuple[tuple[tuple[str, str], ...], int, float]:
    labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
    suffix = sample.name[sample.name.rfind("_") :]
    le = sample.labels.get("le")
    return labels, _SUFFIX_ORDER.get(suffix, 3), float(le) if le is not None else 0.0
