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

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rollout.metrics import names

if TYPE_CHECKING:
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


class ModelMetrics:
    """The service's series for one model version, with label children bound once at start-up."""

    def __init__(
        self,
        model: str,
        version: str,
        feature_names: list[str],
        class_names: list[str],
        framework_version: str,
        dataset_sha256: str,
    ) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.model, self.version = model, version
        mv = (names.LABEL_MODEL, names.LABEL_VERSION)
        self._requests = Counter(
            names.REQUESTS_TOTAL,
            "Requests by endpoint and HTTP status",
            [*mv, "endpoint", "code"],
            registry=None,
        )
        self._duration = Histogram(
            names.REQUEST_DURATION_SECONDS,
            "Server-side handling time of a request",
            [*mv, "endpoint"],
            buckets=names.LATENCY_BUCKETS,
            registry=None,
        )
        predictions = Counter(
            names.PREDICTIONS_TOTAL, "Predicted rows by class", [*mv, "class"], registry=None
        )
        confidence = Histogram(
            names.PREDICTION_CONFIDENCE,
            "Highest class probability of each predicted row",
            list(mv),
            buckets=names.CONFIDENCE_BUCKETS,
            registry=None,
        )
        zscore = Histogram(
            names.FEATURE_ZSCORE,
            "Input features as z-scores against the training data",
            [*mv, "feature"],
            buckets=names.ZSCORE_BUCKETS,
            registry=None,
        )
        feedback = Counter(
            names.FEEDBACK_TOTAL, "Feedback labels received for earlier predictions", list(mv), registry=None
        )
        correct = Counter(
            names.FEEDBACK_CORRECT_TOTAL, "Feedback labels equal to the prediction", list(mv), registry=None
        )
        info = Gauge(
            names.MODEL_INFO,
            "1 while the model is loaded",
            [*mv, "framework_version", "dataset_sha256"],
            multiprocess_mode="max",
            registry=None,
        )
        info.labels(model, version, framework_version, dataset_sha256).set(1)
        self._class_counters = [predictions.labels(model, version, c) for c in class_names]
        self._confidence = confidence.labels(model, version)
        self._zscores = [zscore.labels(model, version, f) for f in feature_names]
        self._feedback = feedback.labels(model, version)
        self._correct = correct.labels(model, version)
        self._request_children: dict[tuple[str, int], object] = {}
        self._duration_children: dict[str, object] = {}
        for c in self._class_counters:  # make every class visible at 0 from the start
            c.inc(0)
        self._feedback.inc(0)
        self._correct.inc(0)

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        key = (endpoint, status)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._requests.labels(self.model, self.version, endpoint, str(status))
            self._request_children[key] = counter
        counter.inc()  # type: ignore[attr-defined]
        histogram = self._duration_children.get(endpoint)
        if histogram is None:
            histogram = self._duration.labels(self.model, self.version, endpoint)
            self._duration_children[endpoint] = histogram
        histogram.observe(seconds)  # type: ignore[attr-defined]

    def predictions(self, class_index: np.ndarray, confidence: np.ndarray, zscores: np.ndarray) -> None:
        """One call per request: rows' predicted classes, max probabilities, feature z-scores."""
        if len(class_index) == 1:
            self._class_counters[int(class_index[0])].inc()
            self._confidence.observe(float(confidence[0]))
            row = zscores[0]
            for j, child in enumerate(self._zscores):
                child.observe(float(row[j]))
            return
        for k, count in enumerate(np.bincount(class_index, minlength=len(self._class_counters))):
            if count:
                self._class_counters[k].inc(int(count))
        for value in confidence:
            self._confidence.observe(float(value))
        for j, child in enumerate(self._zscores):
            for value in zscores[:, j]:
                child.observe(float(value))

    def feedback(self, received: int, correct: int) -> None:
        self._feedback.inc(received)
        if correct:
            self._correct.inc(correct)


def render(path: Path) -> tuple[bytes, str]:
    """The exposition text aggregated over every worker's files in ``path``."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(path))
    return generate_latest(_Ordered(registry)), CONTENT_TYPE_LATEST


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
