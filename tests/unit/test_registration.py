"""Registering a user's own classifier (rollout/registration.py): what is derived from the estimator
and the holdout file, and the one-line errors for what cannot be (the option to pass named)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from rollout.errors import ModelError, UsageError
from rollout.registration import check_classifier, derive_metadata, load_estimator, read_reference, task_of


@pytest.fixture(scope="module")
def wine() -> tuple[object, pd.DataFrame]:
    w = load_wine(as_frame=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(w.data, w.target)
    return model, w.data.assign(cultivar=w.target)


def _csv(tmp_path: Path, frame: pd.DataFrame, name: str = "holdout.csv") -> Path:
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def test_a_pipeline_fitted_on_a_dataframe_gets_its_names_classes_and_holdout_metrics(
    wine: tuple[object, pd.DataFrame], tmp_path: Path
) -> None:
    model, frame = wine
    # columns shuffled in the file: the model's own feature order is what the server expects
    shuffled = frame[list(reversed(frame.columns))]
    ref = read_reference(_csv(tmp_path, shuffled), "cultivar", model)
    assert ref.feature_names == list(frame.columns[:-1])
    assert np.allclose(ref.X[:, 0], frame["alcohol"])
    blob = pickle.dumps(model)
    meta = derive_metadata(model, ref, "v1", "", blob, "file wine.joblib")
    assert meta.class_names == ["0", "1", "2"]
    assert meta.estimator == "Pipeline(StandardScaler, LogisticRegression)"
    assert meta.holdout_size == len(frame) and meta.holdout_accuracy > 0.95
    assert meta.feature_means[0] == pytest.approx(frame["alcohol"].mean())
    assert meta.feature_stds[0] == pytest.approx(frame["alcohol"].std(ddof=0))
    assert len(meta.artifact_sha256) == 64 and meta.dataset_sha256 == ref.sha256
    assert meta.extra["has_predict_proba"] is True


def test_string_classes_and_a_classifier_without_predict_proba(tmp_path: Path) -> None:
    b = load_breast_cancer(as_frame=True)
    y = b.target.map(dict(enumerate(b.target_names)))
    model = make_pipeline(StandardScaler(), LinearSVC()).fit(b.data.to_numpy(), y)  # no feature names
    ref = read_reference(_csv(tmp_path, b.data.assign(diagnosis=y.values)), "diagnosis", model)
    assert ref.feature_names == [str(c) for c in b.data.columns]  # the file's, in its order
    meta = derive_metadata(model, ref, "v3", "svm", pickle.dumps(model), "store cancer:x")
    assert meta.class_names == ["benign", "malignant"] and meta.holdout_accuracy > 0.9
    assert meta.extra["has_predict_proba"] is False and meta.description == "svm"


def test_the_same_file_gives_the_same_dataset_digest_and_another_file_another(
    wine: tuple[object, pd.DataFrame], tmp_path: Path
) -> None:
    model, frame = wine
    a = read_reference(_csv(tmp_path, frame, "a.csv"), "cultivar", model)
    b = read_reference(_csv(tmp_path, frame, "b.csv"), "cultivar", model)
    c = read_reference(_csv(tmp_path, frame.head(100), "c.csv"), "cultivar", model)
    assert a.sha256 == b.sha256 != c.sha256  # rollout gate compares models on one holdout only


def test_parquet_is_read_too(wine: tuple[object, pd.DataFrame], tmp_path: Path) -> None:
    model, frame = wine
    frame.to_parquet(tmp_path / "holdout.parquet")
    assert read_reference(tmp_path / "holdout.parquet", "cultivar", model).X.shape == (178, 13)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f, r"has no column 'label' \(--target\); its columns: alcohol, .* and 6 more$"),
        (
            lambda f: f.drop(columns=["proline"]).rename(columns={"cultivar": "label"}),
            "lacks the model's feature columns proline",
        ),
        (lambda f: f.rename(columns={"cultivar": "label"}).head(0), "has no rows"),
    ],
    ids=["no-target", "missing-feature", "empty"],
)
def test_a_data_file_that_does_not_fit_the_model_is_a_usage_error_naming_it(
    wine: tuple[object, pd.DataFrame], tmp_path: Path, change: object, message: str
) -> None:
    model, frame = wine
    path = _csv(tmp_path, change(frame))  # type: ignore[operator]
    with pytest.raises(UsageError, match=message) as info:
        read_reference(path, "label", model)
    assert "\n" not in str(info.value)


def test_a_column_of_strings_the_model_takes_as_numbers_is_named_when_it_fails(
    wine: tuple[object, pd.DataFrame], tmp_path: Path
) -> None:
    model, frame = wine
    ref = read_reference(_csv(tmp_path, frame.assign(hue="x")), "cultivar", model)
    assert ref.feature_dtypes[ref.feature_names.index("hue")] == "string"
    with pytest.raises(UsageError, match=r"cannot predict the rows .* columns hue are not numbers") as info:
        derive_metadata(model, ref, "v1", "", b"", "file wine.joblib")
    assert "\n" not in str(info.value)


def test_missing_values_and_a_column_count_that_does_not_match_are_named(tmp_path: Path) -> None:
    X, y = load_wine(return_X_y=True)
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)  # numpy: no names, 13 features
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(13)]).assign(y=y)
    gap = frame.copy()
    gap.loc[3, "f2"] = np.nan
    with pytest.raises(UsageError, match="feature columns f2 have missing"):
        read_reference(_csv(tmp_path, gap), "y", model)
    with pytest.raises(UsageError, match="takes 13 features, .* has 14 columns besides 'y'"):
        read_reference(_csv(tmp_path, frame.assign(extra=1.0), "wide.csv"), "y", model)
    with pytest.raises(UsageError, match="must be .csv or .parquet"):
        read_reference(tmp_path / "holdout.xlsx", "y", model)


def test_target_values_the_model_does_not_know_suggest_the_wrong_target(tmp_path: Path) -> None:
    X, y = load_wine(return_X_y=True)
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(X[:, 1:], y)
    frame = pd.DataFrame(X[:, 1:], columns=[f"f{i}" for i in range(12)]).assign(alcohol=X[:, 0])
    ref = read_reference(_csv(tmp_path, frame), "alcohol", model)
    with pytest.raises(UsageError, match="not classes of the model .* is --target the right column"):
        derive_metadata(model, ref, "v1", "", b"", "file m.joblib")


def test_unfitted_models_and_non_estimators_are_refused(tmp_path: Path) -> None:
    X, y = load_wine(return_X_y=True)
    with pytest.raises(ModelError, match="LinearRegression is a regressor, not a classifier"):
        check_classifier(LinearRegression().fit(X, y))
    with pytest.raises(ModelError, match="not a fitted regressor"):
        task_of(LinearRegression())
    with pytest.raises(ModelError, match="not a fitted classifier"):
        check_classifier(LogisticRegression())
    with pytest.raises(ModelError, match="has no predict"):
        check_classifier(object())


def test_a_model_file_that_is_missing_or_not_a_pickle_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        load_estimator(str(tmp_path / "none.joblib"))
    junk = tmp_path / "junk.pkl"
    junk.write_text("not a pickle")
    with pytest.raises(UsageError, match="cannot load .* as a joblib or pickle file"):
        load_estimator(str(junk))
    with pytest.raises(UsageError, match="NAME:VERSION"):
        load_estimator("no-such-thing")
