"""Registration: a user's own scikit-learn model into the model store, with what a rollout needs.

``rollout import SOURCE --name NAME:VERSION --data HOLDOUT.csv --target COLUMN`` (rollout/cli/models.py)
calls :func:`register`. SOURCE is a joblib or pickle file, or the tag of a model saved with
``bentoml.sklearn.save_model`` (no metadata of ours). What the model server, the gates and the
dashboards need and the user did not give is derived once, here, and stored as the model's
metadata (:class:`rollout.registry.ModelMetadata`), exactly as training stores it for our own
variants:

- feature names: the estimator's ``feature_names_in_`` (fitted on a DataFrame), else the data
  file's columns other than the target, in their order (then their number must be the
  estimator's ``n_features_in_``);
- the task: ``regression`` for a regressor (``is_regressor``, also a Pipeline ending in one), else
  ``classification``;
- a classifier's class names: its ``classes_``, as text; every target value in the data must be one;
- a regressor's ``prediction_buckets``: 16 quantiles of the (numeric) holdout target, the upper
  bounds of its ``model_prediction_value`` histogram;
- each feature's type: ``number``, ``string`` (object, pandas string or category columns of
  text: the model gets them as str in a DataFrame, so a ColumnTransformer selects them by name)
  or ``bool``; a string feature's categories seen in the holdout;
- reference statistics (the numeric features' means and standard deviations: the z-scores of the
  feature-drift gate) and the holdout metrics ``rollout gate`` compares (accuracy and macro F1; a regressor's
  MAE, RMSE and R²), from the data file;
- the dataset's digest: sha256 of the data file's bytes, so ``rollout gate`` compares two models
  only on the same holdout;
- the artifact digest: sha256 of the pickled estimator written as the model's artifact.

What cannot be derived is an error that says which option to pass. Missing values (numeric or
string), columns of mixed values and multi-output regressors are refused with a message saying so.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rollout.errors import ModelError, ModelNotFoundError, UsageError
from rollout.registry import (
    ARTIFACT_FILE,
    BOOL,
    CLASSIFICATION,
    NUMBER,
    REGRESSION,
    STRING,
    ModelMetadata,
    ModelRecord,
    get_record,
    parse_tag,
)

PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")  # rollout/cli/models.py: a SOURCE with these is a file
DATA_SUFFIXES = (".csv", ".parquet", ".pq")
BUCKET_QUANTILES = 16  # a regressor's prediction histogram: this many quantiles of the holdout target
MAX_CATEGORIES = 1000  # a string feature's categories recorded in the metadata (the first, sorted)


@dataclass(frozen=True)
class Reference:
    """The user's holdout/reference data: features, target and where it came from."""

    X: np.ndarray  # float64, rows x numeric features, in the model's feature order
    y: np.ndarray  # the target column's values: text for a classifier, float64 for a regressor
    feature_names: list[str]
    name: str
    sha256: str
    frame: Any = None  # the features as a pandas DataFrame (numbers float64, strings str, bools bool)
    feature_dtypes: tuple[str, ...] = ()  # number, string or bool per feature; () all numbers

    @property
    def tabular(self) -> bool:
        """A feature is not a number: the model takes a DataFrame."""
        return any(t != NUMBER for t in self.feature_dtypes)

    def categories(self) -> dict[str, list[str]]:
        """The values each string feature has, sorted (at most MAX_CATEGORIES)."""
        return {
            name: sorted({str(v) for v in self.frame[name]})[:MAX_CATEGORIES]
            for name, kind in zip(self.feature_names, self.feature_dtypes, strict=True)
            if kind == STRING
        }

    def model_input(self, named: bool) -> Any:
        """What the estimator is called with: a DataFrame for string or boolean features or a
        model fitted on one (``named``), else the matrix."""
        if self.tabular:
            return self.frame
        if named:
            import pandas as pd

            return pd.DataFrame(self.X, columns=self.feature_names)
        return self.X


def load_estimator(source: str) -> tuple[Any, str]:
    """The estimator in ``source`` (a joblib/pickle file, or a store tag saved by bentoml.sklearn)
    and a short description of where it came from."""
    path = Path(source)
    if path.suffix in PICKLE_SUFFIXES or path.exists():
        if not path.is_file():
            raise UsageError(f"model file {source} does not exist")
        import joblib

        try:
            return joblib.load(path), f"file {path.name}"
        except Exception as exc:  # unpickling runs the file's code: any error can come out
            raise UsageError(
                f"cannot load {source} as a joblib or pickle file: {type(exc).__name__}: {exc}"
            ) from None
    parse_tag(source)  # NAME:VERSION, or a usage error saying so
    import bentoml
    from bentoml.exceptions import BentoMLException, NotFound

    try:
        return bentoml.sklearn.load_model(source), f"store {source}"
    except NotFound:
        try:  # in the store, but saved by another framework's save_model (bentoml says NotFound)
            module = bentoml.models.get(source).info.module
        except NotFound:
            module = None
        if module is not None:
            raise ModelError(
                f"{source} was saved by {module}, not bentoml.sklearn: rollout import takes scikit-learn "
                "estimators and pipelines only"
            ) from None
        raise ModelNotFoundError(
            f"{source} is neither a file nor a model in the BentoML model store; give the path of a "
            "joblib/pickle file or the tag bentoml.sklearn.save_model returned"
        ) from None
    except BentoMLException as exc:  # saved by another framework's save_model
        raise ModelError(f"{source} is not a scikit-learn model saved with bentoml.sklearn: {exc}") from None


def task_of(estimator: Any) -> str:
    """``regression`` for a fitted regressor, ``classification`` for a fitted classifier;
    ModelError for what the model server cannot serve."""
    from sklearn.base import is_regressor
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    kind = type(estimator).__name__
    if not hasattr(estimator, "predict"):
        raise ModelError(f"{kind} has no predict(): not a scikit-learn estimator")
    if not is_regressor(estimator):
        check_classifier(estimator)
        return CLASSIFICATION
    try:
        check_is_fitted(estimator)
    except (NotFittedError, TypeError):
        raise ModelError(f"{kind} is not a fitted regressor; fit it before importing") from None
    return REGRESSION


def check_classifier(estimator: Any) -> np.ndarray:
    """The classifier's ``classes_``; ModelError for what the model server cannot serve."""
    from sklearn.base import is_classifier, is_regressor

    kind = type(estimator).__name__
    if not hasattr(estimator, "predict"):
        raise ModelError(f"{kind} has no predict(): not a scikit-learn estimator")
    if is_regressor(estimator):
        raise ModelError(f"{kind} is a regressor, not a classifier")
    classes = getattr(estimator, "classes_", None)
    if not is_classifier(estimator) or classes is None:
        raise ModelError(
            f"{kind} is not a fitted classifier (it has no classes_) nor a regressor; fit it before importing"
        )
    return np.asarray(classes)


def prediction_buckets(y: np.ndarray, quantiles: int = BUCKET_QUANTILES) -> list[float]:
    """Histogram upper bounds for a regressor's predictions: ``quantiles`` quantiles of the holdout
    target ``y`` (the last its maximum), to 6 significant digits, strictly increasing (a target
    with repeated values has fewer)."""
    levels = np.linspace(0.0, 1.0, quantiles + 1)[1:]
    bounds = {
        float(f"{v:.6g}") for v in np.quantile(np.asarray(y, dtype=np.float64), levels, method="inverted_cdf")
    }
    return sorted(bounds)


def _some(names: list[str], shown: int = 5) -> str:
    """``a, b, c, d, e and 8 more``: a list that keeps an error message to one readable line."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _read_table(path: Path) -> Any:
    import pandas as pd

    if path.suffix not in DATA_SUFFIXES:
        raise UsageError(f"data file {path} must be .csv or .parquet")
    if not path.is_file():
        raise UsageError(f"data file {path} does not exist")
    try:
        return pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    except ImportError as exc:  # parquet without pyarrow
        raise UsageError(f"cannot read {path}: {exc}") from None
    except Exception as exc:  # pandas' parser errors have no common base
        raise UsageError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None


def read_reference(path: Path, target: str, estimator: Any) -> Reference:
    """The data file as the model sees it: the estimator's feature columns (all but ``target``
    when it has no feature names), numeric, without missing values."""
    table = _read_table(path)
    columns = [str(c) for c in table.columns]
    if target not in columns:
        raise UsageError(
            f"data file {path} has no column {target!r} (--target); its columns: {_some(columns, 8)}"
        )
    if len(table) == 0:
        raise UsageError(f"data file {path} has no rows")
    named = getattr(estimator, "feature_names_in_", None)
    if named is not None:
        features = [str(c) for c in named]
        missing = [c for c in features if c not in columns]
        if missing:
            raise UsageError(f"data file {path} lacks the model's feature columns {_some(missing)}")
    else:
        features = [c for c in columns if c != target]
        expected = getattr(estimator, "n_features_in_", len(features))
        if expected != len(features):
            raise UsageError(
                f"the model takes {expected} features, data file {path} has {len(features)} columns besides "
                f"{target!r}: drop the extra columns or name the target with --target"
            )
    if target in features:
        raise UsageError(f"--target {target!r} is one of the model's features")
    frame, dtypes = _features(table[features], path)
    numeric = [c for c, t in zip(features, dtypes, strict=True) if t == NUMBER]
    X = frame[numeric].to_numpy(dtype=np.float64)
    if not np.isfinite(X).all():
        bad = [c for c in numeric if not np.isfinite(frame[c].to_numpy(dtype=np.float64)).all()]
        raise UsageError(f"feature columns {_some(bad)} have missing or infinite values in {path}")
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    if table[target].isna().any():
        raise UsageError(f"target column {target!r} has missing values in {path}")
    from sklearn.base import is_regressor

    if not is_regressor(estimator):
        y = table[target].astype(str).to_numpy()
    elif not is_numeric_dtype(table[target]) or is_bool_dtype(table[target]):
        raise UsageError(
            f"target column {target!r} holds values that are not numbers (e.g. {table[target].iloc[0]!r}): a "
            "regressor's target must be numeric (is --target the right column?)"
        )
    else:
        y = table[target].to_numpy(dtype=np.float64)
        if not np.isfinite(y).all():
            raise UsageError(f"target column {target!r} has infinite values in {path}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return Reference(X, y, features, path.stem, digest, frame, tuple(dtypes))


def _features(frame: Any, path: Path) -> tuple[Any, list[str]]:
    """The feature columns as the server builds them (numbers float64, strings str, bools bool)
    and each one's type; UsageError naming a column with missing or mixed values."""
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    columns: dict[str, Any] = {}
    dtypes: list[str] = []
    for name in frame.columns:
        column = frame[name]
        if is_numeric_dtype(column) and not is_bool_dtype(column):  # NaN kept: named by the caller
            columns[str(name)] = column.to_numpy(dtype=np.float64, na_value=np.nan)
            dtypes.append(NUMBER)
            continue
        if column.isna().any():
            raise UsageError(
                f"feature column {name} has missing values in {path} (row {int(column.isna().argmax())}): "
                "fill them (e.g. with a category of their own) before importing"
            )
        if is_bool_dtype(column):
            columns[str(name)] = column.to_numpy(dtype=bool)
            dtypes.append(BOOL)
            continue
        odd = [v for v in column.tolist() if type(v) is not str]
        if odd:
            raise UsageError(
                f"feature column {name} holds {type(odd[0]).__name__} values (e.g. {odd[0]!r}) that are "
                f"not strings in {path}: a feature must be all numbers, all strings or all booleans"
            )
        columns[str(name)] = column.to_numpy(dtype=object)
        dtypes.append(STRING)
    import pandas as pd

    return pd.DataFrame(columns), dtypes


def _estimator_name(estimator: Any) -> str:
    steps = getattr(estimator, "steps", None)
    if steps:  # Pipeline(StandardScaler, LogisticRegression)
        return "Pipeline(" + ", ".join(type(step).__name__ for _, step in steps) + ")"
    return type(estimator).__name__


def _params(estimator: Any) -> dict[str, Any]:
    return {
        k: v if isinstance(v, bool | int | float | str) else repr(v)
        for k, v in sorted(estimator.get_params(deep=False).items())
    }


def derive_metadata(
    estimator: Any, ref: Reference, version: str, description: str, blob: bytes, origin: str
) -> ModelMetadata:
    """What the rollout needs, derived from the fitted estimator and the reference data (pure)."""
    import sklearn

    task = task_of(estimator)
    X = ref.model_input(named=getattr(estimator, "feature_names_in_", None) is not None)
    common: dict[str, Any] = {
        "dataset": ref.name,
        "dataset_sha256": ref.sha256,
        "variant": version,
        "description": description or f"imported from {origin}",
        "estimator": _estimator_name(estimator),
        "params": _params(estimator),
        "seed": -1,  # not known: trained elsewhere
        "holdout_size": len(ref.y),
        "train_size": 0,  # not known: trained elsewhere
        "sklearn_version": sklearn.__version__,
        "git_revision": "unknown",
        "feature_names": ref.feature_names,
        "feature_means": [float(v) for v in ref.X.mean(axis=0)],
        "feature_stds": [float(v) for v in ref.X.std(axis=0)],
        "artifact_sha256": hashlib.sha256(blob).hexdigest(),
    }
    if ref.tabular:  # else none stored: every feature a number, as before string features
        common["feature_dtypes"] = list(ref.feature_dtypes)
        common["feature_categories"] = ref.categories()
    if task == REGRESSION:
        return _regressor_metadata(estimator, X, ref, common, origin)
    from sklearn.metrics import accuracy_score, f1_score

    classes = check_classifier(estimator)
    class_names = [str(c) for c in classes]
    unknown = sorted(set(ref.y) - set(class_names))
    if unknown:
        raise UsageError(
            f"target values {', '.join(unknown[:5])} are not classes of the model ({', '.join(class_names)}): "
            "is --target the right column?"
        )
    predicted = _predict(estimator, X, ref).astype(str)
    return ModelMetadata(
        **common,
        holdout_accuracy=float(accuracy_score(ref.y, predicted)),
        holdout_f1_macro=float(
            f1_score(ref.y, predicted, average="macro", labels=class_names, zero_division=0)
        ),
        class_names=class_names,
        extra={"imported_from": origin, "has_predict_proba": hasattr(estimator, "predict_proba")},
    )


def _predict(estimator: Any, X: Any, ref: Reference) -> np.ndarray:
    """The estimator's predictions of the data file's rows; a UsageError when it cannot make them
    (a column of strings where the model takes numbers, categories it refuses...)."""
    try:
        return np.asarray(estimator.predict(X))
    except (ValueError, TypeError, KeyError) as exc:
        text = [n for n, t in zip(ref.feature_names, ref.feature_dtypes, strict=True) if t != NUMBER]
        hint = f"; the file's columns {_some(text)} are not numbers: should they be?" if text else ""
        message = str(exc).splitlines()[0] if str(exc) else ""
        raise UsageError(
            f"{_estimator_name(estimator)} cannot predict the rows of data file {ref.name} "
            f"({type(exc).__name__}: {message}){hint}"
        ) from None


def _regressor_metadata(
    estimator: Any, X: Any, ref: Reference, common: dict[str, Any], origin: str
) -> ModelMetadata:
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    kind = _estimator_name(estimator)
    predicted = _predict(estimator, X, ref).astype(np.float64)
    if predicted.ndim == 2 and predicted.shape[1] == 1:
        predicted = predicted[:, 0]
    if predicted.ndim != 1:
        raise ModelError(
            f"{kind} predicts {predicted.shape[1]} values per row; multi-output regressors are not served"
        )
    if not np.isfinite(predicted).all():
        raise ModelError(f"{kind} predicts NaN or infinite values on the data file's rows")
    return ModelMetadata(
        **common,
        task=REGRESSION,
        holdout_mae=float(mean_absolute_error(ref.y, predicted)),
        holdout_rmse=float(np.sqrt(mean_squared_error(ref.y, predicted))),
        holdout_r2=float(r2_score(ref.y, predicted)) if len(ref.y) > 1 else 0.0,
        prediction_buckets=prediction_buckets(ref.y),
        class_names=[],
        extra={"imported_from": origin},
    )


def register(
    source: str, tag: str, data: Path, target: str, description: str = "", force: bool = False
) -> ModelRecord:
    """Register the model in ``source`` as ``tag`` (NAME:VERSION) with metadata derived from
    ``data``; an existing ``tag`` is replaced only with ``force`` (or when it is ``source`` itself)."""
    import bentoml

    _, version = parse_tag(tag)
    estimator, origin = load_estimator(source)
    task_of(estimator)
    ref = read_reference(data, target, estimator)
    blob = pickle.dumps(estimator, protocol=5)
    metadata = derive_metadata(estimator, ref, version, description, blob, origin)
    try:
        bentoml.models.get(tag)
        exists = True
    except bentoml.exceptions.NotFound:
        exists = False
    if exists and not force and tag != source:
        raise UsageError(f"{tag} is already in the model store; pass --force to replace it")
    if exists:
        bentoml.models.delete(tag)
    labels = {"variant": version, "dataset": ref.name, "imported": "true", "task": metadata.task}
    with bentoml.models.create(tag, metadata=metadata.to_dict(), labels=labels) as model:
        Path(model.path_of(ARTIFACT_FILE)).write_bytes(blob)
    return get_record(tag)
