"""ModelRollout status written by the controller: what users read (phase, step, weights, analysis,
history, conditions) and what a restarted controller resumes from; user commands as annotations;
the cluster CLI commands merged with same-named local ones."""

from __future__ import annotations

import click
from click.testing import CliRunner

from rollout.actions import CommandKind, Observations
from rollout.cli.cluster import register, render_status
from rollout.controller.status import (
    COMMAND_PREFIX,
    applied_command_keys,
    command_annotation,
    commands_from_annotations,
    state_from_status,
    status_from_state,
)
from rollout.engine import new_rollout, step
from rollout.errors import UsageError
from rollout.routers.base import Routes
from rollout.spec import parse_rollout

SPEC = parse_rollout(
    {
        "apiVersion": "bento-rollout.io/v1alpha1",
        "kind": "ModelRollout",
        "metadata": {"name": "iris-canary"},
        "spec": {
            "service": "iris",
            "stable": {"model": "iris:v1"},
            "candidate": {"model": "iris:v2"},
            "strategy": {
                "canary": {"steps": [{"setWeight": 20}, {"pause": {"duration": "10s"}}, {"setWeight": 100}]}
            },
        },
    }
).spec


def _advance() -> tuple:
    state = new_rollout(SPEC)
    t = step(SPEC, state, Observations(candidate_ready=True, routes=Routes()), now=1000.0)
    t = step(
        SPEC, t.state, Observations(candidate_ready=True, routes=Routes(candidate_weight=20)), now=1001.0
    )
    return t.state


def test_status_shows_phase_step_weights_history_and_resumes() -> None:
    state = _advance()
    status = status_from_state(state, now=1001.0, generation=3)
    assert status["phase"] == "Progressing" and status["candidateWeight"] == 20
    assert status["weights"] == {"stable": 80, "candidate": 20, "mirror": 0}
    assert status["observedGeneration"] == 3 and status["currentStep"] == state.progress.step_index
    assert [h["reason"] for h in status["history"]][0] == "RolloutStarted"
    assert state_from_status(status) == state  # a restarted controller resumes from exactly this
    assert state_from_status({}) is None


def test_condition_transition_time_moves_only_on_flip() -> None:
    state = _advance()
    first = status_from_state(state, now=1001.0)
    later = status_from_state(state, now=2000.0, old=first)
    progressing = [c for c in later["conditions"] if c["type"] == "Progressing"][0]
    assert progressing["status"] == "True" and progressing["lastTransitionTime"] == "1970-01-01T00:16:41Z"


def test_commands_round_trip_in_order_and_are_cleaned_once_applied() -> None:
    a_id, a = command_annotation("pause", "1000-aaaa")
    b_id, b = command_annotation("promote-full", "999-bbbb")
    annotations = {**a, **b, "unrelated": "x", COMMAND_PREFIX + "5-zzz": "explode"}
    cmds = commands_from_annotations(annotations)
    assert [(c.id, c.kind) for c in cmds] == [(a_id, CommandKind.PAUSE), (b_id, CommandKind.PROMOTE_FULL)]
    state = _advance().model_copy(update={"applied_commands": [a_id]})
    assert applied_command_keys(annotations, state) == [COMMAND_PREFIX + a_id]
    try:
        command_annotation("explode")
    except UsageError as exc:
        assert "promote" in str(exc)
    else:
        raise AssertionError("unknown command accepted")


def test_render_status_for_humans() -> None:
    obj = {
        "metadata": {"name": "iris-canary", "namespace": "ml"},
        "spec": {"service": "iris", "stable": {"model": "iris:v1"}, "candidate": {"model": "iris:v2"}},
        "status": status_from_state(_advance(), now=1001.0),
    }
    text = render_status(obj)
    assert "ml/iris-canary" in text and "stable 80%  candidate 20%" in text and "RolloutStarted" in text


def test_cluster_commands_merge_with_local_ones() -> None:
    @click.group()
    def cli() -> None:
        pass

    @cli.command("status")
    @click.argument("spec", required=False)
    def local_status(spec: str | None) -> None:
        """Local status."""
        click.echo(f"local {spec}")

    register(cli)
    runner = CliRunner()
    assert runner.invoke(cli, ["status", "x.yaml"]).output == "local x.yaml\n"
    # with a cluster flag the cluster version runs (here: it fails on the missing kubeconfig)
    res = runner.invoke(cli, ["status", "iris", "-n", "ml", "--kubeconfig", "/nonexistent/kubeconfig"])
    assert res.exit_code != 0 and "kubeconfig" in str(res.exception or res.output)
    assert "promote" in cli.commands and "controller" in cli.commands
