"""``rollout train`` and ``rollout gate``: the model-registry commands.

``rollout train [--all | NAME...]`` trains the iris variants into BentoML's model store (the same
code as ``python -m bentos.train``); ``rollout gate CANDIDATE --against STABLE`` is the CI check for
new training code: it exits 3 (GateFailedError) with the reason when the candidate's holdout
accuracy or macro F1 is below the stable model's by more than ``--tolerance``. Registered by
``rollout/cli/main.py`` through COMMAND_MODULES.
"""

from __future__ import annotations

import json

import click

from rollout.errors import GateFailedError, UsageError


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
            f"f1={meta.holdout_f1_macro:.4f} sha256={meta.artifact_sha256[:12]}"
        )


@click.command("gate")
@click.argument("candidate")
@click.option("--against", "stable", required=True, help="The stable model's tag, e.g. iris:v1.")
@click.option(
    "--tolerance",
    type=float,
    default=0.02,
    show_default=True,
    help="How far below stable a holdout metric may fall (absolute, 0..1).",
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


def register(cli: click.Group) -> None:
    cli.add_command(train_command)
    cli.add_command(gate_command)
