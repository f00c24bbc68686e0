"""When stable dies mid-rollout (issue "When stable dies mid-rollout", item 3, the controller's side),
on the real kube-apiserver of the test harness.

The controller reports ``Observations(stable_ready=...)`` from the stable InferenceService's status
(``rollout.controller.readiness``): while KServe reports it not Ready (``Ready`` False, no Ready
condition, or the object gone) the engine holds the rollout - Paused, StableUnavailable, weights
exactly as they were, no step completes - and it resumes by itself once stable is Ready again;
past ``spec.progressDeadline`` it is rolled back. In istio / gateway-api mode stable is
``<service>-stable``; in kserve mode the one InferenceService (stable: the revision that holds the
rest of the traffic).

What cannot run here: no KServe controller runs in this harness yet (no pods), so stable "dying"
and "coming back" is the status KServe would write - ``Ready`` False, then True - written by the
test through the status subresource, as the other tests write KServe's status; "traffic" is the
routing object as the API server stores it (every version of the VirtualService recorded by a watch).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from rollout.controller.reconciler import Reconciler
from rollout.k8s.client import INFERENCE_SERVICE, MODEL_ROLLOUT, KubeClient, Obj
from rollout.model import Phase
from rollout.routers.kserve import stable_readiness
from tests.e2e import test_controller as tc
from tests.e2e.nopods import AsAsked  # FAKE: no pod runs here to ask what it serves
from tests.e2e.test_controller import isvc, phase_is, rollout, status, vs_weights, wait_for
from tests.e2e.test_controller_strategies import RouteRecorder
from tests.e2e.test_reconciler import _no_metrics
from tests.kit import ManualClock

rollout_crd, kube, controllers = tc.rollout_crd, tc.kube, tc.controllers
DOWN_SECONDS = 6.0  # stable down for twice the 3 s pause it interrupts: 12 ticks of 0.5 s


def set_ready(kube: KubeClient, ns: str, name: str, ready: bool, why: str = "") -> None:
    """What KServe writes when the pods behind an InferenceService stop (or start again) being
    ready: its ``Ready`` and ``PredictorReady`` conditions. Conditional, retried on a conflict."""
    flag = "True" if ready else "False"

    def mutate(obj: Obj) -> Obj:
        conditions = [{"type": t, "status": flag} for t in ("PredictorReady", "Ready")]
        if not ready:
            for c in conditions:
                c.update(reason="RevisionMissing", message=why or "0/1 pods ready: CrashLoopBackOff")
        obj.setdefault("status", {})["conditions"] = conditions
        return obj

    kube.update(INFERENCE_SERVICE, ns, name, mutate, status=True)


def _held(kube: KubeClient, ns: str, name: str) -> dict[str, Any] | None:
    st = status(kube, ns, name)
    return st if (st.get("phase"), st.get("reason")) == ("Paused", "StableUnavailable") else None


def _reasons(st: dict[str, Any], reason: str) -> list[dict[str, Any]]:
    return [h for h in st.get("history", []) if h["reason"] == reason]


def _steps_started_once(st: dict[str, Any]) -> None:
    started = [h["message"] for h in _reasons(st, "StepStarted")]
    assert started and len(started) == len(set(started)), f"a step was started twice: {started}"


STEPS = [
    {"setWeight": 20},
    {"pause": {"duration": "3s"}},
    {"setWeight": 60},
    {"pause": {"duration": "1s"}},
    {"setWeight": 100},
]


@pytest.mark.k8s
def test_stable_not_ready_mid_canary_holds_fails_over_to_the_candidate_and_resumes_by_itself(
    kube: KubeClient, k8s_namespace: str, controllers: Any
) -> None:
    ns, name = k8s_namespace, "iris-stable-down"
    isvc(kube, ns, "iris-stable")
    isvc(kube, ns, "iris-candidate")
    recorder = RouteRecorder(kube, ns)
    try:
        kube.create(MODEL_ROLLOUT, ns, rollout(name, STEPS))
        controllers("a")
        wait_for(
            "20% to the candidate", lambda: vs_weights(kube, ns) == {"stable": 80, "candidate": 20}, every=0.1
        )
        set_ready(kube, ns, "iris-stable", False)  # mid-pause: the 3 s step would end meanwhile
        held = wait_for("Paused/StableUnavailable", lambda: _held(kube, ns, name), timeout=30, every=0.2)
        assert "stable iris:v1 is not serving" in held["message"]
        time.sleep(DOWN_SECONDS)  # many ticks; the pause's 3 s pass without stable
        st = status(kube, ns, name)
        assert (st["phase"], st["reason"], st["weights"]["candidate"]) == ("Paused", "StableUnavailable", 20)
        assert st["revision"] == held["revision"], "stable still down wrote the status again"
        # the engine still wants 80/20; the route sends everyone to the Ready candidate (failover.py)
        assert vs_weights(kube, ns) == {"stable": 0, "candidate": 100}
        (failed_over,) = [e for e in kube.list_events(ns, name) if e["reason"] == "FailoverStarted"]
        assert (
            "stable iris:v1 has no Ready pod: all traffic to the candidate iris:v2" in failed_over["message"]
        )
        conditions = {c["type"]: (c["status"], c["reason"]) for c in st["conditions"]}
        assert conditions["Paused"] == ("True", "StableUnavailable")
        assert conditions["StableReady"] == ("False", "StableUnavailable")
        events = [e for e in kube.list_events(ns, name) if e["reason"] == "StableUnavailable"]
        assert [e["type"] for e in events] == ["Warning"], events

        set_ready(kube, ns, "iris-stable", True)
        wait_for("Promoted once stable is back", phase_is(kube, ns, name, "Promoted"), timeout=120)
        wait_for("the hand-off", lambda: vs_weights(kube, ns) == {"stable": 100, "candidate": 0})
        time.sleep(1)
    finally:
        recorder.stop()
    assert recorder.seen["iris"] == [
        (100, 0, 0, False),
        (80, 20, 0, False),
        (0, 100, 0, False),  # held while stable was down; everyone on the Ready candidate meanwhile
        (80, 20, 0, False),  # stable back: the rollout's routes again, then on
        (40, 60, 0, False),
        (0, 100, 0, False),
        (100, 0, 0, False),  # handed off to stable
    ]
    st = status(kube, ns, name)
    _steps_started_once(st)
    recovered = _reasons(st, "StableRecovered")
    assert len(recovered) == 1 and "serves again after" in recovered[0]["message"], st["history"]
    assert not _reasons(st, "ProgressDeadlineExceeded")
    assert {c["type"]: c["status"] for c in st["conditions"]}["StableReady"] == "True"
    # the API lists Events by name (random suffixes), not by time
    in_order = sorted(kube.list_events(ns, name), key=lambda e: (e["metadata"]["creationTimestamp"],
                                                                int(e["metadata"]["resourceVersion"])))  # fmt: skip
    assert [e["reason"] for e in in_order if e["reason"].startswith("Failover")] == [
        "FailoverStarted",
        "FailoverEnded",
    ]


@pytest.mark.k8s
def test_kserve_mode_reads_stable_from_the_one_inference_service(
    kube: KubeClient, k8s_namespace: str, controllers: Any
) -> None:
    ns, name = k8s_namespace, "iris-kserve-down"
    isvc(kube, ns, "iris")  # one InferenceService: stable is the revision holding the rest of the traffic
    body = rollout(name, STEPS)
    body["spec"]["router"] = {"provider": "kserve"}

    def percent() -> int:
        return int(
            kube.get(INFERENCE_SERVICE, ns, "iris")["spec"]["predictor"].get("canaryTrafficPercent", -1)
        )

    kube.create(MODEL_ROLLOUT, ns, body)
    controllers("a")
    stop = threading.Event()  # moving canaryTrafficPercent bumps the generation; KServe would observe it
    threading.Thread(target=tc._observe_generations, args=(kube, ns, stop), daemon=True).start()
    try:
        wait_for("20% to the candidate", lambda: percent() == 20, every=0.1)
        set_ready(kube, ns, "iris", False, "route iris-predictor: revision iris-predictor-1 not ready")
        wait_for("Paused/StableUnavailable", lambda: _held(kube, ns, name), timeout=30, every=0.2)
        time.sleep(DOWN_SECONDS)
        assert _held(kube, ns, name) is not None and percent() == 20
        set_ready(kube, ns, "iris", True)
        wait_for("Promoted once stable is back", phase_is(kube, ns, name, "Promoted"), timeout=120)
        wait_for("KServe promotes its latest revision", lambda: percent() == 100)
    finally:
        stop.set()
    _steps_started_once(status(kube, ns, name))


@pytest.mark.k8s
def test_stable_gone_past_the_progress_deadline_is_rolled_back(kube: KubeClient, k8s_namespace: str) -> None:
    """In-process with an injected clock: stable's InferenceService deleted mid-canary holds the
    rollout (everyone on the Ready candidate meanwhile); 30 s later (progressDeadline) it is rolled
    back and the routes return to stable: never to a rolled-back candidate."""
    ns = k8s_namespace
    isvc(kube, ns, "iris-stable")
    isvc(kube, ns, "iris-candidate")
    body = rollout("iris", [{"setWeight": 20}, {"pause": {"duration": "5s"}}, {"setWeight": 100}])
    body["spec"]["progressDeadline"] = "30s"
    kube.create(MODEL_ROLLOUT, ns, body)
    clock = ManualClock()
    rec = Reconciler(kube, _no_metrics, clock=clock, probe=AsAsked())
    assert rec.reconcile(ns, "iris").desired_routes.candidate_weight == 20
    kube.delete(INFERENCE_SERVICE, ns, "iris-stable")
    wait_for(
        "iris-stable gone",
        lambda: not [o for o in kube.list(INFERENCE_SERVICE, ns) if o["metadata"]["name"] == "iris-stable"],
    )
    for _ in range(3):  # 20 s of the deadline's 30: held, nothing moves
        clock.now += 10
        state = rec.reconcile(ns, "iris")
        assert (state.phase, state.reason) == (Phase.PAUSED, "StableUnavailable")
        assert vs_weights(kube, ns) == {"stable": 0, "candidate": 100}
    clock.now += 11  # 31 s since stable went away
    state = rec.reconcile(ns, "iris")
    assert (state.phase, state.reason) == (Phase.ROLLED_BACK, "ProgressDeadlineExceeded")
    assert "stable iris:v1 is not serving" in state.message
    assert vs_weights(kube, ns) == {"stable": 100, "candidate": 0}


# --- how stable's readiness is read from KServe's status (pure) ---------------------------------


def _status(
    ready: str | None, created: str = "iris-predictor-2", latest_ready: str = "iris-predictor-2"
) -> Obj:
    conditions = [] if ready is None else [{"type": "Ready", "status": ready, "message": "pods crash"}]
    predictor = {
        "latestCreatedRevision": created,
        "latestReadyRevision": latest_ready,
        "latestRolledoutRevision": "iris-predictor-1",
    }
    return {
        "metadata": {"name": "iris"},
        "status": {"conditions": conditions, "components": {"predictor": predictor}},
    }


def test_stable_readiness_from_kserve_status() -> None:
    assert stable_readiness(_status("True")).ready is True
    down = stable_readiness(_status("False"))
    assert down.ready is False and "pods crash" in down.reason
    assert stable_readiness(_status(None)).ready is False  # KServe never reported it serving
    assert stable_readiness(None, "ns/iris-stable").ready is False
    assert "does not exist" in stable_readiness(None, "ns/iris-stable").reason
    # Unknown: KServe is rolling a change out; not known, the last answer stands
    assert stable_readiness(_status("Unknown")).ready is None
    # only a newer revision than the serving one failed (in kserve mode: the candidate's)
    newer = stable_readiness(_status("False", latest_ready="iris-predictor-1"))
    assert newer.ready is True and "iris-predictor-1 keeps serving" in newer.reason
    assert stable_readiness({"metadata": {"name": "iris"}, "status": None}).ready is False
