"""Regressors (issue 14, part 2): what registration derives for one (task, holdout MAE/RMSE/R²,
prediction buckets), metadata that still loads every classifier stored before, the gate's relative
error tolerance, numeric labels, and the local join store summing a label's errors. Served by real
servers in tests/integration/test_regressors.py."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from bentos.feedback import FeedbackStore
from bentos.parsing import BadRequest, parse_value_feedback
from rollout.errors import ModelError, UsageError
from rollout.registration import derive_metadata, prediction_buckets, read_reference, task_of
from rollout.registry import ModelMetadata, compare


@pytest.fixture(scope="module")
def diabetes(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path, pd.DataFrame]:
    d = load_diabetes(as_frame=True)
    model = make_pipeline(StandardScaler(), Ridge()).fit(d.data, d.target)
    frame = d.data.assign(progression=d.target)
    path = tmp_path_factory.mktemp("diabetes") / "holdout.csv"
    frame.to_csv(path, index=False)
    return model, path, frame


def _meta(model: object, path: Path) -> ModelMetadata:
    return derive_metadata(model, read_reference(path, "progression", model), "v1", "", b"blob", "file m")


def test_a_regressor_pipeline_gets_its_task_errors_and_prediction_buckets(
    diabetes: tuple[object, Path, pd.DataFrame],
) -> None:
    model, path, frame = diabetes
    meta = _meta(model, path)
    y, predicted = frame["progression"].to_numpy(), model.predict(frame.drop(columns="progression"))  # type: ignore[attr-defined]
    assert task_of(model) == meta.task == "regression" and meta.is_regressor
    assert meta.holdout_mae == pytest.approx(mean_absolute_error(y, predicted))
    assert meta.holdout_rmse == pytest.approx(np.sqrt(mean_squared_error(y, predicted)))
    assert meta.holdout_r2 == pytest.approx(r2_score(y, predicted))
    assert meta.class_names == [] and meta.holdout_accuracy is None and meta.holdout_f1_macro is None
    buckets = meta.prediction_buckets
    assert 10 <= len(buckets) <= 20 and all(a < b for a, b in zip(buckets, buckets[1:], strict=False))
    assert buckets[-1] == y.max() and buckets[0] > y.min()


def test_a_target_with_few_values_gets_fewer_buckets_strictly_increasing() -> None:
    assert prediction_buckets(np.array([1.0] * 50 + [2.0] * 50)) == [1.0, 2.0]
    assert prediction_buckets(np.array([3.0, 3.0])) == [3.0]


def test_metadata_round_trips_and_a_classifier_stored_before_regressors_still_loads(
    diabetes: tuple[object, Path, pd.DataFrame],
) -> None:
    meta = _meta(diabetes[0], diabetes[1])
    stored = meta.to_dict()
    assert None not in stored.values()  # BentoML's metadata holds no None
    assert ModelMetadata.from_dict(stored) == meta
    old = {k: v for k, v in classifier().to_dict().items() if k not in ("task", "prediction_buckets")}
    old = {k: v for k, v in old.items() if not k.startswith("holdout_") or k in OLD_HOLDOUT}
    loaded = ModelMetadata.from_dict(old)
    assert loaded.task == "classification" and loaded.holdout_accuracy == 0.9 and not loaded.is_regressor


OLD_HOLDOUT = ("holdout_accuracy", "holdout_f1_macro", "holdout_size")


def test_metadata_without_the_tasks_metrics_or_of_an_unknown_task_names_what_to_do(
    diabetes: tuple[object, Path, pd.DataFrame],
) -> None:
    stored = _meta(diabetes[0], diabetes[1]).to_dict()
    with pytest.raises(
        ModelError, match="has no holdout_mae in its metadata: register it with `rollout import"
    ):
        ModelMetadata.from_dict({k: v for k, v in stored.items() if k != "holdout_mae"}, "d:v1")
    with pytest.raises(ModelError, match="has no prediction_buckets"):
        ModelMetadata.from_dict({**stored, "prediction_buckets": []}, "d:v1")
    with pytest.raises(
        ModelError, match="task 'ranking' in its metadata, not one of classification, regression"
    ):
        ModelMetadata.from_dict({**stored, "task": "ranking"}, "d:v1")
    classifier_dict = classifier().to_dict()
    del classifier_dict["holdout_f1_macro"]
    with pytest.raises(ModelError, match="has no holdout_f1_macro"):
        ModelMetadata.from_dict(classifier_dict, "iris:v1")


def test_a_regressors_target_must_be_numbers_one_line(
    diabetes: tuple[object, Path, pd.DataFrame], tmp_path: Path
) -> None:
    model, _, frame = diabetes
    path = tmp_path / "text.csv"
    frame.assign(progression=np.where(frame["progression"] > 140, "high", "low")).to_csv(path, index=False)
    with pytest.raises(
        UsageError, match="target column 'progression' holds values that are not numbers \\(e.g. 'high'\\)"
    ) as refused:
        read_reference(path, "progression", model)
    assert "\n" not in str(refused.value)


def test_a_multi_output_regressor_and_an_unfitted_one_are_refused(
    diabetes: tuple[object, Path, pd.DataFrame], tmp_path: Path
) -> None:
    _, _, frame = diabetes
    X = frame.drop(columns="progression")
    two = LinearRegression().fit(X, np.column_stack([frame["progression"], frame["progression"]]))
    with pytest.raises(ModelError, match="predicts 2 values per row; multi-output regressors are not served"):
        _meta(two, diabetes[1])
    with pytest.raises(ModelError, match="not a fitted regressor"):
        task_of(make_pipeline(StandardScaler(), Ridge()))


def classifier() -> ModelMetadata:
    return ModelMetadata(
        dataset="iris", dataset_sha256="a" * 64, variant="v1", description="", estimator="LR", params={},
        seed=0, holdout_accuracy=0.9, holdout_f1_macro=0.9, holdout_size=45, train_size=105,
        sklearn_version="1", git_revision="x", feature_names=[], feature_means=[], feature_stds=[],
        class_names=["a", "b"], artifact_sha256="b" * 64,
    )  # fmt: skip


def regressor(mae: float = 50.0, rmse: float = 60.0, r2: float = 0.5) -> ModelMetadata:
    return replace(
        classifier(), task="regression", holdout_accuracy=None, holdout_f1_macro=None, class_names=[],
        holdout_mae=mae, holdout_rmse=rmse, holdout_r2=r2, prediction_buckets=[1.0, 2.0],
    )  # fmt: skip


def test_the_gate_lets_a_regressors_errors_grow_by_the_tolerance_relative() -> None:
    stable = regressor()
    assert compare(regressor(mae=50.9, rmse=61.1), stable, 0.02, ("c", "s")).passed  # 1.8 % worse
    worse = compare(regressor(mae=51.5), stable, 0.02, ("c", "s"))
    assert not worse.passed and worse.reasons == [
        "holdout_mae 51.5 is 3.0% above s's 50 (tolerance 2.0% relative)"
    ]
    assert worse.deltas == pytest.approx({"holdout_mae": 1.5, "holdout_rmse": 0.0, "holdout_r2": 0.0})
    assert not compare(regressor(rmse=62.0), stable, 0.02, ("c", "s")).passed
    assert compare(regressor(mae=51.5, rmse=62.0), stable, 0.05, ("c", "s")).passed
    assert compare(regressor(mae=40.0, rmse=45.0, r2=0.7), stable, 0.0, ("c", "s")).passed  # better


def test_the_gate_holds_a_regressors_r2_to_stables_minus_the_tolerance() -> None:
    stable = regressor()
    assert compare(regressor(r2=0.485), stable, 0.02, ("c", "s")).passed
    low = compare(regressor(r2=0.47), stable, 0.02, ("c", "s"))
    assert not low.passed and "holdout_r2 0.4700 is 0.0300 below s's 0.5000" in low.reasons[0]


def test_the_gate_refuses_other_data_and_a_classifier_against_a_regressor() -> None:
    other = compare(replace(regressor(), dataset_sha256="0" * 64), regressor(), 0.5, ("c", "s"))
    assert not other.passed and "not comparable" in other.reasons[0]
    with pytest.raises(UsageError, match="c is a classification model and s a regression one"):
        compare(classifier(), regressor(), 0.02, ("c", "s"))
    with pytest.raises(UsageError, match="c is a regression model and s a classification one"):
        compare(regressor(), classifier(), 0.02, ("c", "s"))


def test_the_classifier_gate_is_unchanged() -> None:
    stable = classifier()
    verdict = compare(replace(stable, holdout_accuracy=0.87), stable, 0.02, ("c", "s"))
    assert not verdict.passed and verdict.reasons == [
        "holdout_accuracy 0.8700 is 0.0300 below s's 0.9000 (tolerance 0.0200)"
    ]
    assert list(verdict.deltas) == ["holdout_accuracy", "holdout_f1_macro"]


def test_a_regressors_labels_are_finite_numbers() -> None:
    assert parse_value_feedback(b'{"request_id": "r", "label": 151}').labels == [151.0]
    assert parse_value_feedback(b'{"request_id": "r", "labels": [1.5, -2]}').labels == [1.5, -2.0]
    for body, code in (
        (b'{"request_id": "r", "label": "151"}', "bad_label"),
        (b'{"request_id": "r", "label": true}', "bad_label"),
        (b'{"request_id": "r", "label": [1]}', "bad_label"),
        (b'{"request_id": "r"}', "bad_label"),
        (b'{"request_id": "r", "label": 1e999}', "non_finite_value"),
        (b'{"request_id": "r", "label": NaN}', "non_finite_value"),
        (b'{"request_id": "r", "label": ' + b"9" * 400 + b"}", "non_finite_value"),
    ):
        with pytest.raises(BadRequest) as refused:
            parse_value_feedback(body)
        assert (refused.value.status, refused.value.code) == (422, code), body


def test_the_local_join_sums_a_regressors_errors_once(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "f.sqlite3", lookup_wait=0.05, regression=True)
    try:
        store.record("r1", [100.5, 200.0])
        resolved = store.resolve("r1", [110.0, 190.0])
        assert (resolved.received, resolved.correct, resolved.duplicate) == (2, 0, False)
        assert (resolved.absolute_error, resolved.squared_error) == (19.5, 9.5**2 + 10.0**2)
        assert store.resolve("r1", [110.0, 190.0]).duplicate
        for labels, status in (([1.0, 2.0], 409),):
            with pytest.raises(BadRequest) as conflict:
                store.resolve("r1", labels)
            assert conflict.value.status == status
        store.record("r2", [1.0])
        with pytest.raises(BadRequest) as rows:
            store.resolve("r2", [1.0, 2.0])
        assert rows.value.status == 422 and rows.value.code == "label_count"
        store.record("r3", [1.0])
        with pytest.raises(BadRequest) as huge:
            store.resolve("r3", [1e200])
        assert (huge.value.status, huge.value.code) == (422, "value_out_of_range")
        assert store.resolve("r3", [3.0]).absolute_error == 2.0  # nothing was recorded by the refusal
        with pytest.raises(BadRequest) as unknown:
            store.resolve("never", [1.0])
        assert unknown.value.status == 404
    finally:
        store.close()
