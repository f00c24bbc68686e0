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
from rollout.registry import (
    StoreEntry,
    compare,
    gate,
    get_record,
    list_records,
    listing_of,
    load_model,
    parse_tag,
    verify_artifact,
)


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


# --- pinned digests: a rewrite of the artifact *and* of the store's recorded digest ------------


def rewrite_store(record_path: Path, blob: bytes) -> str:
    """Replace a stored model's artifact with ``blob`` and its recorded digest with blob's, as
    someone who can write the model store would: the store is consistent again. Returns the new
    digest."""
    import hashlib

    import yaml

    (record_path / "model.pkl").write_bytes(blob)
    info_path = record_path / "model.yaml"
    info = yaml.safe_load(info_path.read_text())
    new = hashlib.sha256(blob).hexdigest()
    info["metadata"]["artifact_sha256"] = new
    info_path.write_text(yaml.safe_dump(info))
    return "sha256:" + new


def test_a_pinned_digest_refuses_an_artifact_rewritten_with_the_stores_digest(store: Path) -> None:
    original = get_record("iris:v2")
    pinned = original.digest
    assert load_model("iris:v2", pinned).record.digest == pinned  # the right pin loads
    swapped = get_record("iris:poisoned").artifact_path.read_bytes()
    new = rewrite_store(original.path, swapped)
    try:
        assert get_record("iris:v2").digest == new  # the store agrees with itself again ...
        assert load_model("iris:v2").estimator is not None  # ... so the recorded digest alone lets it in
        with pytest.raises(ModelIntegrityError) as refused:  # the pin does not
            load_model("iris:v2", pinned)
        assert new in str(refused.value) and pinned in str(refused.value)
        with pytest.raises(ModelIntegrityError, match="pinned"):
            verify_artifact(get_record("iris:v2"), pinned)
    finally:
        train_many(["v2"], force=True)
    assert get_record("iris:v2").digest == pinned  # training is reproducible: the same digest


def test_the_recorded_digest_is_still_checked_beside_a_matching_pin(store: Path) -> None:
    """The store's digest stays a corruption check: artifact and recorded digest must agree too."""
    record = get_record("iris:v1")
    info = (record.path / "model.yaml").read_text()
    (record.path / "model.yaml").write_text(info.replace(record.metadata.artifact_sha256, "f" * 64))
    try:
        with pytest.raises(ModelIntegrityError, match="training recorded"):
            load_model("iris:v1", record.digest)
    finally:
        (record.path / "model.yaml").write_text(info)
    assert load_model("iris:v1", record.digest).record.digest == record.digest


@pytest.mark.parametrize("bad", ["abc", "sha256:" + "A" * 64, "sha256:" + "a" * 63, "md5:" + "a" * 32])
def test_a_malformed_pin_is_a_usage_error(store: Path, bad: str) -> None:
    with pytest.raises(UsageError, match="sha256"):
        load_model("iris:v1", bad)


def test_cli_models_shows_the_digest_to_pin_and_verify_finds_a_modified_artifact(store: Path) -> None:
    import json

    runner = CliRunner()
    listed = runner.invoke(cli, ["models", "--json"])
    assert listed.exit_code == 0, listed.output
    digests = {row["tag"]: row["digest"] for row in json.loads(listed.output)}
    assert digests == {r.tag: r.digest for r in list_records("iris")}
    assert all(len(d) == len("sha256:") + 64 for d in digests.values())
    text = runner.invoke(cli, ["models", "iris"])
    assert digests["iris:v1"] in text.output
    unknown = runner.invoke(cli, ["models", "nosuch"])
    assert (unknown.exit_code, unknown.output) == (
        0,
        "no model named nosuch in the store; "
        "train the demo's with `rollout train --all`, or register your own with `rollout import FILE --name NAME:VERSION --data HOLDOUT.csv --target COLUMN`\n",
    )
    assert runner.invoke(cli, ["models", "Bad Name!"]).exit_code == 2
    record = get_record("iris:v1")
    blob = record.artifact_path.read_bytes()
    record.artifact_path.write_bytes(blob + b"\0")
    try:
        verified = runner.invoke(cli, ["models", "--verify"])
        assert verified.exit_code == 1
        line = next(x for x in verified.output.splitlines() if x.startswith("iris:v1 "))
        assert line.endswith("MODIFIED")
        assert "iris:v2" in verified.output and "verified" in verified.output
    finally:
        record.artifact_path.write_bytes(blob)


def test_the_listing_keeps_unregistered_scikit_learn_models_and_leaves_other_frameworks_out(
    store: Path,
) -> None:
    ours = get_record("iris:v1")
    entry = StoreEntry(
        tag="iris:v1", name="iris", version="v1", path=ours.path, module="", metadata=ours.metadata.to_dict()
    )
    saved = StoreEntry(tag="mine:abc", name="mine", version="abc", path=ours.path, module="bentoml.sklearn",
                       metadata={})  # fmt: skip
    torch = StoreEntry(tag="net:v1", name="net", version="v1", path=ours.path, module="bentoml.pytorch",
                       metadata={})  # fmt: skip
    listing = listing_of([saved, torch, entry])
    assert [r.tag for r in listing.records] == ["iris:v1"]
    assert listing.records[0].metadata == ours.metadata
    assert listing.unregistered == ["mine:abc"]


def test_cli_models_lists_a_model_saved_with_bentoml_sklearn_as_not_registered(store: Path) -> None:
    import json

    import bentoml
    from sklearn.linear_model import LogisticRegression

    runner = CliRunner()
    before = runner.invoke(cli, ["models"])
    estimator = LogisticRegression().fit([[0.0], [1.0]], [0, 1])
    tag = str(bentoml.sklearn.save_model("mine", estimator).tag)  # no metadata of ours
    try:
        text = runner.invoke(cli, ["models"])
        assert text.exit_code == 0, text.output
        lines = text.output.splitlines()
        assert lines[: len(before.output.splitlines())] == before.output.splitlines()  # unchanged
        assert lines[-1].split() == [tag, "not", "registered", "register", "it:", "rollout", "import", tag,
                                     "--data", "HOLDOUT.csv", "--target", "COLUMN"]  # fmt: skip
        only = runner.invoke(cli, ["models", "mine"])
        assert (only.exit_code, only.output) == (0, lines[-1] + "\n")
        rows = json.loads(runner.invoke(cli, ["models", "--json"]).output)
        assert rows[-1] == {
            "tag": tag,
            "registered": False,
            "register": f"rollout import {tag} --data HOLDOUT.csv --target COLUMN",
        }
        assert runner.invoke(cli, ["models", "--verify"]).exit_code == 0
        assert tag not in [r.tag for r in list_records()]
    finally:
        bentoml.models.delete(tag)


def test_a_rollout_spec_pins_digests_and_refuses_a_malformed_one() -> None:
    from rollout.errors import SpecError
    from rollout.spec import load_rollout, parse_rollout

    good = Path(__file__).resolve().parents[2] / "rollout" / "demo" / "specs" / "canary-good.yaml"
    doc = load_rollout(good).model_dump(by_alias=True, mode="json", exclude_none=True)
    assert doc["spec"]["stable"].get("digest") is None  # optional: no pin by default
    doc["spec"]["stable"]["digest"] = "sha256:" + "a" * 64
    assert parse_rollout(doc).spec.stable.digest == "sha256:" + "a" * 64
    doc["spec"]["candidate"]["digest"] = "a" * 64  # no algorithm: refused, naming the field
    with pytest.raises(SpecError, match=r"spec\.candidate\.digest"):
        parse_rollout(doc)


def test_importing_a_model_another_framework_saved_names_that_framework(store: Path) -> None:
    """bentoml.sklearn.load_model says NotFound for a model saved by another framework: `rollout
    import` said "neither a file nor a model in the store" of a model that is in the store."""
    import bentoml

    from rollout.errors import ModelError
    from rollout.registration import load_estimator

    tag = str(bentoml.picklable_model.save_model("notsk", {"weights": [1, 2]}).tag)
    try:
        with pytest.raises(ModelError, match=r"saved by bentoml\.picklable_model, not bentoml\.sklearn"):
            load_estimator(tag)
    finally:
        bentoml.models.delete(tag)
