"""ML gates on real pods: labels sent through the Gateway to any of two pods per version count for the
version that answered (the chart's join store: its Redis pod and exporter, bentos/redis_join.py).

The chart is installed as tests/k8s/cluster_rollouts.py does (gateway-api mode, Traefik, Prometheus
scraping the pods from the chart's PodMonitors), with two replicas per version. Locust sends
predictions to the Gateway and, for half of the answers, the true label one second later with the
chart's token (``Authorization: Bearer``, from the Secret ``br-bento-rollout-feedback``) to
``/feedback`` on the same route: the HTTPRoute's weights send it to any pod of either version.
What a user of the accuracy gate sees:

- a poisoned candidate (iris:poisoned, trained on 35 % flipped labels) is rolled back by the
  accuracy gate alone (a sequential test against stable's accuracy from the same labels);
- a good candidate (iris:v2) is promoted, while one of its two pods is deleted mid-rollout (no
  grace period, as a node failure would), and every label Locust got a 200 for is counted: the
  exporter's ``model_feedback_total`` grew by exactly the labels accepted;
- Redis's process SIGKILLed mid-rollout (the kubelet restarts it; its append-only file is on the
  pod's volume): every label Locust got a 200 for is still counted;
- a label without the token, or with a forged one, is a 401 through the Gateway and changes no
  counter.

Not covered here: shadow agreement, which tests/e2e/test_cluster_shadow.py runs on the same kind of
stack in the chart's traefik routing mode (Traefik's CRD provider mirrors; its Gateway API provider
cannot: tests/e2e/test_cluster_no_mirror.py, test_cluster_gateway.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.k8s import cluster_rollouts as cr
from tests.k8s.kserve import KServe

pytestmark = pytest.mark.k8s

TWO_PODS = {"replicas.min": 2, "replicas.max": 2}
ACCURACY = {
    "interval": "10s",
    "metrics": [
        {"name": "error-rate", "template": "error-rate", "threshold": {"max": 0.02}, "failureLimit": 1},
        {
            "name": "accuracy",
            "template": "accuracy",
            "direction": "higher",
            "judge": {"kind": "sequential", "minEffect": 0.05, "alpha": 0.01, "minSamples": 20},
        },
    ],
}
CANARY = {"canary": {"steps": [
    {"setWeight": 40}, {"analysis": {"intervals": 3}},
    {"setWeight": 100},
]}}  # fmt: skip


@pytest.fixture(scope="module")
def stack(kserve_node: KServe, tmp_path_factory: pytest.TempPathFactory) -> Iterator[cr.ClusterStack]:
    with cr.cluster_stack(kserve_node, tmp_path_factory.mktemp("cluster-feedback"), TWO_PODS) as s:
        s.until("the join store's exporter scraped", lambda: s.prom.query("model_join_store_up") == 1, 120,
                s.pod_state)  # fmt: skip
        yield s


def _ship(
    stack: cr.ClusterStack, name: str, candidate: str, stable: str = "", **kwargs: object
) -> cr.Shipped:
    extra: dict[str, object] = {"rollout.analysis": ACCURACY}
    if stable:  # what the previous release left serving (a promotion hands its model to stable)
        extra["models.stable"] = stable
    return cr.ship(
        stack, name, candidate, strategy=CANARY, extra=extra, feedback_share=0.5,
        **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip


def _answer_not_seen(locust: dict[str, object]) -> int:
    """Labels that may be counted though Locust saw no 200 for them: answers lost with a killed pod
    (a 502 or a reset; Locust does not resend those) and labels still on their way when it stopped."""
    answered: dict[str, int] = locust.get("labels_by_status", {})  # type: ignore[assignment]
    unanswered = int(locust.get("labels_sent", 0)) - sum(answered.values())  # type: ignore[call-overload]
    return sum(v for k, v in answered.items() if k not in ("200", "503")) + unanswered


def _settled_counts(stack: cr.ClusterStack) -> float:
    """Every label counted so far (all versions), once the exporter's last numbers are scraped."""
    time.sleep(5)  # > the PodMonitor's 2 s interval
    return sum(stack.labels_counted().values())


def test_two_pods_per_version_serve_through_the_gateway(stack: cr.ClusterStack) -> None:
    """Both stable pods come up Ready (the second may start a little after the first answered)."""

    def ready() -> int | None:
        pods = stack.core().list_namespaced_pod(
            cr.NAMESPACE, label_selector=f"serving.kserve.io/inferenceservice={cr.ROLLOUT}-stable"
        )
        n = len(
            [
                p
                for p in pods.items
                if p.status.container_statuses and all(c.ready for c in p.status.container_statuses)
            ]
        )
        return n if n == 2 else None

    assert stack.until("two Ready stable pods", ready, 180, stack.pod_state) == 2


def test_a_poisoned_candidate_is_rolled_back_by_the_accuracy_gate(stack: cr.ClusterStack) -> None:
    shipped = _ship(stack, "poisoned", "iris:poisoned")
    failed = [e["message"] for e in shipped.history if e["reason"] in ("AnalysisFailed", "MeasurementFailed")]
    assert shipped.phase == "RolledBack", shipped.why()
    assert any("accuracy" in m for m in failed), shipped.history
    assert not any("error-rate" in m for m in failed), shipped.history  # the labels alone decided
    assert shipped.locust.get("labels_by_status", {}).get("200", 0) > 50, shipped.locust


def test_a_good_candidate_is_promoted_and_no_accepted_label_is_lost_when_a_pod_dies(
    stack: cr.ClusterStack,
) -> None:
    before = _settled_counts(stack)
    killed: list[str] = []

    def kill_one(s: cr.ClusterStack, _status: dict[str, object]) -> None:
        core = s.core()
        pods = core.list_namespaced_pod(
            cr.NAMESPACE, label_selector=f"serving.kserve.io/inferenceservice={cr.ROLLOUT}-candidate"
        ).items
        pod = pods[0]
        core.delete_namespaced_pod(pod.metadata.name, cr.NAMESPACE, grace_period_seconds=0)
        killed.append(pod.metadata.name)

    shipped = _ship(stack, "good", "iris:v2", during=kill_one)
    assert shipped.phase == "Promoted", shipped.why()
    assert killed, "the drill never ran"
    accepted = shipped.locust.get("labels_by_status", {}).get("200", 0)
    after = _settled_counts(stack)
    lost = _answer_not_seen(shipped.locust)
    print(json.dumps({"labels_by_status": shipped.locust.get("labels_by_status"), "counted": after - before,
                      "answer_not_seen": lost}))  # fmt: skip
    assert accepted > 100, shipped.locust
    assert accepted <= after - before <= accepted + lost, (after - before, shipped.locust)


def test_the_join_store_killed_mid_rollout_loses_no_accepted_label(stack: cr.ClusterStack) -> None:
    """Redis's process SIGKILLed in its pod (no shutdown, no last write) while labels stream in: the
    kubelet restarts the container, Redis replays its append-only file from the pod's volume, and the
    counters hold every label that got a 200 - before, during (Locust sends a 503 again) and after."""
    before = _settled_counts(stack)
    killed: list[str] = []

    def kill_redis(s: cr.ClusterStack, _status: dict[str, object]) -> None:
        (pod,) = (
            s.core()
            .list_namespaced_pod(cr.NAMESPACE, label_selector="app.kubernetes.io/component=join-redis")
            .items
        )
        container = pod.status.container_statuses[0].container_id.removeprefix("containerd://")
        s.node.ctr("tasks", "kill", "--signal", "SIGKILL", container)
        killed.append(container)

    # gated on the error rate alone: the drill is about labels kept, and v1 over v2 (a new candidate
    # after the last release promoted v2) is a real 2-point accuracy regression (v2 answers Locust's
    # iris rows 98 % right, v1 96 %) the accuracy gate may prove, and rightly roll back. (Shipping v2
    # again over v1 instead once never finished its hand-off: see the session note of 2026-12-02.)
    shipped = cr.ship(
        stack, "join-store-killed", "iris:v1", strategy=CANARY, feedback_share=0.5, during=kill_redis,
        extra={"models.stable": "iris:v2", "rollout.analysis": {**ACCURACY, "metrics": ACCURACY["metrics"][:1]}},
    )  # fmt: skip
    assert killed, "the drill never ran"
    accepted = shipped.locust.get("labels_by_status", {}).get("200", 0)
    after = _settled_counts(stack)
    print(json.dumps({"labels_by_status": shipped.locust.get("labels_by_status"), "counted": after - before,
                      "retried": shipped.locust.get("retried"), "phase": shipped.phase}))  # fmt: skip
    (pod,) = (
        stack.core()
        .list_namespaced_pod(cr.NAMESPACE, label_selector="app.kubernetes.io/component=join-redis")
        .items
    )
    assert pod.status.container_statuses[0].restart_count >= 1, "Redis was not restarted"
    assert accepted > 100, shipped.locust
    assert accepted <= after - before <= accepted + _answer_not_seen(shipped.locust), (
        after - before,
        shipped.locust,
    )
    assert shipped.phase == "Promoted", shipped.why()


def test_forged_labels_are_refused_through_the_gateway_and_change_nothing(stack: cr.ClusterStack) -> None:
    answer = httpx.post(
        f"{stack.traefik.url}/predict", json={"instances": [[5.1, 3.5, 1.4, 0.2]]}, timeout=10
    )
    rid = answer.headers["x-request-id"]
    before = _settled_counts(stack)
    for headers in ({}, {"Authorization": "Bearer forged-forged-forged-forged"}):
        refused = httpx.post(
            f"{stack.traefik.url}/feedback", json={"request_id": rid, "label": "virginica"},
            headers=headers, timeout=10,
        )  # fmt: skip
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"]["code"] == "unauthorized"
    assert _settled_counts(stack) == before
    good = httpx.post(
        f"{stack.traefik.url}/feedback", json={"request_id": rid, "label": "setosa"},
        headers={"Authorization": f"Bearer {stack.feedback_token()}"}, timeout=10,
    )  # fmt: skip
    assert good.status_code == 200, good.text
    assert _settled_counts(stack) == before + 1
