"""What `rollout run` says before driving a rollout it finds saved (rollout/cli/local.py)."""

from __future__ import annotations

from rollout.cli.local import start_note
from rollout.model import Phase, RolloutState


def _state(candidate: str, phase: Phase = Phase.PENDING, finished_at: float | None = None) -> RolloutState:
    return RolloutState(service="iris", strategy="canary", stable="iris:v1", candidate=candidate,
                        phase=phase, finished_at=finished_at)  # fmt: skip


def test_a_replaced_rollout_is_named_with_what_ships_now() -> None:
    note = start_note("ci", "ci.yaml", _state("iris:v2"), _state("iris:poisoned", Phase.ROLLED_BACK))
    assert note is not None
    assert "iris:poisoned (canary, RolledBack) is replaced" in note and "ships iris:v2" in note


def test_an_ended_rollout_says_it_is_the_saved_result_and_how_to_run_it_again() -> None:
    note = start_note("ci", "ci.yaml", _state("iris:v2", Phase.PROMOTED, finished_at=0.0), None)
    assert note is not None and "ended before (Promoted at" in note
    assert "`rollout run --fresh ci.yaml` runs it again" in note


def test_a_new_or_resumed_rollout_says_nothing() -> None:
    assert start_note("ci", "ci.yaml", _state("iris:v2"), None) is None
    assert start_note("ci", "ci.yaml", _state("iris:v2", Phase.PROGRESSING), None) is None
