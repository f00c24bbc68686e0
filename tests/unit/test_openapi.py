"""The server's OpenAPI document (bentos/openapi.py) follows the served model's task: what a
regressor answers and the labels it takes are numbers, a classifier's are its classes (its
document as it always was); the answers the served models (bentos/served.py) really give, in
process, are what their document says."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pandas as pd
import pytest
from sklearn.datasets import load_diabetes, load_iris
from sklearn.linear_model import LogisticRegression, Ridge

from bentos.join import Resolved
from bentos.openapi import openapi_document
from bentos.parsing import parse_predict
from bentos.served import Limits, ServedModel, ServedRegressor, serve_model
from rollout.registration import derive_metadata, read_reference
from rollout.registry import CLASSIFICATION, REGRESSION, LoadedModel, ModelRecord


class _Join:
    def record(self, request_id: str, predicted: list[float]) -> None:
        pass


def _served(model: Any, frame: pd.DataFrame, target: str, tmp_path: Path) -> ServedModel:
    path = tmp_path / "holdout.csv"
    frame.to_csv(path, index=False)
    meta = derive_metadata(
        model, read_reference(path, target, model), "v1", "", pickle.dumps(model), "file m.joblib"
    )
    record = ModelRecord("m:v1", "m", "v1", tmp_path, meta)
    return serve_model(LoadedModel(record, model), Limits(), tmp_path, _Join())  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def regressor(tmp_path_factory: pytest.TempPathFactory) -> ServedModel:
    d = load_diabetes(as_frame=True)
    model = Ridge().fit(d.data.to_numpy(), d.target)
    return _served(model, d.data.assign(progression=d.target), "progression", tmp_path_factory.mktemp("r"))


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> ServedModel:
    i = load_iris(as_frame=True)
    model = LogisticRegression(max_iter=500).fit(i.data.to_numpy(), i.target)
    return _served(model, i.data.assign(species=i.target), "species", tmp_path_factory.mktemp("c"))


def _document(served: ServedModel) -> dict[str, Any]:
    task = REGRESSION if isinstance(served, ServedRegressor) else CLASSIFICATION
    names = list(served.schema.feature_names)
    return openapi_document(served.name, served.version, names, served.class_names, task=task)


def _ok(doc: dict[str, Any], path: str) -> dict[str, Any]:
    return doc["paths"][path]["post"]["responses"]["200"]["content"]["application/json"]["schema"]


def _answers(served: ServedModel) -> tuple[dict[str, Any], dict[str, Any]]:
    """What the server answers to /predict (two rows) and to a label (as bentos/app.py builds it)."""
    rows = orjson.dumps({"instances": [[0.01] * len(served.schema.feature_names)] * 2})
    predicted = orjson.loads(served.predict_body(parse_predict(rows, served.schema), "r1"))
    resolved = Resolved(received=1, correct=0, absolute_error=2.5, squared_error=6.25)
    return predicted, {"request_id": "r1", **served.feedback_answer(resolved), "duplicate": False}


def test_a_regressors_document_names_numeric_predictions_and_a_numeric_label(regressor: ServedModel) -> None:
    doc = _document(regressor)
    answer = _ok(doc, "/predict")
    assert answer["properties"]["predictions"] == {"type": "array", "items": {"type": "number"}}
    assert "probabilities" not in answer["properties"] and "probabilities" not in answer["required"]
    assert _ok(doc, f"/v1/models/{regressor.name}:predict") == answer
    feedback = doc["components"]["schemas"]["Feedback"]
    assert feedback["properties"]["label"] == {"type": "number"}
    labelled = _ok(doc, "/feedback")
    assert labelled["required"] == ["request_id", "received", "absolute_error", "squared_error"]
    assert labelled["properties"]["absolute_error"] == {"type": "number"}

    predicted, counted = _answers(regressor)
    jsonschema.validate(predicted, answer)
    jsonschema.validate(counted, labelled)
    label = {"request_id": "r1", "label": 151.0}
    jsonschema.validate(label, feedback)
    assert regressor.parse_labels(orjson.dumps(label)).labels == [151.0]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"request_id": "r1", "label": "setosa"}, feedback)


def test_the_classifiers_document_is_unchanged_and_says_what_it_answers(classifier: ServedModel) -> None:
    doc = _document(classifier)
    classes = ["0", "1", "2"]
    assert doc == openapi_document(
        "m", "v1", list(classifier.schema.feature_names), classes
    )  # the default task
    answer = _ok(doc, "/predict")
    assert answer == {
        "type": "object",
        "required": ["predictions", "probabilities", "model", "version", "request_id"],
        "properties": {
            "predictions": {"type": "array", "items": {"type": "string", "enum": classes}},
            "probabilities": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
            "model": {"type": "string"},
            "version": {"type": "string"},
            "request_id": {"type": "string"},
        },
    }
    assert doc["components"]["schemas"]["Feedback"]["properties"]["label"] == {
        "oneOf": [{"type": "string", "enum": classes}, {"type": "integer", "minimum": 0, "maximum": 2}]
    }
    labelled = _ok(doc, "/feedback")
    assert labelled == {
        "type": "object",
        "required": ["request_id", "received", "correct"],
        "properties": {
            "request_id": {"type": "string"},
            "received": {"type": "integer"},
            "correct": {"type": "integer"},
        },
    }

    predicted, counted = _answers(classifier)
    jsonschema.validate(predicted, answer)
    jsonschema.validate(counted, labelled)


def test_a_regressors_answers_are_not_a_classifiers(regressor: ServedModel, classifier: ServedModel) -> None:
    predicted, counted = _answers(regressor)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(predicted, _ok(_document(classifier), "/predict"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(counted, _ok(_document(classifier), "/feedback"))
