"""The model registry: training writes reproducible models with metadata, loading verifies the
artifact hash, and the gate passes the good candidate and rejects the poisoned one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bentos import data
from bentos.train import fit_variant, train_many
from bentos.variants import VARIANTS
from rollout.cli.main import cli
from rollout.errors import GateFailedError, ModelIntegrityError, ModelNotFoundError, UsageError
from rollout.registry import compare, gate, get_record, list_records, load_model, parse_tag


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private BentoML model store holding every variant (never the user's ~/bentoml)."""
    home = tmp_path_factory.mktemp("bentoml")
    env_was_set = "BENTOML_HOME" in os.environ
    os.environ.setdefault("BENTOML_HOME", str(home))  # before bentoml is first imported: not ~/bentoml
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore

    root = home / "models"
    root.mkdir()
    BentoMLContainer.bentoml_home.set(str(home))
    BentoMLContainer.model_store.set(ModelStore(str(root)))
    try:
        train_many(["v1", "v2", "poisoned"])  # the slow ensemble takes long to fit; integration trains it
        yield root
    finally:
        BentoMLContainer.model_store.reset()
        BentoMLContainer.bentoml_home.reset()
        if not env_was_set:
            del os.environ["BENTOML_HOME"]


def test_dataset_fingerprint_is_stable_and_sensitive() -> None:
    first, second = data.load(), data.load()
    assert first.sha256 == second.sha256
    X = np.vstack([first.X_train, first.X_holdout])
    y = np.concatenate([first.y_train, first.y_holdout])
    changed = X.copy()
    changed[0, 0] += 0.1
    assert data.fingerprint(X, y, first.feature_names, first.class_names) != data.fingerprint(
        changed, y, first.feature_names, first.class_names
    )


def test_training_is_reproducible() -> None:
    ds = data.load()
    _, first = fit_variant(VARIANTS["v2"], ds)
    _, second = fit_variant(VARIANTS["v2"], ds)
    assert first == second


def test_label_flipping_changes_the_requested_fraction() -> None:
    y = np.repeat(np.arange(3), 40)
    flipped = data.flip_labels(y, 0.35, 3, seed=3)
    assert np.mean(flipped != y) == pytest.approx(0.35, abs=0.01)


def test_variants_have_the_promised_quality(store: Path) -> None:
    stable = get_record("iris:v1").metadata
    assert get_record("iris:v2").metadata.holdout_accuracy >= stable.holdout_accuracy
    assert get_record("iris:poisoned").metadata.holdout_accuracy < stable.holdout_accuracy - 0.10


def test_slow_variant_is_a_large_ensemble() -> None:
    slow = VARIANTS["slow"].build()
    assert type(slow).__name__ == "BaggingClassifier"
    assert slow.n_estimators >= 50  # every request runs each member: genuinely heavier, not a sleep


def test_metadata_records_what_serving_and_audits_need(store: Path) -> None:
    meta = get_record("iris:v1").metadata
    assert meta.dataset_sha256 == data.load().sha256
    assert meta.feature_names == data.FEATURE_NAMES
    assert meta.class_names == ["setosa", "versicolor", "virginica"]
    assert len(meta.feature_means) == len(meta.feature_stds) == 4
    assert all(s > 0 for s in meta.feature_stds)
    assert meta.params["C"] == 1.0
    assert meta.sklearn_version and meta.git_revision
    assert len(meta.artifact_sha256) == 64
    assert [r.tag for r in list_records("iris")] == ["iris:poisoned", "iris:v1", "iris:v2"]


def test_training_again_is_a_no_op(store: Path) -> None:
    before = get_record("iris:v1").metadata.artifact_sha256
    results = train_many(["v1"])
    assert results[0].skipped
    assert get_record("iris:v1").metadata.artifact_sha256 == before


def test_loaded_model_predicts(store: Path) -> None:
    loaded = load_model("iris:v2")
    ds = data.load()
    assert (loaded.estimator.predict(ds.X_holdout) == ds.y_holdout).mean() == pytest.approx(
        loaded.record.metadata.holdout_accuracy
    )


def test_tampered_artifact_is_refused(store: Path) -> None:
    artifact = get_record("iris:poisoned").artifact_path
    artifact.write_bytes(artifact.read_bytes() + b"\x00")
    with pytest.raises(ModelIntegrityError, match="modified"):
        load_model("iris:poisoned")
    with pytest.raises(ModelIntegrityError):
        gate("iris:poisoned", "iris:v1")
    train_many(["poisoned"], force=True)
    assert load_model("iris:poisoned").record.metadata.variant == "poisoned"


def test_unknown_tag_and_bad_tag() -> None:
    with pytest.raises(UsageError):
        parse_tag("iris")
    with pytest.raises(ModelNotFoundError, match="rollout train"):
        get_record("iris:does-not-exist")


def test_gate_passes_good_and_rejects_poisoned(store: Path) -> None:
    assert gate("iris:v2", "iris:v1").passed
    result = gate("iris:poisoned", "iris:v1")
    assert not result.passed
    assert any("holdout_accuracy" in r for r in result.reasons)


def test_gate_tolerance_and_incomparable_data() -> None:
    from dataclasses import replace

    stable = get_record_free()
    worse = replace(stable, holdout_accuracy=stable.holdout_accuracy - 0.03)
    assert not compare(worse, stable, 0.02, ("c", "s")).passed
    assert compare(worse, stable, 0.05, ("c", "s")).passed
    other = replace(stable, dataset_sha256="0" * 64)
    verdict = compare(other, stable, 0.5, ("c", "s"))
    assert not verdict.passed and "not comparable" in verdict.reasons[0]
    with pytest.raises(UsageError):
        compare(stable, stable, 1.5, ("c", "s"))


def get_record_free():
    from rollout.registry import ModelMetadata

    return ModelMetadata(
        dataset="iris",
        dataset_sha256="a" * 64,
        variant="v1",
        description="",
        estimator="LogisticRegression",
        params={},
        seed=0,
        holdout_accuracy=0.9,
        holdout_f1_macro=0.9,
        holdout_size=45,
        train_size=105,
        sklearn_version="1",
        git_revision="x",
        feature_names=[],
        feature_means=[],
        feature_stds=[],
        class_names=[],
        artifact_sha256="b" * 64,
    )


def test_cli_gate_exit_codes(store: Path) -> None:
    runner = CliRunner()
    good = runner.invoke(cli, ["gate", "iris:v2", "--against", "iris:v1"])
    assert good.exit_code == 0, good.output
    assert "PASSED" in good.output
    bad = runner.invoke(cli, ["gate", "iris:poisoned", "--against", "iris:v1"])
    assert bad.exit_code == GateFailedError.exit_code == 3
    assert "holdout_accuracy" in bad.output
    missing = runner.invoke(cli, ["gate", "iris:nope", "--against", "iris:v1"])
    assert missing.exit_code == 1
    assert "not in the BentoML model store" in missing.output


def test_cli_train_requires_names_or_all() -> None:
    result = CliRunner().invoke(cli, ["train"])
    assert result.exit_code == 2
