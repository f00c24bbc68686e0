"""The training data: iris (shipped with scikit-learn, nothing downloaded), its fingerprint, and the
fixed train/holdout split every variant uses, so holdout metrics of any two models are comparable.

Called by ``bentos/train.py`` (training), the unit tests, and ``bench/serving.py`` (the same model).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from sklearn.datasets import load_iris
from sklearn.model_selection import train_test_split

DATASET = "iris"
SPLIT_SEED = 42
HOLDOUT_FRACTION = 0.3
# wire names of the features (the service accepts records keyed by these)
FEATURE_NAMES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@dataclass(frozen=True)
class Dataset:
    X_train: np.ndarray
    y_train: np.ndarray
    X_holdout: np.ndarray
    y_holdout: np.ndarray
    feature_names: list[str]
    class_names: list[str]
    sha256: str


def fingerprint(X: np.ndarray, y: np.ndarray, feature_names: list[str], class_names: list[str]) -> str:
    """sha256 over the exact values, names and split parameters: same number, same holdout."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(X, dtype="<f8").tobytes())
    digest.update(np.ascontiguousarray(y, dtype="<i8").tobytes())
    digest.update(",".join(feature_names).encode())
    digest.update(",".join(class_names).encode())
    digest.update(f"split={SPLIT_SEED}/{HOLDOUT_FRACTION}".encode())
    return digest.hexdigest()


def load() -> Dataset:
    iris = load_iris()
    X = np.asarray(iris.data, dtype=np.float64)
    y = np.asarray(iris.target, dtype=np.int64)
    class_names = [str(c) for c in iris.target_names]
    X_train, X_holdout, y_train, y_holdout = train_test_split(
        X, y, test_size=HOLDOUT_FRACTION, stratify=y, random_state=SPLIT_SEED
    )
    return Dataset(
        X_train=X_train,
        y_train=y_train,
        X_holdout=X_holdout,
        y_holdout=y_holdout,
        feature_names=list(FEATURE_NAMES),
        class_names=class_names,
        sha256=fingerprint(X, y, FEATURE_NAMES, class_names),
    )


def flip_labels(y: np.ndarray, fraction: float, n_classes: int, seed: int) -> np.ndarray:
    """Data poisoning: relabel ``fraction`` of the rows (chosen with ``seed``) as the next class."""
    rng = np.random.default_rng(seed)
    poisoned = y.copy()
    idx = rng.choice(len(y), int(round(fraction * len(y))), replace=False)
    poisoned[idx] = (poisoned[idx] + 1) % n_classes
    return poisoned
