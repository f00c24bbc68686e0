"""The reconciler in-process on the real kube-apiserver, with an injected clock: pauses pass without
sleeping, a stale status write is refused (409) rather than overwriting a newer one, a command is
applied exactly once however often it is seen, and a new candidate in the spec starts a new rollout.

No KServe controller runs here: the InferenceService status is written by the test.
"""

from __future__ import annotations

from typing import Any

import pytest

from rollout.controller.reconciler import Reconciler
from rollout.controller.status import command_annotation, status_from_state
from rollout.errors import ConflictError, MetricsUnavailableError, NotFoundError, PermanentError
from rollout.k8s.client import MODEL_ROLLOUT, KubeClient
from rollout.model import Phase
from rollout.spec import RolloutSpec
from tests.e2e import test_controller as base
from tests.e2e.nopods import AsAsked  # FAKE: no pod runs here to ask what it serves
from tests.e2e.test_controller import isvc, rollout, vs_weights
from tests.kit import ManualClock

pytestmark = pytest.mark.k8s
kube, rollout_crd = base.kube, base.rollout_crd


def _no_metrics(spec: RolloutSpec) -> Any:
    raise MetricsUnavailableError("no metrics in this test")


def test_reconciler_steps_with_an_injected_clock_and_refuses_stale_writes(
    kube: KubeClient, k8s_namespace: str
) -> None:
    ns = k8s_namespace
    isvc(kube, ns, "iris-stable")
    isvc(kube, ns, "iris-candidate")
    steps = [
        {"setWeight": 20},
        {"pause": {"duration": "1h"}},
        {"setWeight": 60},
        {"pause": {}},
        {"setWeight": 100},
    ]
    kube.create(MODEL_ROLLOUT, ns, rollout("iris", steps))
    clock = ManualClock()
    rec = Reconciler(kube, _no_metrics, clock=clock, probe=AsAsked())

    state = rec.reconcile(ns, "iris")
    assert state is not None and state.phase == Phase.PROGRESSING
    assert vs_weights(kube, ns) == {"stable": 80, "candidate": 20}
    for _ in range(3):  # nothing happens during the hour's pause, however often we reconcile
        assert rec.reconcile(ns, "iris").desired_routes.candidate_weight == 20
    clock.now += 3601  # an hour later, without sleeping
    state = rec.reconcile(ns, "iris")
    assert state.desired_routes.candidate_weight == 60 and state.phase == Phase.PAUSED
    assert vs_weights(kube, ns) == {"stable": 40, "candidate": 60}

    # a writer holding an old copy cannot overwrite the newer status
    stale = kube.get(MODEL_ROLLOUT, ns, "iris")
    kube.patch(MODEL_ROLLOUT, ns, "iris", {"metadata": {"labels": {"touched": "yes"}}})
    with pytest.raises(ConflictError):
        rec._save(stale, state, clock.now)
    assert kube.get(MODEL_ROLLOUT, ns, "iris")["status"]["candidateWeight"] == 60

    # a promote command is applied once, then its annotation is removed
    cid, ann = command_annotation("promote")
    kube.patch(MODEL_ROLLOUT, ns, "iris", {"metadata": {"annotations": ann}})
    state = rec.reconcile(ns, "iris")
    assert cid in state.applied_commands and state.desired_routes.candidate_weight == 100
    assert state.phase == Phase.PROMOTED
    assert not any(
        k.startswith("command.")
        for k in kube.get(MODEL_ROLLOUT, ns, "iris")["metadata"].get("annotations", {})
    )
    revision = state.revision
    assert rec.reconcile(ns, "iris").revision == revision  # a finished rollout stays as it is

    # a new candidate in the spec is a new rollout, from the start
    kube.patch(MODEL_ROLLOUT, ns, "iris", {"spec": {"candidate": {"model": "iris:v3"}}})
    state = rec.reconcile(ns, "iris")
    assert state.candidate == "iris:v3" and state.phase == Phase.PROGRESSING
    assert state.desired_routes.candidate_weight == 20
    reasons = [e["reason"] for e in kube.list_events(ns, "iris")]
    assert "SpecChanged" in reasons and "Promoted" in reasons


def test_status_of_a_fresh_state_is_accepted_by_the_crd(kube: KubeClient, k8s_namespace: str) -> None:
    """The status we write passes the generated CRD's schema (typed printer-column fields)."""
    from rollout.engine import new_rollout
    from rollout.spec import parse_rollout

    body = rollout("fresh", [{"setWeight": 10}])
    obj = kube.create(MODEL_ROLLOUT, k8s_namespace, body)
    spec = parse_rollout({"apiVersion": "bento-rollout.io/v1alpha1", "kind": "ModelRollout", **body}).spec
    obj["status"] = status_from_state(new_rollout(spec), now=1.0, generation=1)
    out = kube.replace_status(MODEL_ROLLOUT, k8s_namespace, obj)
    assert out["status"]["phase"] == "Pending" and out["status"]["state"]["candidate"] == "iris:v2"


def test_a_spec_without_cluster_router_uses_the_controllers_default(
    kube: KubeClient, k8s_namespace: str
) -> None:
    """``router.provider`` left out defaults to nginx in local mode; in the cluster the controller's
    --router applies. Named nginx in a cluster it is refused (it was mapped to kserve silently)."""
    ns = k8s_namespace
    isvc(kube, ns, "iris-stable")
    isvc(kube, ns, "iris-candidate")
    body = rollout("plain", [{"setWeight": 10}, {"pause": {}}])
    del body["spec"]["router"]
    kube.create(MODEL_ROLLOUT, ns, body)
    state = Reconciler(
        kube, _no_metrics, clock=ManualClock(), default_provider="istio", probe=AsAsked()
    ).reconcile(ns, "plain")
    assert state is not None and state.desired_routes.candidate_weight == 10
    assert vs_weights(kube, ns) == {"stable": 90, "candidate": 10}
    local = Reconciler(kube, _no_metrics, default_provider="nginx", probe=AsAsked())
    with pytest.raises(PermanentError, match="local data plane"):
        local.reconcile(ns, "plain")
    invalid = kube.get(MODEL_ROLLOUT, ns, "plain")
    assert invalid["status"]["phase"] == "Invalid"
    # said once: the next ticks neither write nor raise (kopf logged an ERROR line per tick)
    assert local.reconcile(ns, "plain") is None and local.reconcile(ns, "plain") is None
    assert (
        kube.get(MODEL_ROLLOUT, ns, "plain")["metadata"]["resourceVersion"]
        == invalid["metadata"]["resourceVersion"]
    )
    # a spec that names nginx is refused, whatever the controller's default: no provider stands in
    named = rollout("named", [{"setWeight": 10}, {"pause": {}}], router={"provider": "nginx"})
    kube.create(MODEL_ROLLOUT, ns, named)
    with pytest.raises(PermanentError, match="leave router.provider out for the controller's"):
        Reconciler(
            kube, _no_metrics, clock=ManualClock(), default_provider="istio", probe=AsAsked()
        ).reconcile(ns, "named")
    assert kube.get(MODEL_ROLLOUT, ns, "named")["status"]["phase"] == "Invalid"


def test_no_prometheus_address_at_all_is_a_measurement_error_in_the_status(
    kube: KubeClient, k8s_namespace: str
) -> None:
    """A spec that names no metricsAddress, run by a controller started without --metrics-address
    (its real metrics factory): every measurement is an Error saying so - Paused,
    MetricsUnavailable, then rolled back past errorLimit - instead of a permanent error per tick
    in the log while ``.status`` still said Progressing at 30 % for ever."""
    from rollout.controller.handlers import _metrics_factory

    ns = k8s_namespace
    isvc(kube, ns, "iris-stable")
    isvc(kube, ns, "iris-candidate")
    analysis = {
        "interval": "1s",
        "errorLimit": 2,
        "metrics": [{"name": "error-rate", "template": "error-rate", "threshold": {"max": 0.01}}],
    }
    body = rollout(
        "iris", [{"setWeight": 30}, {"analysis": {"intervals": 2}}, {"setWeight": 100}], analysis=analysis
    )
    kube.create(MODEL_ROLLOUT, ns, body)
    clock = ManualClock()
    rec = Reconciler(kube, _metrics_factory(None), clock=clock, probe=AsAsked())
    seen = []
    for _ in range(8):
        state = rec.reconcile(ns, "iris")  # never raises
        seen.append((state.phase.value, state.reason))
        if state.done:
            break
        clock.now += 1.5
    assert ("Paused", "MetricsUnavailable") in seen, seen
    assert seen[-1] == ("RolledBack", "MetricsUnavailable"), seen
    st = kube.get(MODEL_ROLLOUT, ns, "iris")["status"]
    assert "no Prometheus address" in st["analysis"][0]["message"], st["analysis"]
    assert vs_weights(kube, ns) == {"stable": 100, "candidate": 0}


def test_a_pin_the_inference_service_does_not_carry_holds_the_rollout_until_it_does(
    kube: KubeClient, k8s_namespace: str
) -> None:
    """A ModelRollout pinning candidate.digest whose InferenceService runs without it (a hand-written
    rollout, or values without models.candidateDigest): the pin was read by nothing in the cluster,
    traffic moved to an unpinned server. Now held in progress - message in the status and an Event,
    no weight on the candidate - until the InferenceService carries the pin; then the canary starts."""
    from rollout.controller.defence import HeldError
    from rollout.k8s.client import INFERENCE_SERVICE

    ns, pin = k8s_namespace, "sha256:" + "c" * 64

    def served(name: str, *env: tuple[str, str]) -> None:
        server = {
            "name": "kserve-container",
            "image": "bento-iris:1",
            "env": [{"name": k, "value": v} for k, v in env],
        }
        try:
            obj = kube.get(INFERENCE_SERVICE, ns, name)
            obj["spec"]["predictor"]["containers"] = [server]
            kube.replace(INFERENCE_SERVICE, ns, obj)
        except NotFoundError:
            kube.create(
                INFERENCE_SERVICE,
                ns,
                {"metadata": {"name": name}, "spec": {"predictor": {"containers": [server]}}},
            )
        obj = kube.get(INFERENCE_SERVICE, ns, name)
        obj["status"] = {
            "deploymentMode": "Standard",
            "observedGeneration": obj["metadata"]["generation"],
            "conditions": [{"type": t, "status": "True"} for t in ("PredictorReady", "Ready")],
        }
        kube.replace_status(INFERENCE_SERVICE, ns, obj)

    served("iris-stable", ("BENTO_MODEL_TAG", "iris:v1"))
    served("iris-candidate", ("BENTO_MODEL_TAG", "iris:v2"))
    body = rollout("iris", [{"setWeight": 20}, {"pause": {}}])
    body["spec"]["candidate"]["digest"] = pin
    kube.create(MODEL_ROLLOUT, ns, body)
    rec = Reconciler(kube, _no_metrics, clock=ManualClock(), probe=AsAsked())
    with pytest.raises(HeldError) as held:
        rec.reconcile(ns, "iris")
    assert (
        f"iris-candidate runs without BENTO_MODEL_DIGEST, but the ModelRollout pins candidate.digest {pin}"
        in str(held.value)
    )
    st = kube.get(MODEL_ROLLOUT, ns, "iris")["status"]
    assert st["phase"] not in ("Promoted", "RolledBack", "Failed") and pin in st["message"], st
    assert any(pin in e["message"] for e in kube.list_events(ns, "iris"))
    assert vs_weights(kube, ns).get("candidate", 0) == 0
    revision = st["revision"]
    with pytest.raises(HeldError):  # said once: the same hold again writes nothing new
        rec.reconcile(ns, "iris")
    assert kube.get(MODEL_ROLLOUT, ns, "iris")["status"]["revision"] == revision
    served("iris-candidate", ("BENTO_MODEL_TAG", "iris:v2"), ("BENTO_MODEL_DIGEST", pin))
    state = rec.reconcile(ns, "iris")
    assert state is not None and state.desired_routes.candidate_weight == 20
    assert vs_weights(kube, ns) == {"stable": 80, "candidate": 20}
