"""Promotion hand-off in istio and gateway-api mode (rollout/controller/handoff.py) on the real
kube-apiserver: after the engine promotes, the stable InferenceService is given the candidate's
predictor and model, traffic stays on the candidate until stable reports it serves the new
version, then the VirtualService / HTTPRoute send 100% to the stable Service, for good.

What cannot run here: no KServe controller (no pods). The signal "stable serves the new version" is
the one KServe's controller gives: ``status.observedGeneration`` reaching the generation that
carries the new predictor, with ``Ready`` True. The test writes that status itself, after checking
that the controller waits for it. The InferenceServices look like the chart's (model annotation,
``BENTO_MODEL_TAG`` env, role label), so the test can tell which version the stable object names.
"""

from __future__ import annotations

import pytest

from rollout.controller.reconciler import Reconciler
from rollout.k8s.client import HTTP_ROUTE, INFERENCE_SERVICE, MODEL_ROLLOUT, VIRTUAL_SERVICE, KubeClient
from rollout.model import Phase
from tests.e2e import test_controller as base
from tests.e2e.nopods import AsAsked  # FAKE: no pod runs here to ask what it serves
from tests.e2e.test_controller import rollout
from tests.e2e.test_reconciler import _no_metrics
from tests.kit import ManualClock

pytestmark = pytest.mark.k8s
kube, rollout_crd = base.kube, base.rollout_crd


def chart_isvc(kube: KubeClient, ns: str, role: str, tag: str) -> None:
    """An InferenceService as the chart renders it for one role, reported ready (as KServe would)."""
    kube.create(
        INFERENCE_SERVICE,
        ns,
        {
            "metadata": {
                "name": f"iris-{role}",
                "annotations": {"bento-rollout.io/model": tag},
                "labels": {"bento-rollout.io/role": role},
            },
            "spec": {
                "predictor": {
                    "minReplicas": 1,
                    "labels": {"bento-rollout.io/role": role, "bento-rollout.io/service": "iris"},
                    "containers": [
                        {
                            "name": "kserve-container",
                            "image": "bento-iris:1",
                            "env": [{"name": "BENTO_MODEL_TAG", "value": tag}],
                        }
                    ],
                }
            },
        },
    )
    observe(kube, ns, f"iris-{role}")


def observe(kube: KubeClient, ns: str, name: str) -> int:
    """What KServe's controller does once the pods of the latest spec are ready."""
    obj = kube.get(INFERENCE_SERVICE, ns, name)
    obj["status"] = {
        "observedGeneration": obj["metadata"]["generation"],
        "conditions": [{"type": t, "status": "True"} for t in ("PredictorReady", "Ready")],
    }
    kube.replace_status(INFERENCE_SERVICE, ns, obj)
    return int(obj["metadata"]["generation"])


def stable_share(kube: KubeClient, ns: str, provider: str) -> dict[str, int]:
    """Percent of user traffic per backend Service, as the routing object says."""
    if provider == "istio":
        http = kube.get(VIRTUAL_SERVICE, ns, "iris")["spec"]["http"]
        primary = next(r for r in http if r["name"] == "primary")
        return {d["destination"]["host"]: d["weight"] for d in primary["route"]}
    rules = kube.get(HTTP_ROUTE, ns, "iris")["spec"]["rules"]
    return {r["name"]: r["weight"] for r in rules[-1]["backendRefs"]}


@pytest.mark.parametrize("provider", ["istio", "gateway-api"])
def test_after_promotion_stable_runs_the_candidate_and_gets_all_traffic_back(
    kube: KubeClient, k8s_namespace: str, provider: str
) -> None:
    ns = k8s_namespace
    chart_isvc(kube, ns, "stable", "iris:v1")
    chart_isvc(kube, ns, "candidate", "iris:v2")
    body = rollout("iris", [{"setWeight": 50}, {"setWeight": 100}])
    body["spec"]["router"] = {"provider": provider}
    kube.create(MODEL_ROLLOUT, ns, body)
    rec = Reconciler(kube, _no_metrics, clock=ManualClock(), probe=AsAsked())
    to_stable = {"iris-stable-predictor": 100, "iris-candidate-predictor": 0}
    to_candidate = {"iris-stable-predictor": 0, "iris-candidate-predictor": 100}

    state = None
    for _ in range(10):
        state = rec.reconcile(ns, "iris")
        if state is not None and state.done:
            break
    assert state is not None and state.phase == Phase.PROMOTED
    stable = kube.get(INFERENCE_SERVICE, ns, "iris-stable")
    # 1. stable now names the candidate's model; its role stays "stable"
    assert stable["metadata"]["annotations"]["bento-rollout.io/model"] == "iris:v2"
    container = stable["spec"]["predictor"]["containers"][0]
    assert container["env"] == [{"name": "BENTO_MODEL_TAG", "value": "iris:v2"}]
    assert stable["spec"]["predictor"]["labels"]["bento-rollout.io/role"] == "stable"
    assert stable["metadata"]["generation"] == 2
    # 2. ... but it has not rolled out yet: traffic stays on the candidate, however often we look
    for _ in range(3):
        rec.reconcile(ns, "iris")
    assert stable_share(kube, ns, provider) == to_candidate
    handoff = kube.get(MODEL_ROLLOUT, ns, "iris")["status"]["handoff"]
    assert handoff["phase"] == "UpdatingStable" and handoff["model"] == "iris:v2"
    assert "generation 2 not observed" in handoff["message"]

    # 3. stable reports the new generation ready: 100% back to stable, recorded in .status
    assert observe(kube, ns, "iris-stable") == 2
    rec.reconcile(ns, "iris")
    assert stable_share(kube, ns, provider) == to_stable
    st = kube.get(MODEL_ROLLOUT, ns, "iris")["status"]
    assert st["phase"] == "Promoted" and st["handoff"]["phase"] == "Complete"
    assert st["handoff"]["completedAt"] and "iris-stable serves iris:v2" in st["handoff"]["message"]
    assert "StableTookOver" in {e["reason"] for e in kube.list_events(ns, "iris")}

    # 4. for good: later reconciles, and a restarted controller, keep traffic on stable
    rec.reconcile(ns, "iris")
    Reconciler(kube, _no_metrics, clock=ManualClock(), probe=AsAsked()).reconcile(ns, "iris")
    assert stable_share(kube, ns, provider) == to_stable
    assert kube.get(INFERENCE_SERVICE, ns, "iris-stable")["metadata"]["generation"] == 2  # not rewritten


def test_a_rolled_back_rollout_leaves_stable_alone(kube: KubeClient, k8s_namespace: str) -> None:
    ns = k8s_namespace
    chart_isvc(kube, ns, "stable", "iris:v1")
    chart_isvc(kube, ns, "candidate", "iris:v2")
    kube.create(MODEL_ROLLOUT, ns, rollout("iris", [{"setWeight": 50}, {"pause": {}}, {"setWeight": 100}]))
    rec = Reconciler(kube, _no_metrics, clock=ManualClock(), probe=AsAsked())
    rec.reconcile(ns, "iris")
    from rollout.controller.status import command_annotation

    kube.patch(MODEL_ROLLOUT, ns, "iris", {"metadata": {"annotations": command_annotation("abort")[1]}})
    state = rec.reconcile(ns, "iris")
    assert state is not None and state.phase == Phase.ABORTED
    rec.reconcile(ns, "iris")
    stable = kube.get(INFERENCE_SERVICE, ns, "iris-stable")
    assert stable["metadata"]["annotations"]["bento-rollout.io/model"] == "iris:v1"
    assert stable["metadata"]["generation"] == 1
    assert "handoff" not in kube.get(MODEL_ROLLOUT, ns, "iris")["status"]
    assert stable_share(kube, ns, "istio") == {"iris-stable-predictor": 100, "iris-candidate-predictor": 0}
