"""The routes the controller writes while one version has no Ready pod (rollout/controller/failover.py):
what users' requests would hit is a version that can answer them."""

from __future__ import annotations

import pytest

from rollout.controller.failover import effective, why
from rollout.routers.base import Routes
from rollout.spec import HeaderMatch, StickyKey

CANARY = Routes(candidate_weight=20)
TESTERS = Routes(candidate_weight=20, match=(HeaderMatch(header="x-canary", value="1"),))


def test_a_dead_candidate_gives_its_share_and_its_header_matches_to_stable() -> None:
    assert effective(TESTERS, stable_ready=True, candidate_ready=False, running=True) == Routes()
    # a mirror only loses copies: it stays
    shadow = Routes(mirror_percent=100)
    assert effective(shadow, stable_ready=True, candidate_ready=False, running=True) == shadow


def test_a_dead_stable_sends_everyone_to_a_ready_candidate_while_the_rollout_runs() -> None:
    sticky = Routes(candidate_weight=50, sticky=StickyKey(header="x-user-id"))
    assert effective(sticky, stable_ready=False, candidate_ready=True, running=True) == Routes(
        candidate_weight=100
    )
    assert effective(CANARY, stable_ready=False, candidate_ready=True, running=True).candidate_weight == 100


def test_never_to_a_candidate_whose_rollout_ended() -> None:
    # RolledBack (or Promoted and handed over): stable's share fails until it is back, as without failover
    assert effective(Routes(), stable_ready=False, candidate_ready=True, running=False) == Routes()


@pytest.mark.parametrize(
    ("stable", "candidate"), [(True, True), (None, False), (False, None), (None, None), (False, False)]
)
def test_both_ready_or_health_unknown_or_both_down_changes_nothing(
    stable: bool | None, candidate: bool | None
) -> None:
    assert effective(TESTERS, stable_ready=stable, candidate_ready=candidate, running=True) == TESTERS


def test_the_event_says_which_way_and_why() -> None:
    to_candidate = effective(CANARY, False, True, True)
    assert "stable iris:v1 has no Ready pod: all traffic to the candidate iris:v2" in why(
        CANARY, to_candidate, "iris:v1", "iris:v2"
    )
    assert "candidate iris:v2 is not ready: its 20%" in why(CANARY, Routes(), "iris:v1", "iris:v2")
