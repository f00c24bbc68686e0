"""The series a served model registers (bentos/metrics.py), as the dashboards, the alert rules and
the judges' queries name them: for a classifier (ModelMetrics) and a regressor (RegressorMetrics),
every metric's name, type, help text, labels and buckets, and the series visible from the start
(at 0; ``model_info`` at 1). The metrics are made with ``registry=None``, so the test records every
metric prometheus_client constructs while one is built, and reads them back with ``collect()``."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase

from bentos.metrics import ModelMetrics, RegressorMetrics
from rollout.metrics import names

MV = ("model", "version")
SHARED = {
    ("model_requests", "counter", "Requests by endpoint and HTTP status", (*MV, "endpoint", "code"), ()),
    ("model_request_duration_seconds", "histogram", "Server-side handling time of a request",
     (*MV, "endpoint"), (("buckets", names.LATENCY_BUCKETS),)),
    ("model_feature_zscore", "histogram", "Input features as z-scores against the training data",
     (*MV, "feature"), (("buckets", names.ZSCORE_BUCKETS),)),
    ("model_feedback", "counter", "Feedback labels received for earlier predictions", MV, ()),
    ("model_info", "gauge", "1 while the model is loaded", (*MV, "framework_version", "dataset_sha256"),
     (("multiprocess_mode", "max"),)),
}  # fmt: skip
M = {"model": "m", "version": "v1"}
SHARED_SERIES = {
    ("model_feature_zscore_count", (*M.items(), ("feature", "a")), 0.0),
    ("model_feature_zscore_count", (*M.items(), ("feature", "b")), 0.0),
    ("model_feedback_total", tuple(M.items()), 0.0),
    ("model_info", (*M.items(), ("framework_version", "1.5"), ("dataset_sha256", "abc")), 1.0),
}


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> list[MetricWrapperBase]:
    """Every metric (not label child) prometheus_client constructs from now on."""
    made: list[MetricWrapperBase] = []
    init = MetricWrapperBase.__init__

    def recording(self: MetricWrapperBase, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if not kwargs.get("_labelvalues"):
            made.append(self)

    monkeypatch.setattr(MetricWrapperBase, "__init__", recording)
    return made


def registered(made: list[MetricWrapperBase]) -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]]]:
    """(name, type, help, labels, options) of each metric, and (sample, labels, value) of each series
    (without histogram buckets and _created)."""
    metrics, series = set(), set()
    for metric in made:
        for family in metric.collect():
            options = tuple(
                sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in metric._kwargs.items())
            )
            metrics.add((family.name, family.type, family.documentation, tuple(metric._labelnames), options))
            for s in family.samples:
                if "le" not in s.labels and not s.name.endswith("_created"):
                    series.add((s.name, tuple(s.labels.items()), s.value))
    assert len(metrics) == len(made), "two metrics of one name"
    return metrics, series


def test_a_classifier_registers_the_shared_series_and_its_classes_confidence_and_correct_labels(
    made: list[MetricWrapperBase],
) -> None:
    ModelMetrics("m", "v1", ["a", "b"], ["x", "y"], "1.5", "abc")
    metrics, series = registered(made)
    assert metrics == SHARED | {
        ("model_predictions", "counter", "Predicted rows by class", (*MV, "class"), ()),
        ("model_prediction_confidence_ratio", "histogram", "Highest class probability of each predicted row",
         MV, (("buckets", names.CONFIDENCE_BUCKETS),)),
        ("model_feedback_correct", "counter", "Feedback labels equal to the prediction", MV, ()),
    }  # fmt: skip
    assert series == SHARED_SERIES | {
        ("model_predictions_total", (*M.items(), ("class", "x")), 0.0),
        ("model_predictions_total", (*M.items(), ("class", "y")), 0.0),
        ("model_prediction_confidence_ratio_count", tuple(M.items()), 0.0),
        ("model_prediction_confidence_ratio_sum", tuple(M.items()), 0.0),
        ("model_feedback_correct_total", tuple(M.items()), 0.0),
    }


def test_a_regressor_registers_the_shared_series_and_its_values_and_error_sums(
    made: list[MetricWrapperBase],
) -> None:
    RegressorMetrics("m", "v1", ["a", "b"], [10.0, 20.0], "1.5", "abc")
    metrics, series = registered(made)
    assert metrics == SHARED | {
        ("model_prediction_value", "histogram", "Each value the regressor predicted", MV,
         (("buckets", (10.0, 20.0)),)),
        ("model_feedback_absolute_error_sum", "counter", "Sum of |prediction - label| over the labelled rows",
         MV, ()),
        ("model_feedback_squared_error_sum", "counter", "Sum of (prediction - label)^2 over the labelled rows",
         MV, ()),
    }  # fmt: skip
    assert series == SHARED_SERIES | {
        ("model_prediction_value_count", tuple(M.items()), 0.0),
        ("model_prediction_value_sum", tuple(M.items()), 0.0),
        ("model_feedback_absolute_error_sum_total", tuple(M.items()), 0.0),
        ("model_feedback_squared_error_sum_total", tuple(M.items()), 0.0),
    }
