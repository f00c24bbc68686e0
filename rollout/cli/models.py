"""``rollout train``, ``rollout models`` and ``rollout gate``: the model-registry commands.

``rollout train [--all | NAME...]`` trains the iris variants into BentoML's model store (the same
code as ``python -m bentos.train``); both it and ``rollout models [NAME]`` show each model's artifact
digest (``sha256:<64 hex>``), the value to pin as a ModelRollout's ``stable.digest`` /
``candidate.digest`` or the chart's ``models.stableDigest`` / ``candidateDigest``. ``rollout models
--verify`` also hashes every artifact and marks those that do not match what training recorded
(exit 1); a model saved with ``bentoml.sklearn.save_model`` but not registered is listed as
``not registered`` with the ``rollout import`` command that registers it. ``rollout gate
CANDIDATE --against STABLE`` is the CI check for
new training code: it exits 3 (GateFailedError) with the reason when the candidate's holdout
accuracy or macro F1 is below the stable model's by more than ``--tolerance`` (a regressor: its MAE
or RMSE above stable's by more than ``--tolerance`` relative, or its R² below stable's minus
``--tolerance``). ``rollout import`` registers a user's own classifier or regressor
(rollout/registration.py). Registered by
``rollout/cli/main.py`` through COMMAND_MODULES.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from rollout.errors import GateFailedError, ModelError, ModelIntegrityError, UsageError

if TYPE_CHECKING:
    from rollout.registry import ModelMetadata


@click.command("train")
@click.argument("names", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Train every variant (v1, v2, poisoned, slow).")
@click.option("--force", is_flag=True, help="Retrain even when the stored model is up to date.")
def train_command(names: tuple[str, ...], all_: bool, force: bool) -> None:
    """Train model variants into the BentoML model store (idempotent)."""
    if all_ and names:
        raise UsageError("give variant names or --all, not both")
    if not all_ and not names:
        raise UsageError("name the variants to train (e.g. `rollout train v2`) or pass --all")
    from bentos.train import default_bentoml_home, train_many  # sklearn, numpy: after the usage checks

    default_bentoml_home()
    for result in train_many(list(names), force=force):
        meta = result.metadata
        state = "up to date" if result.skipped else "trained"
        click.echo(
            f"{result.tag:16} {state:10} accuracy={meta.holdout_accuracy:.4f} "
            f"f1={meta.holdout_f1_macro:.4f} digest=sha256:{meta.artifact_sha256}"
        )


@click.command("models")
@click.argument("name", required=False)
@click.option("--verify", is_flag=True, help="Hash every artifact too; exit 1 if one was modified.")
@click.option("--json", "as_json", is_flag=True, help="Print the models as JSON.")
def models_command(name: str | None, verify: bool, as_json: bool) -> None:
    """List the models in the store (optionally only NAME's) with the artifact digest to pin."""
    from bentos.train import default_bentoml_home
    from rollout.registry import list_store, verify_artifact

    default_bentoml_home()
    listing = list_store(name)
    rows: list[dict[str, object]] = []
    lines: list[str] = []
    bad: list[str] = []
    for record in listing.records:
        meta = record.metadata
        row: dict[str, object] = {
            "tag": record.tag,
            "estimator": meta.estimator,
            "holdoutAccuracy": meta.holdout_accuracy,
            "digest": record.digest,
        }
        if meta.is_regressor:
            row.update(task=meta.task, holdoutMae=meta.holdout_mae, holdoutRmse=meta.holdout_rmse,
                       holdoutR2=meta.holdout_r2)  # fmt: skip
        mark = ""
        if verify:
            try:
                verify_artifact(record)
                row["verified"], mark = True, "  verified"
            except ModelIntegrityError as exc:
                row["verified"], mark = False, "  MODIFIED"
                bad.append(str(exc))
        rows.append(row)
        lines.append(f"{record.tag:16} {meta.estimator:24} {_headline(meta)} {record.digest}{mark}")
    for tag in listing.unregistered:
        rows.append({"tag": tag, "registered": False, "register": _import_hint(tag)})
        lines.append(f"{tag:16} {'not registered':24} register it: {_import_hint(tag)}")
    if as_json:
        click.echo(json.dumps(rows))
    else:
        none = f"no model named {name} in the store" if name else "no models in the store"
        click.echo(
            "\n".join(lines)
            or f"{none}; "
            "train the demo's with `rollout train --all`, or register your own with `rollout import FILE --name NAME:VERSION --data HOLDOUT.csv --target COLUMN`"
        )
    if bad:
        raise ModelError("; ".join(bad))


@click.command("import")
@click.argument("source")
@click.option("--name", "tag", help="NAME:VERSION to register it as (default: SOURCE, for a store tag).")
@click.option(
    "--data",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Holdout/reference data, CSV or Parquet: the model's feature columns and the target.",
)
@click.option(
    "--target", required=True, help="The data's column with the true class (a regressor: the true value)."
)
@click.option("--description", default="", help="Shown by `rollout models`.")
@click.option("--force", is_flag=True, help="Replace a model already registered under --name.")
def import_command(
    source: str, tag: str | None, data: Path, target: str, description: str, force: bool
) -> None:
    """Register your own scikit-learn classifier or regressor (a joblib/pickle file, or a model saved
    with bentoml.sklearn.save_model) so it can be served, gated and rolled out."""
    if tag is None:
        if Path(source).exists() or Path(source).suffix in (".joblib", ".pkl", ".pickle"):
            raise UsageError(f"name the model to register from {source} with --name NAME:VERSION")
        tag = source
    from bentos.train import default_bentoml_home

    default_bentoml_home()
    from rollout.registration import register

    record = register(source, tag, data, target, description, force)
    meta = record.metadata
    what = "regression" if meta.is_regressor else f"classes={','.join(meta.class_names)}"
    click.echo(
        f"{record.tag:16} registered {meta.estimator} {_headline(meta)} on {meta.holdout_size} rows of "
        f"{data.name} features={len(meta.feature_names)} {what} {record.digest}"
    )


@click.command("gate")
@click.argument("candidate")
@click.option("--against", "stable", required=True, help="The stable model's tag, e.g. iris:v1.")
@click.option(
    "--tolerance",
    type=float,
    default=0.02,
    show_default=True,
    help="How far below stable a holdout metric may fall (absolute, 0..1); a regressor's MAE and RMSE "
    "may rise by this fraction of stable's (0.02: 2 %), its R² fall by this much.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def gate_command(candidate: str, stable: str, tolerance: float, as_json: bool) -> None:
    """Compare CANDIDATE's holdout metrics with STABLE's; exit 3 if the candidate is worse."""
    from bentos.train import default_bentoml_home
    from rollout.registry import gate

    default_bentoml_home()

    result = gate(candidate, stable, tolerance)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "candidate": result.candidate,
                    "stable": result.stable,
                    "tolerance": result.tolerance,
                    "passed": result.passed,
                    "reasons": result.reasons,
                    "deltas": result.deltas,
                }
            )
        )
    else:
        click.echo(result.summary())
    if not result.passed:
        raise GateFailedError(f"{candidate} is worse than {stable}: " + "; ".join(result.reasons))


def _headline(meta: ModelMetadata) -> str:
    """The holdout metrics of one model, for a line of output."""
    if meta.is_regressor:
        return f"mae={meta.holdout_mae:.4g} rmse={meta.holdout_rmse:.4g} r2={meta.holdout_r2:.4f}"
    return f"accuracy={meta.holdout_accuracy:.4f} f1={meta.holdout_f1_macro:.4f}"


def _import_hint(tag: str) -> str:
    """The command that registers a model saved with bentoml.sklearn.save_model, in place."""
    return f"rollout import {tag} --data HOLDOUT.csv --target COLUMN"


def register(cli: click.Group) -> None:
    cli.add_command(train_command)
    cli.add_command(models_command)
    cli.add_command(gate_command)
    cli.add_command(import_command)
