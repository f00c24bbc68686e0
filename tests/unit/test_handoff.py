"""The promotion hand-off's pure parts (rollout/controller/handoff.py): which predictor stable must
run, when stable counts as serving it, when routes are held on stable, and that ``.status.handoff``
survives status rewrites of the same rollout but not a new rollout."""

from __future__ import annotations

import copy
from typing import Any

from rollout.controller import handoff
from rollout.controller.status import status_from_state
from rollout.model import Phase, RolloutState
from rollout.routers.base import Routes


def isvc(role: str, tag: str, generation: int = 1, observed: int = 1, ready: str = "True") -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"iris-{role}",
            "generation": generation,
            "annotations": {"bento-rollout.io/model": tag},
        },
        "spec": {
            "predictor": {
                "labels": {"bento-rollout.io/role": role},
                "containers": [
                    {"name": "kserve-container", "env": [{"name": "BENTO_MODEL_TAG", "value": tag}]}
                ],
            }
        },
        "status": {"observedGeneration": observed, "conditions": [{"type": "Ready", "status": ready}]},
    }


def promoted(candidate: str = "iris:v2") -> RolloutState:
    return RolloutState(
        service="iris", strategy="canary", stable="iris:v1", candidate=candidate, phase=Phase.PROMOTED
    )


def test_stable_gets_the_candidate_s_predictor_with_its_own_role() -> None:
    stable, cand = isvc("stable", "iris:v1"), isvc("candidate", "iris:v2")
    predictor = handoff.stable_predictor(stable, cand)
    assert predictor["labels"] == {"bento-rollout.io/role": "stable"}
    assert predictor["containers"] == cand["spec"]["predictor"]["containers"]
    assert cand["spec"]["predictor"]["labels"] == {"bento-rollout.io/role": "candidate"}  # not mutated


def test_stable_serves_only_the_new_spec_once_observed_and_ready() -> None:
    cand = isvc("candidate", "iris:v2")
    old = isvc("stable", "iris:v1")
    predictor = handoff.stable_predictor(old, cand)
    ok, why = handoff.serves(old, predictor, "iris:v2")
    assert not ok and "does not run iris:v2" in why

    updated = copy.deepcopy(old)
    updated["spec"]["predictor"] = predictor
    updated["metadata"]["annotations"]["bento-rollout.io/model"] = "iris:v2"
    updated["metadata"]["generation"] = 2
    ok, why = handoff.serves(updated, predictor, "iris:v2")
    assert not ok and "generation 2 not observed" in why
    updated["status"] = {"observedGeneration": 2, "conditions": [{"type": "Ready", "status": "False"}]}
    ok, why = handoff.serves(updated, predictor, "iris:v2")
    assert not ok and "not Ready" in why
    updated["status"]["conditions"][0]["status"] = "True"
    assert handoff.serves(updated, predictor, "iris:v2") == (True, "")


def test_model_of_reads_the_annotation_then_the_env() -> None:
    obj = isvc("stable", "iris:v3")
    assert handoff.model_of(obj) == "iris:v3"
    del obj["metadata"]["annotations"]
    assert handoff.model_of(obj) == "iris:v3"
    obj["spec"]["predictor"]["containers"][0]["env"] = []
    assert handoff.model_of(obj) is None


def test_routes_are_held_on_stable_only_once_complete_for_this_rollout() -> None:
    state = promoted()
    assert handoff.hold_routes({"handoff": {"phase": "UpdatingStable", "model": "iris:v2"}}, state) is None
    done = {"handoff": {"phase": "Complete", "model": "iris:v2"}}
    assert handoff.hold_routes(done, state) == Routes.all_stable()
    assert handoff.hold_routes(done, promoted("iris:v3")) is None  # another rollout's hand-off
    rolled_back = state.model_copy(update={"phase": Phase.ROLLED_BACK})
    assert handoff.hold_routes(done, rolled_back) is None


def test_the_status_keeps_the_hand_off_of_the_same_rollout_only() -> None:
    old = {"handoff": {"phase": "Complete", "model": "iris:v2"}}
    assert status_from_state(promoted(), 1.0, old=old)["handoff"] == old["handoff"]
    assert "handoff" not in status_from_state(promoted("iris:v3"), 1.0, old=old)
    progressing = promoted().model_copy(update={"phase": Phase.PROGRESSING})
    assert "handoff" not in status_from_state(progressing, 1.0, old=old)
