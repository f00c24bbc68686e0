"""Train the iris model variants and save them into BentoML's model store with their metadata.

``python -m bentos.train --all`` (``make models``) and ``rollout train`` call :func:`train`. Training
is seeded and idempotent: a variant already in the store with the same dataset fingerprint,
parameters and scikit-learn version is skipped; one that differs is replaced.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
from sklearn.metrics import accuracy_score, f1_score

from bentos import data
from bentos.variants import SEED, VARIANTS, Variant, get_variant
from rollout.errors import ModelError, ModelNotFoundError
from rollout.registry import ARTIFACT_FILE, ModelMetadata, get_record

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class TrainResult:
    tag: str
    skipped: bool
    metadata: ModelMetadata


def git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def _plain(value: Any) -> Any:
    """Estimator parameters as metadata-safe values (nested estimators become their repr)."""
    if isinstance(value, bool | int | float | str):
        return value
    return repr(value)  # None, nested estimators: metadata holds basic types only


def estimator_params(estimator: Any) -> dict[str, Any]:
    return {k: _plain(v) for k, v in sorted(estimator.get_params(deep=False).items())}


def fit_variant(variant: Variant, ds: data.Dataset) -> tuple[Any, dict[str, Any]]:
    """Fit one variant; returns the estimator and its metrics/statistics (no store I/O)."""
    y_train = ds.y_train
    if variant.label_flip_fraction:
        y_train = data.flip_labels(
            ds.y_train, variant.label_flip_fraction, len(ds.class_names), variant.flip_seed
        )
    estimator = variant.build()
    estimator.fit(ds.X_train, y_train)
    predicted = estimator.predict(ds.X_holdout)
    stats = {
        "holdout_accuracy": float(accuracy_score(ds.y_holdout, predicted)),
        "holdout_f1_macro": float(f1_score(ds.y_holdout, predicted, average="macro")),
        "feature_means": [float(v) for v in np.mean(ds.X_train, axis=0)],
        "feature_stds": [float(v) for v in np.std(ds.X_train, axis=0)],
    }
    return estimator, stats


def _up_to_date(variant: Variant, ds: data.Dataset, params: dict[str, Any]) -> ModelMetadata | None:
    try:
        record = get_record(variant.tag)
    except ModelNotFoundError:
        return None
    except ModelError:
        return None  # saved by something else: replace it
    meta = record.metadata
    same = (
        meta.dataset_sha256 == ds.sha256
        and meta.params == params
        and meta.sklearn_version == sklearn.__version__
        and meta.label_flip_fraction == variant.label_flip_fraction
        and (record.path / ARTIFACT_FILE).is_file()
    )
    return meta if same else None


def train(variant: Variant, force: bool = False) -> TrainResult:
    import bentoml

    ds = data.load()
    params = estimator_params(variant.build())
    if not force and (existing := _up_to_date(variant, ds, params)) is not None:
        return TrainResult(variant.tag, True, existing)
    estimator, stats = fit_variant(variant, ds)
    blob = pickle.dumps(estimator, protocol=5)
    metadata = ModelMetadata(
        dataset=data.DATASET,
        dataset_sha256=ds.sha256,
        variant=variant.version,
        description=variant.description,
        estimator=type(estimator).__name__,
        params=params,
        seed=SEED,
        holdout_size=len(ds.y_holdout),
        train_size=len(ds.y_train),
        sklearn_version=sklearn.__version__,
        git_revision=git_revision(),
        feature_names=ds.feature_names,
        class_names=ds.class_names,
        artifact_sha256=hashlib.sha256(blob).hexdigest(),
        label_flip_fraction=variant.label_flip_fraction,
        **stats,
    )
    try:
        bentoml.models.delete(variant.tag)
    except bentoml.exceptions.NotFound:
        pass
    with bentoml.models.create(
        variant.tag, metadata=metadata.to_dict(), labels={"variant": variant.version, "dataset": data.DATASET}
    ) as model:
        Path(model.path_of(ARTIFACT_FILE)).write_bytes(blob)
    return TrainResult(variant.tag, False, metadata)


def train_many(names: list[str], force: bool = False) -> list[TrainResult]:
    variants = list(VARIANTS.values()) if not names else [get_variant(n) for n in names]
    return [train(v, force=force) for v in variants]


def default_bentoml_home() -> None:
    """Command-line entry points use the project's store (as the Makefile does), never ~/bentoml,
    unless BENTOML_HOME says otherwise. Must run before bentoml is imported."""
    os.environ.setdefault("BENTOML_HOME", str(REPO_ROOT / ".cache" / "bentoml"))


def main(argv: list[str] | None = None) -> int:
    default_bentoml_home()
    parser = argparse.ArgumentParser(prog="python -m bentos.train", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"variants to train ({', '.join(VARIANTS)}); default: all")
    parser.add_argument("--all", action="store_true", help="train every variant")
    parser.add_argument("--force", action="store_true", help="retrain even if up to date")
    args = parser.parse_args(argv)
    if args.all and args.names:
        parser.error("give variant names or --all, not both")
    for result in train_many([] if args.all else args.names, force=args.force):
        meta = result.metadata
        state = "up to date" if result.skipped else "trained"
        print(
            f"{result.tag:16} {state:10} accuracy={meta.holdout_accuracy:.4f} f1={meta.holdout_f1_macro:.4f} "
            f"{meta.estimator}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
