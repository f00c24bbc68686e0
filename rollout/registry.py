"""The model registry: trained models and their metadata in BentoML's model store.

Training (``bentos/train.py``) writes a model as one pickled artifact plus the metadata described by
:class:`ModelMetadata`; the model service (``bentos/service.py``) loads it with :func:`load_model`,
which verifies the artifact's sha256 *before* unpickling it (the bytes it hashed are the bytes it
unpickles: no second read a rewrite could slip into) and refuses a bad file with
:class:`~rollout.errors.ModelIntegrityError`; ``rollout gate`` (``rollout/cli/models.py``) compares
two models' holdout metrics with :func:`gate` (a classifier's accuracy and F1, a regressor's MAE,
RMSE and R²).

Two checks, for two threats:

- **the recorded digest** (``artifact_sha256`` in the store's metadata, written at training) finds
  a corrupted or half-written file. It is no defence against tampering: whoever can rewrite the
  artifact can rewrite the metadata beside it;
- **a pinned digest** (``sha256:<hex>``, the ModelRollout's ``stable.digest`` / ``candidate.digest``
  or the chart's ``models.stableDigest`` / ``candidateDigest``, handed to the server as
  ``BENTO_MODEL_DIGEST``) comes from outside the store, so an artifact rewritten together with its
  recorded digest is still refused. ``rollout models`` shows each model's digest to pin.

The store is BentoML's: ``$BENTOML_HOME/models`` (the Makefile points BENTOML_HOME at
``.cache/bentoml``). Tags are ``name:version``, e.g. ``iris:v1``.
"""

from __future__ import annotations

import hashlib
import pickle
import re
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Any

from rollout.errors import ModelError, ModelIntegrityError, ModelNotFoundError, UsageError

ARTIFACT_FILE = "model.pkl"
METADATA_SCHEMA = 1
DIGEST_PREFIX = "sha256:"
DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")  # rollout.spec.MODEL_DIGEST
# the model server's environment (bentos/service.py): which model to serve, and the pinned digest
# of its artifact (refuse any other); set by rollout/local/bento.py and the chart's predictor
MODEL_TAG_ENV = "BENTO_MODEL_TAG"
MODEL_DIGEST_ENV = "BENTO_MODEL_DIGEST"


# a feature's type (ModelMetadata.feature_dtypes): a number (float64 to the model), a string
# (a category: str values in a DataFrame column) or a boolean; a model stored without them has
# numeric features only
NUMBER = "number"
STRING = "string"
BOOL = "bool"
FEATURE_DTYPES = (NUMBER, STRING, BOOL)


CLASSIFICATION = "classification"
REGRESSION = "regression"
TASKS = (CLASSIFICATION, REGRESSION)
# the holdout metrics each task must have in its metadata (what ``rollout gate`` compares)
TASK_FIELDS = {
    CLASSIFICATION: ("holdout_accuracy", "holdout_f1_macro"),
    REGRESSION: ("holdout_mae", "holdout_rmse", "holdout_r2", "prediction_buckets"),
}


@dataclass(frozen=True, kw_only=True)
class ModelMetadata:
    """Everything recorded with a model at training; stored as the BentoML model's metadata.

    ``task`` is ``classification`` (the default: every model stored before regressors were served
    has none) or ``regression``. A classifier has its holdout accuracy and macro F1 and its class
    names; a regressor has its holdout MAE, RMSE and R², no class names, and ``prediction_buckets``:
    the upper bounds of its ``model_prediction_value`` histogram, quantiles of the holdout target.
    What a task does not have is None (and not stored: BentoML's metadata holds no None).

    ``feature_dtypes`` is one of ``number``, ``string``, ``bool`` per feature (empty, the default:
    every feature a number, as every model stored before string features were served);
    ``feature_means`` and ``feature_stds`` are the numeric features' only, in feature order, and
    ``feature_categories`` the values each string feature had in the holdout (sorted, at most
    ``rollout.registration.MAX_CATEGORIES``; for the docs and drift, not a whitelist: the model decides on others)."""

    dataset: str
    dataset_sha256: str
    variant: str
    description: str
    estimator: str
    params: dict[str, Any]
    seed: int
    holdout_accuracy: float | None = None
    holdout_f1_macro: float | None = None
    holdout_size: int
    train_size: int
    sklearn_version: str
    git_revision: str
    feature_names: list[str]
    feature_means: list[float]
    feature_stds: list[float]
    class_names: list[str]
    artifact_sha256: str
    label_flip_fraction: float = 0.0
    schema: int = METADATA_SCHEMA
    extra: dict[str, Any] = field(default_factory=dict)
    task: str = CLASSIFICATION
    holdout_mae: float | None = None
    holdout_rmse: float | None = None
    holdout_r2: float | None = None
    prediction_buckets: list[float] = field(default_factory=list)
    feature_dtypes: list[str] = field(default_factory=list)
    feature_categories: dict[str, list[str]] = field(default_factory=dict)

    @property
    def is_regressor(self) -> bool:
        return self.task == REGRESSION

    @property
    def dtypes(self) -> list[str]:
        """Each feature's type, ``number`` for all of a model stored without them."""
        return list(self.feature_dtypes) or [NUMBER] * len(self.feature_names)

    @property
    def numeric_features(self) -> list[str]:
        """The numeric features' names, in feature order (those of the means and z-scores)."""
        return [n for n, t in zip(self.feature_names, self.dtypes, strict=True) if t == NUMBER]

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any], tag: str = "?") -> ModelMetadata:
        fields = cls.__dataclass_fields__
        task = data.get("task", CLASSIFICATION)
        if task not in TASKS:
            raise ModelError(
                f"model {tag} has task {task!r} in its metadata, not one of {', '.join(TASKS)}: register "
                f"it again with `rollout import {tag} --name NAME:VERSION --data HOLDOUT.csv --target COLUMN`"
            )
        required = [
            name for name, f in fields.items() if f.default is MISSING and f.default_factory is MISSING
        ]
        missing = [f for f in required if f not in data]
        missing += [f for f in TASK_FIELDS[task] if data.get(f) is None or data.get(f) == []]
        dtypes = data.get("feature_dtypes") or []
        if dtypes and (
            len(dtypes) != len(data.get("feature_names", [])) or not set(dtypes) <= set(FEATURE_DTYPES)
        ):
            raise ModelError(
                f"model {tag} has feature_dtypes {dtypes!r} in its metadata, not one of "
                f"{', '.join(FEATURE_DTYPES)} per feature: register it again with `rollout import`"
            )
        if missing:
            raise ModelError(
                f"model {tag} has no {', '.join(sorted(missing))} in its metadata: register it with "
                f"`rollout import {tag} --name NAME:VERSION --data HOLDOUT.csv --target COLUMN` "
                "(the iris variants: `rollout train --all`)"
            )
        return cls(**{k: v for k, v in data.items() if k in fields})


@dataclass(frozen=True)
class ModelRecord:
    """A model in the store: its tag, where its artifact lives, and its metadata."""

    tag: str
    name: str
    version: str
    path: Path
    metadata: ModelMetadata

    @property
    def artifact_path(self) -> Path:
        return self.path / ARTIFACT_FILE

    @property
    def digest(self) -> str:
        """The digest recorded at training, as a pin is written: ``sha256:<64 hex>``."""
        return f"{DIGEST_PREFIX}{self.metadata.artifact_sha256}"


@dataclass(frozen=True)
class LoadedModel:
    record: ModelRecord
    estimator: Any


def parse_tag(tag: str) -> tuple[str, str]:
    """``"iris:v2"`` -> ``("iris", "v2")``; a tag without a version is a usage error (no "latest")."""
    name, sep, version = tag.partition(":")
    if not sep or not name or not version:
        raise UsageError(f"model tag {tag!r} must be NAME:VERSION, e.g. iris:v1")
    return name, version


def get_record(tag: str) -> ModelRecord:
    """The store entry for ``tag``; ModelNotFoundError names the store and how to fill it."""
    import bentoml
    from bentoml.exceptions import NotFound

    name, version = parse_tag(tag)
    try:
        model = bentoml.models.get(f"{name}:{version}")
    except NotFound as exc:
        raise ModelNotFoundError(
            f"model {tag} is not in the BentoML model store ({_store_dir()}); "
            "train the iris variants with `rollout train --all`, or register your own model with `rollout import`"
        ) from exc
    metadata = ModelMetadata.from_dict(dict(model.info.metadata), tag)
    return ModelRecord(tag=tag, name=name, version=version, path=Path(model.path), metadata=metadata)


# what bentoml.sklearn.save_model records as a model's module (bentoml.sklearn.load_model takes both)
SKLEARN_MODULES = ("bentoml.sklearn", "_bentoml_impl.frameworks.sklearn")


@dataclass(frozen=True)
class StoreEntry:
    """One model in BentoML's store, as :func:`listing_of` reads it."""

    tag: str
    name: str
    version: str
    path: Path
    module: str
    metadata: dict[str, Any]


@dataclass(frozen=True)
class Listing:
    """The store's models: ``records``, registered (saved by bentos.train or ``rollout import``), and
    ``unregistered``, the tags of models saved with ``bentoml.sklearn.save_model`` without our
    metadata (``rollout import TAG --data HOLDOUT.csv --target COLUMN`` registers one in place)."""

    records: list[ModelRecord]
    unregistered: list[str]


def listing_of(entries: list[StoreEntry]) -> Listing:
    """Pure: the registered records (their metadata reads as :class:`ModelMetadata`) and the
    unregistered scikit-learn models, each sorted by tag; other frameworks' models are left out
    (neither served nor importable)."""
    records: list[ModelRecord] = []
    unregistered: list[str] = []
    for entry in entries:
        try:
            metadata = ModelMetadata.from_dict(entry.metadata, entry.tag)
        except ModelError:
            if entry.module in SKLEARN_MODULES:
                unregistered.append(entry.tag)
            continue
        records.append(
            ModelRecord(
                tag=entry.tag, name=entry.name, version=entry.version, path=entry.path, metadata=metadata
            )
        )
    return Listing(sorted(records, key=lambda r: r.tag), sorted(unregistered))


def list_store(name: str | None = None) -> Listing:
    """The store's models (see :class:`Listing`), optionally only those called ``name`` (none when the
    store has no model of that name; UsageError for a name BentoML cannot hold)."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        models = bentoml.models.list(name)
    except NotFound:
        return Listing([], [])
    except ValueError as exc:  # not a valid tag
        raise UsageError(str(exc)) from None
    return listing_of(
        [
            StoreEntry(
                tag=str(model.tag),
                name=model.tag.name,
                version=model.tag.version or "",
                path=Path(model.path),
                module=model.info.module,
                metadata=dict(model.info.metadata),
            )
            for model in models
        ]
    )


def list_records(name: str | None = None) -> list[ModelRecord]:
    """The registered models in the store (:func:`list_store`'s records), optionally only ``name``'s."""
    return list_store(name).records


def check_digest(pinned: str | None) -> str | None:
    """``pinned`` as given, None for none (unset or empty); UsageError unless ``sha256:<64 hex>``."""
    if not pinned:
        return None
    if not DIGEST_RE.match(pinned):
        raise UsageError(
            f"model digest {pinned!r} must be sha256: and 64 lowercase hex digits, as `rollout models` shows it"
        )
    return pinned


def verify_bytes(record: ModelRecord, blob: bytes, pinned: str | None = None) -> str:
    """The artifact's digest (``sha256:<hex>``) if ``blob`` is the one to load; else ModelIntegrityError.

    With ``pinned``, the artifact must have exactly that digest, whatever the store records (a
    rewrite of the artifact and of its recorded digest together is refused); the recorded digest is
    checked as well, as a corruption check."""
    pinned = check_digest(pinned)
    actual = DIGEST_PREFIX + hashlib.sha256(blob).hexdigest()
    if pinned is not None and actual != pinned:
        raise ModelIntegrityError(
            f"model {record.tag}: artifact {record.artifact_path} has digest {actual}, but the pinned "
            f"digest is {pinned}; refusing to serve it (the model store holds another artifact under "
            "this tag: restore the pinned one, or pin the new digest if it was meant)"
        )
    if actual != record.digest:
        raise ModelIntegrityError(
            f"model {record.tag}: artifact {record.artifact_path} has digest {actual}, but training "
            f"recorded {record.digest}; the file was modified — refusing to load it (delete the model "
            "and retrain it)"
        )
    return actual


def _read_artifact(record: ModelRecord) -> bytes:
    path = record.artifact_path
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ModelIntegrityError(
            f"model {record.tag}: artifact {path} is missing; retrain the model"
        ) from None
    except OSError as exc:
        raise ModelIntegrityError(f"model {record.tag}: cannot read artifact {path}: {exc}") from None


def verify_artifact(record: ModelRecord, pinned: str | None = None) -> str:
    """The artifact's digest if it is the one recorded at training and, with ``pinned``, the pinned
    one; ModelIntegrityError otherwise (see :func:`verify_bytes`)."""
    return verify_bytes(record, _read_artifact(record), pinned)


def load_model(tag: str, pinned: str | None = None) -> LoadedModel:
    """Load the estimator for ``tag`` after checking its artifact's digest (and the ``pinned`` one):
    the bytes hashed are the bytes unpickled, so a bad file is never unpickled."""
    record = get_record(tag)
    blob = _read_artifact(record)
    verify_bytes(record, blob, pinned)
    estimator = pickle.loads(blob)
    return LoadedModel(record=record, estimator=estimator)


@dataclass(frozen=True)
class GateResult:
    candidate: str
    stable: str
    tolerance: float
    passed: bool
    reasons: list[str]
    deltas: dict[str, float]

    def summary(self) -> str:
        lines = [f"gate {self.candidate} against {self.stable} (tolerance {self.tolerance:.3f}):"]
        for metric, delta in self.deltas.items():
            lines.append(f"  {metric}: {delta:+.4f}")
        lines.append("  PASSED" if self.passed else "  FAILED: " + "; ".join(self.reasons))
        return "\n".join(lines)


GATED_METRICS = ("holdout_accuracy", "holdout_f1_macro")
# a regressor's errors (lower is better) may grow by ``tolerance`` relative to stable's; its R²
# (higher is better, at most 1) may fall by ``tolerance``, absolute, as a classifier's metrics
RELATIVE_ERROR_METRICS = ("holdout_mae", "holdout_rmse")
ABSOLUTE_SCORE_METRICS = ("holdout_r2",)


def compare(
    candidate: ModelMetadata, stable: ModelMetadata, tolerance: float, names: tuple[str, str]
) -> GateResult:
    """Pure comparison: the candidate fails when a gated metric is below stable's minus ``tolerance``
    (a regressor: its MAE or RMSE above stable's by more than ``tolerance`` relative, or its R²
    below stable's minus ``tolerance``), or when the two were evaluated on different data (then
    the numbers are not comparable). A classifier and a regressor are not comparable at all: a
    UsageError."""
    if not 0.0 <= tolerance < 1.0:
        raise UsageError(f"tolerance must be in [0, 1), got {tolerance}")
    cand_name, stable_name = names
    if candidate.task != stable.task:
        raise UsageError(
            f"{cand_name} is a {candidate.task} model and {stable_name} a {stable.task} one: gate a "
            "candidate against a stable model of the same task"
        )
    reasons: list[str] = []
    deltas: dict[str, float] = {}
    if candidate.dataset_sha256 != stable.dataset_sha256:
        reasons.append(
            f"{cand_name} was evaluated on dataset {candidate.dataset_sha256[:12]}…, {stable_name} on "
            f"{stable.dataset_sha256[:12]}…; holdout metrics are not comparable"
        )
    if candidate.is_regressor:
        _compare_regressors(candidate, stable, tolerance, stable_name, reasons, deltas)
        return GateResult(cand_name, stable_name, tolerance, not reasons, reasons, deltas)
    _scores_not_below(GATED_METRICS, candidate, stable, tolerance, stable_name, reasons, deltas)
    return GateResult(cand_name, stable_name, tolerance, not reasons, reasons, deltas)


def _scores_not_below(
    metrics: tuple[str, ...],
    candidate: ModelMetadata,
    stable: ModelMetadata,
    tolerance: float,
    stable_name: str,
    reasons: list[str],
    deltas: dict[str, float],
) -> None:
    """Higher-is-better scores (accuracy, F1, R2): a reason for each more than ``tolerance`` below."""
    for metric in metrics:
        cand_value = float(getattr(candidate, metric))
        stable_value = float(getattr(stable, metric))
        deltas[metric] = cand_value - stable_value
        if cand_value < stable_value - tolerance - 1e-12:
            reasons.append(
                f"{metric} {cand_value:.4f} is {stable_value - cand_value:.4f} below {stable_name}'s "
                f"{stable_value:.4f} (tolerance {tolerance:.4f})"
            )


def _compare_regressors(
    candidate: ModelMetadata,
    stable: ModelMetadata,
    tolerance: float,
    stable_name: str,
    reasons: list[str],
    deltas: dict[str, float],
) -> None:
    for metric in RELATIVE_ERROR_METRICS:
        cand_value = float(getattr(candidate, metric))
        stable_value = float(getattr(stable, metric))
        deltas[metric] = cand_value - stable_value
        if cand_value > stable_value * (1.0 + tolerance) + 1e-12:
            worse = (cand_value / stable_value - 1.0) if stable_value > 0 else float("inf")
            reasons.append(
                f"{metric} {cand_value:.4g} is {worse:.1%} above {stable_name}'s {stable_value:.4g} "
                f"(tolerance {tolerance:.1%} relative)"
            )
    _scores_not_below(ABSOLUTE_SCORE_METRICS, candidate, stable, tolerance, stable_name, reasons, deltas)


def gate(candidate_tag: str, stable_tag: str, tolerance: float = 0.02, verify: bool = True) -> GateResult:
    """Compare two stored models; with ``verify`` both artifacts' hashes are checked as well."""
    candidate = get_record(candidate_tag)
    stable = get_record(stable_tag)
    if verify:
        verify_artifact(candidate)
        verify_artifact(stable)
    return compare(candidate.metadata, stable.metadata, tolerance, (candidate_tag, stable_tag))


def _store_dir() -> str:
    from bentoml._internal.configuration.containers import BentoMLContainer

    return str(BentoMLContainer.bentoml_home.get()) + "/models"
