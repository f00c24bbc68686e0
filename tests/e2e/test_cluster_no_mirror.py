"""A shadow whose Gateway cannot mirror, on a real kube-apiserver (in-process Reconciler): held with
the feature named, nothing written, and `rollout abort` still ends it. The GatewayClass status a
Gateway API implementation would publish is written by the test (no implementation runs in this
API-only cluster; tests/e2e/test_cluster_gateway.py runs Traefik's own); the pods' answers are the
FAKE AsAsked (no pod runs here)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from rollout.controller.reconciler import Reconciler
from rollout.controller.status import command_annotation
from rollout.k8s.client import HTTP_ROUTE, MODEL_ROLLOUT, KubeClient
from rollout.model import Phase
from tests.e2e.nopods import AsAsked  # FAKE: no pod runs here to ask what it serves
from tests.e2e.test_cluster_routers import _gateway
from tests.e2e.test_controller import isvc, rollout
from tests.e2e.test_reconciler import _no_metrics
from tests.kit import ManualClock

pytestmark = pytest.mark.k8s


@pytest.fixture
def kube(k8s_cluster: Any, modelrollout_crd: None) -> Iterator[KubeClient]:
    client = KubeClient.from_kubeconfig(str(k8s_cluster.kubeconfig))
    yield client
    client.close()


def test_a_shadow_through_a_gateway_that_cannot_mirror_is_held_then_aborted(
    kube: KubeClient, k8s_namespace: str
) -> None:
    ns = k8s_namespace
    _gateway(kube, ns, "edge", ["HTTPRouteQueryParamMatching"])  # no HTTPRouteRequestMirror
    isvc(kube, ns, "iris-stable")
    isvc(kube, ns, "iris-candidate")
    body = rollout("iris", [])
    body["spec"]["strategy"] = {"shadow": {"mirrorPercent": 100, "duration": "30s"}}
    body["spec"]["router"] = {"provider": "gateway-api", "gateway": "edge"}
    kube.create(MODEL_ROLLOUT, ns, body)
    clock = ManualClock()
    rec = Reconciler(kube, _no_metrics, clock=clock, probe=AsAsked())
    for _ in range(3):
        clock.now += 5
        with pytest.raises(Exception, match="does not support HTTPRouteRequestMirror"):
            rec.reconcile(ns, "iris")
    st = kube.get(MODEL_ROLLOUT, ns, "iris")["status"]
    assert (st["phase"], st["reason"]) == ("Paused", "ReconcileError"), st
    assert "HTTPRouteRequestMirror" in st["message"]
    rules = kube.get(HTTP_ROUTE, ns, "iris")["spec"]["rules"]
    assert not [r for r in rules if r.get("filters")], rules
    _, annotations = command_annotation("abort")  # what `rollout abort` writes
    kube.patch(MODEL_ROLLOUT, ns, "iris", {"metadata": {"annotations": annotations}})
    clock.now += 5
    state = rec.reconcile(ns, "iris")
    assert state is not None and state.phase == Phase.ABORTED, state
    assert kube.get(HTTP_ROUTE, ns, "iris")["spec"]["rules"][-1]["backendRefs"][0]["weight"] == 100
