"""What a request needs of the loaded model, computed once at start-up: a classifier or a regressor.

``bentos/service.py`` builds one with :func:`serve_model` (the model's metadata says its task) and
binds it to the ASGI app (``bentos/app.py``), which calls the same few methods for either task:

- ``predict_body`` / ``infer_body``: predict, record the answer for the feedback join, count it in
  the metrics, and return the JSON answer of ``/predict`` or ``/v2/.../infer``. A classifier
  answers class names and probabilities (``predictions`` BYTES, ``probabilities`` FP64); a
  regressor its predicted values (one FP64 output ``predictions``);
- ``parse_labels``: a ``/feedback`` body to labels (class indices; a regressor's numbers);
- ``count_feedback`` and ``feedback_answer``: what a resolved label adds to ``/metrics`` (the local
  join store) and to the answer.

What each task answers is said once, here, and ``bentos/openapi.py`` describes it from the same
place (:func:`served_class`): ``oip_outputs`` (the ``/v2`` outputs; their names are the fields of
``/predict``'s answer) and ``feedback_fields`` (the fields of :class:`bentos.join.Resolved` a
``/feedback`` answer carries).

The classifier's hot path is the one the serving benchmark measures (bench/serving.py): nothing
of the regressor's runs for it. A model with string features gets a ``Table`` from the parser
(bentos/tabular.py): the estimator is called with its DataFrame, the z-scores are of its numeric
features only; a numeric model's matrix goes straight to the estimator, as before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bentos.join import FeedbackAuth, Join, Resolved
from bentos.metrics import ModelMetrics, RegressorMetrics
from bentos.parsing import BadRequest, Feedback, Schema, parse_feedback, parse_value_feedback
from bentos.tabular import Table, sample, v2_inputs
from rollout.errors import ModelError
from rollout.registry import REGRESSION, LoadedModel, ModelMetadata

NUMPY = orjson.OPT_SERIALIZE_NUMPY


@dataclass(frozen=True)
class Limits:
    max_batch: int = 1000
    max_body_bytes: int = 1 << 20


class ServedModel:
    """What both tasks share: identity, input schema, reference statistics, join store; the
    methods the app calls, which each task implements."""

    metrics: ModelMetrics | RegressorMetrics
    feedback_fields: tuple[str, ...]  # the fields of bentos.join.Resolved a /feedback answer carries

    def __init__(
        self,
        loaded: LoadedModel,
        limits: Limits,
        metrics_dir: Path,
        feedback: Join,
        auth: FeedbackAuth | None = None,
    ) -> None:
        meta = loaded.record.metadata
        self.estimator = loaded.estimator
        self.name = loaded.record.name
        self.version = loaded.record.version
        self.class_names = list(meta.class_names)
        # the numeric features' means and stds (all features of a model without string ones)
        self.means = np.asarray(meta.feature_means, dtype=np.float64)
        self.stds = np.where(np.asarray(meta.feature_stds) > 0, np.asarray(meta.feature_stds), 1.0)
        self.schema = Schema(tuple(meta.feature_names), limits.max_batch, tuple(meta.dtypes))
        self.numeric_features = meta.numeric_features
        self.categories = dict(meta.feature_categories)
        self.metrics_dir = metrics_dir
        self.feedback = feedback
        self.auth = auth or FeedbackAuth(None)
        self.base_headers = [
            (b"x-model-name", self.name.encode()),
            (b"x-model-version", self.version.encode()),
        ]
        self._prepare(meta)
        self.metrics = self._make_metrics(meta)
        outputs, parameters = self._outputs(meta)
        self.v2_metadata = self._v2_metadata(loaded, outputs, **parameters)

    def _prepare(self, meta: ModelMetadata) -> None:
        """What the task computes of the model before its metrics (a classifier: its classes)."""

    def _make_metrics(self, meta: ModelMetadata) -> ModelMetrics | RegressorMetrics:
        raise NotImplementedError

    def _outputs(self, meta: ModelMetadata) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The OIP outputs of ``/v2/models/<name>`` and the task's own metadata parameters."""
        raise NotImplementedError

    @staticmethod
    def oip_outputs(class_names: list[str]) -> list[dict[str, Any]]:
        """The task's OIP outputs (name, datatype, shape with -1 for the rows), in the order of its
        ``/v2`` answer; their names are the fields of its ``/predict`` answer, the same values."""
        raise NotImplementedError

    def sample_input(self) -> np.ndarray | Table:
        """One row of the features' means (string features: their first category), to warm up with."""
        if self.schema.tabular:
            return sample(self.schema, self.means.tolist(), self.categories)
        return self.means.reshape(1, -1)

    @staticmethod
    def on_frame(method: Callable[[Any], np.ndarray], table: Table) -> np.ndarray:
        """``method`` (predict_proba, predict) of a Table's DataFrame; a 422 with the model's own
        message when it refuses the rows (a OneHotEncoder(handle_unknown="error") and a category
        the holdout did not have)."""
        try:
            return method(table.frame)
        except ValueError as exc:
            message = (str(exc).splitlines() or [""])[0][:300]
            raise BadRequest(422, "refused_by_model", f"the model refuses these rows: {message}") from None

    def warm_up(self, X: np.ndarray | Table) -> None:
        raise NotImplementedError

    def predict_body(self, X: np.ndarray | Table, request_id: str) -> bytes:
        raise NotImplementedError

    def infer_body(self, X: np.ndarray | Table, request_id: str, v2_id: str | None) -> bytes:
        raise NotImplementedError

    def parse_labels(self, body: bytes) -> Feedback:
        raise NotImplementedError

    def count_feedback(self, resolved: Resolved) -> None:
        raise NotImplementedError

    def feedback_answer(self, resolved: Resolved) -> dict[str, Any]:
        return {f: getattr(resolved, f) for f in self.feedback_fields}

    def _v2_metadata(self, loaded: LoadedModel, outputs: list[dict[str, Any]], **parameters: Any) -> bytes:
        meta = loaded.record.metadata
        if self.schema.tabular:  # one input per feature, named after it
            inputs = v2_inputs(self.schema)
            parameters["feature_categories"] = self.categories
        else:  # one 2-D input (or one per feature, FP64, named after it: accepted too)
            inputs = [{"name": "input-0", "datatype": "FP64", "shape": [-1, len(meta.feature_names)]}]
        return orjson.dumps(
            {
                "name": self.name,
                "versions": [self.version],
                "platform": "sklearn",
                "inputs": inputs,
                "outputs": outputs,
                "parameters": {
                    "feature_names": meta.feature_names,
                    "feature_dtypes": meta.dtypes,
                    **parameters,
                    "digest": loaded.record.digest,
                },
            }
        )


class Served(ServedModel):
    """A classifier: class names and probabilities."""

    metrics: ModelMetrics
    feedback_fields = ("received", "correct")

    def _prepare(self, meta: ModelMetadata) -> None:
        self.classes = np.asarray(self.estimator.classes_)
        self.column_class = column_classes(self.classes, self.class_names)
        # a classifier without predict_proba (LinearSVC, RidgeClassifier...) answers one-hot
        # probabilities: its predicted class with confidence 1
        self.has_proba = hasattr(self.estimator, "predict_proba")

    def _make_metrics(self, meta: ModelMetadata) -> ModelMetrics:
        return ModelMetrics(
            self.name, self.version, self.numeric_features, self.class_names, meta.sklearn_version,
            meta.dataset_sha256,
        )  # fmt: skip

    def _outputs(self, meta: ModelMetadata) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        return self.oip_outputs(self.class_names), {"class_names": self.class_names}

    @staticmethod
    def oip_outputs(class_names: list[str]) -> list[dict[str, Any]]:
        return [
            {"name": "predictions", "datatype": "BYTES", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP64", "shape": [-1, len(class_names)]},
        ]

    def warm_up(self, X: np.ndarray | Table) -> None:
        self.probabilities(X.frame if type(X) is Table else X)

    def probabilities(self, X: Any) -> np.ndarray:
        """One row of class probabilities per row of ``X`` (a matrix or a DataFrame), columns in
        ``classes_`` order."""
        if self.has_proba:
            return np.asarray(self.estimator.predict_proba(X), dtype=np.float64)
        columns = np.searchsorted(self.classes, self.estimator.predict(X))  # classes_ is sorted
        proba = np.zeros((len(X), len(self.classes)), dtype=np.float64)
        proba[np.arange(len(X)), columns] = 1.0
        return proba

    def predict(self, X: np.ndarray | Table, request_id: str) -> tuple[list[str], np.ndarray]:
        if type(X) is Table:
            proba, X = self.on_frame(self.probabilities, X), X.numeric
        else:
            proba = self.probabilities(X)
        if not np.isfinite(proba).all():  # e.g. 1e308 overflows inside the model: no answer is better
            raise BadRequest(
                422, "value_out_of_range", "feature values this large make the model's output overflow"
            )
        best = proba.argmax(axis=1)
        classes = self.column_class[best]
        self.metrics.predictions(classes, proba[np.arange(len(best)), best], (X - self.means) / self.stds)
        predicted = classes.tolist()
        self.feedback.record(request_id, predicted)
        names = self.class_names
        return [names[c] for c in predicted], proba

    def predict_body(self, X: np.ndarray | Table, request_id: str) -> bytes:
        predictions, proba = self.predict(X, request_id)
        return orjson.dumps(
            {
                "predictions": predictions,
                "probabilities": proba,
                "model": self.name,
                "version": self.version,
                "request_id": request_id,
            },
            option=NUMPY,
        )

    def infer_body(self, X: np.ndarray | Table, request_id: str, v2_id: str | None) -> bytes:
        predictions, proba = self.predict(X, request_id)
        return orjson.dumps(
            {
                "model_name": self.name,
                "model_version": self.version,
                "id": v2_id or request_id,
                "outputs": [
                    {
                        "name": "predictions",
                        "datatype": "BYTES",
                        "shape": [len(predictions)],
                        "data": predictions,
                    },
                    {
                        "name": "probabilities",
                        "datatype": "FP64",
                        "shape": list(proba.shape),
                        "data": proba.ravel(),
                    },
                ],
            },
            option=NUMPY,
        )

    def parse_labels(self, body: bytes) -> Feedback:
        return parse_feedback(body, self.class_names)

    def count_feedback(self, resolved: Resolved) -> None:
        self.metrics.feedback(resolved.received, resolved.correct)


class ServedRegressor(ServedModel):
    """A regressor: one predicted value per row."""

    metrics: RegressorMetrics
    feedback_fields = ("received", "absolute_error", "squared_error")

    def _make_metrics(self, meta: ModelMetadata) -> RegressorMetrics:
        return RegressorMetrics(
            self.name, self.version, self.numeric_features, list(meta.prediction_buckets),
            meta.sklearn_version, meta.dataset_sha256,
        )  # fmt: skip

    def _outputs(self, meta: ModelMetadata) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        return self.oip_outputs([]), {"task": meta.task}

    @staticmethod
    def oip_outputs(class_names: list[str]) -> list[dict[str, Any]]:
        return [{"name": "predictions", "datatype": "FP64", "shape": [-1]}]

    def values(self, X: Any) -> np.ndarray:
        """One predicted value per row of ``X`` (a matrix or a DataFrame; a model that answers a
        column: its one column)."""
        return np.asarray(self.estimator.predict(X), dtype=np.float64).reshape(len(X))

    def warm_up(self, X: np.ndarray | Table) -> None:
        self.values(X.frame if type(X) is Table else X)

    def predict(self, X: np.ndarray | Table, request_id: str) -> list[float]:
        if type(X) is Table:
            values, X = self.on_frame(self.values, X), X.numeric
        else:
            values = self.values(X)
        if not np.isfinite(values).all():
            raise BadRequest(
                422, "value_out_of_range", "feature values this large make the model's output overflow"
            )
        self.metrics.values(values, (X - self.means) / self.stds)
        predicted: list[float] = values.tolist()
        self.feedback.record(request_id, predicted)
        return predicted

    def predict_body(self, X: np.ndarray | Table, request_id: str) -> bytes:
        return orjson.dumps(
            {
                "predictions": self.predict(X, request_id),
                "model": self.name,
                "version": self.version,
                "request_id": request_id,
            }
        )

    def infer_body(self, X: np.ndarray | Table, request_id: str, v2_id: str | None) -> bytes:
        predicted = self.predict(X, request_id)
        return orjson.dumps(
            {
                "model_name": self.name,
                "model_version": self.version,
                "id": v2_id or request_id,
                "outputs": [
                    {"name": "predictions", "datatype": "FP64", "shape": [len(predicted)], "data": predicted}
                ],
            }
        )

    def parse_labels(self, body: bytes) -> Feedback:
        return parse_value_feedback(body)

    def count_feedback(self, resolved: Resolved) -> None:
        self.metrics.feedback(resolved.received, resolved.absolute_error, resolved.squared_error)


def serve_model(
    loaded: LoadedModel,
    limits: Limits,
    metrics_dir: Path,
    feedback: Join,
    auth: FeedbackAuth | None = None,
) -> Served | ServedRegressor:
    """The served model for ``loaded``'s task."""
    return served_class(loaded.record.metadata.task)(loaded, limits, metrics_dir, feedback, auth)


def served_class(task: str) -> type[Served] | type[ServedRegressor]:
    """The class that serves a model of ``task`` (``classification`` or ``regression``)."""
    return ServedRegressor if task == REGRESSION else Served


def column_classes(classes: np.ndarray, class_names: list[str]) -> np.ndarray:
    """``predict_proba`` column -> index into ``class_names``. A model registered by ``rollout
    import`` has its ``classes_`` as text for class names; the iris variants have class indices
    (0, 1, 2) as ``classes_`` and the target names as class names."""
    text = [str(c) for c in classes.tolist()]
    if all(t in class_names for t in text):
        return np.asarray([class_names.index(t) for t in text], dtype=np.int64)
    if np.issubdtype(classes.dtype, np.integer) and all(0 <= int(c) < len(class_names) for c in classes):
        return classes.astype(np.int64)
    raise ModelError(
        f"the model's classes {text[:10]} are not the class_names of its metadata {class_names[:10]}: "
        "register it again with `rollout import`"
    )
