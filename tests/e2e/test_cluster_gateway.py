"""Rollouts on real pods through a real Gateway API data plane (Traefik, tests/k8s/gateway.py), under
Locust, gated on Prometheus series scraped from the pods (tests/k8s/cluster_rollouts.py).

The chart is installed with ``helm install`` in ``gateway-api`` mode serving iris:v1; each release
is a ``helm upgrade`` as a user ships one, with Locust sending predictions to the Gateway the
whole time:

- a good candidate (iris:v2): the canary steps 20 % -> 60 % -> 100 % on Successful analyses of the
  candidate pod's error rate and p99 latency, is promoted, handed over to the stable
  InferenceService, and every answer through the Gateway is then iris:v2; no request fails;
- a bad release (iris:v1 whose server fails 30 % of predictions with HTTP 500,
  ``models.candidateEnv`` BENTO_FAULT_ERROR_RATE): the first analysis at 20 % fails and the rollout
  is rolled back, all traffic on stable within 30 s of the candidate's first traffic; the share of
  requests it hurt is reported (there is no retry on stable in the data plane: Traefik's
  Gateway API provider has no retry filter).

What is not real here: nothing of the data path (Traefik proxies to the pod IPs of the Services'
EndpointSlices). Traefik runs as a process in the node's netns, not as a pod (gateway.py).
Figures are printed (``-s``) and written to ``$BENCH_CLUSTER_JSON`` when set (``make bench``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.k8s import cluster_rollouts as cr
from tests.k8s.kserve import KServe

pytestmark = pytest.mark.k8s

RESULTS: dict[str, cr.Shipped] = {}


@pytest.fixture(scope="module")
def stack(kserve_node: KServe, tmp_path_factory: pytest.TempPathFactory) -> Iterator[cr.ClusterStack]:
    began = time.monotonic()
    with cr.cluster_stack(kserve_node, tmp_path_factory.mktemp("cluster-gateway")) as s:
        try:
            yield s
        finally:
            print("\n--- rollouts through the Gateway: seconds per phase ---")
            s.times["node + KServe"] = kserve_node.seconds
            for what, seconds in s.times.items():
                print(f"{what:>55}: {seconds:6.1f}")
            print(f"{'after node + KServe, to the teardown':>55}: {time.monotonic() - began:6.1f}")
            rows = [r.row() for r in RESULTS.values()]
            for row in rows:
                print(json.dumps({k: v for k, v in row.items() if k != "events"}))
            if out := os.environ.get("BENCH_CLUSTER_JSON"):
                Path(out).write_text(json.dumps({"setup_seconds": s.times, "releases": rows}, indent=1))


def test_the_gateway_routes_by_the_charts_httproute(stack: cr.ClusterStack) -> None:
    """Traefik accepted the chart's HTTPRoute on the Gateway and sends all of it to stable."""
    route = stack.custom().get_namespaced_custom_object(
        *cr.HTTPROUTE[:2], cr.NAMESPACE, cr.HTTPROUTE[2], cr.ROUTE
    )
    (parent,) = route["status"]["parents"]
    conds = {c["type"]: c["status"] for c in parent["conditions"]}
    assert parent["controllerName"] == "traefik.io/gateway-controller"
    assert conds == {"Accepted": "True", "ResolvedRefs": "True"}, parent
    assert stack.route_weights() == {"iris-stable": 100}
    assert cr._only(stack, "v1", 20)


def test_a_good_candidate_is_promoted_with_no_failed_request(stack: cr.ClusterStack) -> None:
    shipped = cr.ship(stack, cr.RELEASES[0].name, cr.RELEASES[0].candidate)
    RESULTS[shipped.name] = shipped
    reasons = [e["reason"] for e in shipped.history]
    assert shipped.phase == "Promoted", shipped.why()
    steps = [e["message"] for e in shipped.history if e["reason"] == "StepStarted"]
    assert any(s.endswith("setWeight 20") for s in steps) and any(
        s.endswith("setWeight 60") for s in steps
    ), steps
    assert "RolledBack" not in reasons
    answers = shipped.locust["answers_by_version"]
    assert answers.get("v2", 0) > 100 and answers.get("v1", 0) > 100, answers  # both versions served users
    assert shipped.failed == 0, shipped.why()
    assert stack.route_weights()["iris-stable"] == 100
    assert cr._only(stack, "v2", 20)


def test_a_helm_upgrade_after_the_promotion_keeps_serving_the_promoted_model(stack: cr.ClusterStack) -> None:
    """The hand-off made the Helm-owned stable InferenceService serve iris:v2; a `helm upgrade` that
    changes nothing (models.stable still iris:v1 in the values) must not put it back on iris:v1:
    the chart reads the ModelRollout's status (Promoted, hand-off Complete) and renders what the
    controller wrote. No restart of stable's pod, no new rollout."""
    assert "canary-good" in RESULTS, "runs after the promotion"
    custom = stack.custom()
    before = custom.get_namespaced_custom_object(
        "serving.kserve.io", "v1beta1", cr.NAMESPACE, "inferenceservices", "iris-stable"
    )
    stack.helm("upgrade", "--reuse-values", values={"monitoring.interval": "2s"})
    after = custom.get_namespaced_custom_object(
        "serving.kserve.io", "v1beta1", cr.NAMESPACE, "inferenceservices", "iris-stable"
    )
    env = {e["name"]: e.get("value") for e in after["spec"]["predictor"]["containers"][0]["env"]}
    assert env["BENTO_MODEL_TAG"] == "iris:v2", env
    assert after["metadata"]["annotations"]["bento-rollout.io/model"] == "iris:v2"
    assert after["spec"]["predictor"] == before["spec"]["predictor"]  # nothing for KServe to roll
    for _ in range(3):
        time.sleep(3)
        assert cr._only(stack, "v2", 10)
    st = stack.rollout_status()
    assert (st["phase"], st["candidate"], st["handoff"]["phase"]) == ("Promoted", "iris:v2", "Complete"), st


def test_a_bad_release_is_rolled_back_within_30_s_of_its_first_traffic(stack: cr.ClusterStack) -> None:
    assert "canary-good" in RESULTS, "the good release runs first (stable is iris:v2 after it)"
    rel = cr.RELEASES[1]
    shipped = cr.ship(stack, rel.name, rel.candidate, extra=rel.extra)
    RESULTS[shipped.name] = shipped
    assert shipped.phase == "RolledBack", shipped.why()
    assert shipped.first_traffic_to_rollback is not None and shipped.first_traffic_to_rollback < 30, (
        shipped.why()
    )
    assert stack.route_weights() == {"iris-stable": 100, "iris-candidate": 0}
    assert cr._only(stack, "v2", 20)
    # what users saw: failures only from the candidate's share (about 30 % of its 20 %)
    assert 0 < shipped.failed < 0.1 * shipped.requests, shipped.why()


def test_ab_test_keeps_each_user_on_one_version_and_keeps_stable_without_a_winner(
    stack: cr.ClusterStack,
) -> None:
    """A/B through Traefik, sticky by X-User-ID (header buckets: Traefik has no session affinity in
    Gateway API): each tester sees one version only, those whose id ends in 0-4 the candidate, and
    Locust's users split likewise; both versions serve without errors, so no winner is proven and at
    maxDuration the experiment keeps stable (RolledBack, ExperimentInconclusive)."""
    assert "canary-faulty" in RESULTS, "runs after the faulty release (stable iris:v2)"
    rel = cr.ABTEST
    seen: dict[str, set[str]] = {}

    def users(s: cr.ClusterStack, _status: dict) -> None:  # while the split is in force
        import httpx

        time.sleep(3)  # the status is written before the route (persist, then act), Traefik follows
        for i in range(1, 21):
            for _ in range(4):
                resp = httpx.post(f"{s.traefik.url}/predict", json={"instances": [[5.1, 3.5, 1.4, 0.2]]},
                                  headers={"X-User-ID": f"tester-{i}"}, timeout=5)  # fmt: skip
                assert resp.status_code == 200, resp.text
                seen.setdefault(f"tester-{i}", set()).add(resp.headers["x-model-version"])

    shipped = cr.ship(stack, rel.name, rel.candidate, strategy=rel.strategy, extra=rel.extra, during=users)
    RESULTS[shipped.name] = shipped
    assert shipped.phase == "RolledBack", shipped.why()
    assert "ExperimentInconclusive" in {e["reason"] for e in shipped.history}, shipped.history
    assert len(seen) == 20 and all(len(v) == 1 for v in seen.values()), seen  # sticky: one version per user
    on_candidate = {u for u, v in seen.items() if v == {"v1"}}
    assert on_candidate == {f"tester-{i}" for i in range(1, 21) if i % 10 < 5}, seen  # last digit 0-4
    answers = shipped.locust["answers_by_version"]
    assert answers.get("v1", 0) > 300 and shipped.failed == 0, shipped.why()  # Locust's users 1-4 of 8 too
    assert cr._only(stack, "v2", 20)


def test_blue_green_previews_to_testers_only_then_switches_everyone(stack: cr.ClusterStack) -> None:
    """Blue/green through the Gateway with no mirror (Traefik has none): during the preview only the
    testers' requests (X-Rollout-Preview: 1, the HTTPRoute's header match) reach the candidate and
    are measured; users stay on stable; then the switch, the post-promotion analysis, Promoted and
    the hand-off; no request fails."""
    assert "abtest" in RESULTS, "runs after the A/B test (stable iris:v2)"
    rel = cr.BLUEGREEN
    shipped = cr.ship(stack, rel.name, rel.candidate, strategy=rel.strategy, preview=True, extra=rel.extra)
    RESULTS[shipped.name] = shipped
    assert shipped.phase == "Promoted", shipped.why()
    assert shipped.failed == 0, shipped.why()
    # the testers were answered by the candidate (before its preview route existed, by stable)
    assert shipped.preview.get("slow", 0) > 50 and set(shipped.preview) <= {"slow", "v2"}, shipped.preview
    switched = [r for r in shipped.timeline if r["candidate_weight"] == 100]
    before = [r for r in shipped.timeline if r is not None and not r["candidate_weight"]]
    assert switched and before, shipped.timeline  # 0 % for users during the preview, then all of them
    assert cr._only(stack, "slow", 20)


def test_a_candidate_pod_killed_mid_canary(stack: cr.ClusterStack) -> None:
    """The candidate's only pod deleted as soon as it has users' traffic: what users see (its share
    of requests fails until Traefik drops the endpoint, then the weighted share has no backend
    until KServe's Deployment has a new pod Ready) and what the rollout does, reported as it is."""
    assert RESULTS.get("bluegreen") and RESULTS["bluegreen"].phase == "Promoted", "runs after the blue/green"
    rel = cr.DRILLS[0]
    killed: list[str] = []
    shipped = cr.ship(
        stack, rel.name, rel.candidate, extra=rel.extra, during=cr.kill_pods("iris-candidate", killed)
    )
    RESULTS[shipped.name] = shipped
    assert killed, "the candidate's pod was deleted mid-canary"
    assert shipped.phase == "Promoted", shipped.why()
    assert cr._only(stack, "v1", 20)
    # the candidate's share went to stable while it had no Ready pod (failover.py): without, 3.0 %
    assert "FailoverStarted" in _events(stack), _events(stack)
    assert shipped.failed < 0.02 * shipped.requests, shipped.why()


def test_stable_pod_killed_mid_canary_holds_the_rollout(stack: cr.ClusterStack) -> None:
    """Issue "When stable dies mid-rollout", on the cluster: stable's pod deleted while the canary
    runs; the controller holds (StableUnavailable: no step while stable is not Ready), KServe
    replaces the pod, the rollout goes on to its end; the failed share is reported."""
    assert RESULTS.get("candidate-pod-killed") and RESULTS["candidate-pod-killed"].phase == "Promoted"
    rel = cr.DRILLS[1]
    killed: list[str] = []
    shipped = cr.ship(
        stack, rel.name, rel.candidate, extra=rel.extra, during=cr.kill_pods("iris-stable", killed)
    )
    RESULTS[shipped.name] = shipped
    assert killed, "stable's pod was deleted mid-canary"
    reasons = [e["reason"] for e in shipped.history]
    assert "StableUnavailable" in reasons, reasons
    assert "StableRecovered" in reasons, reasons  # KServe's new pod Ready: the hold ended by itself
    assert shipped.phase == "Promoted", shipped.why()
    assert cr._only(stack, "v2", 20)
    # everyone on the Ready candidate while stable had no Ready pod: without, 13.1 % failed
    assert shipped.failed < 0.08 * shipped.requests, shipped.why()


def _events(stack: cr.ClusterStack) -> dict[str, str]:
    """The ModelRollout's Kubernetes Events: reason -> the latest message."""
    events = (
        stack.core()
        .list_namespaced_event(cr.NAMESPACE, field_selector=f"involvedObject.name={cr.ROLLOUT}")
        .items
    )
    return {e.reason: e.message for e in sorted(events, key=lambda e: str(e.last_timestamp or e.event_time))}


def test_a_shadow_through_a_gateway_that_cannot_mirror_is_held_and_users_never_notice(
    stack: cr.ClusterStack,
) -> None:
    """Traefik v3.6 has no RequestMirror (a rule with one answers HTTP 500 to every request): the
    controller reads Traefik's GatewayClass supportedFeatures, writes no mirror, holds the rollout
    with a message naming the feature, and `rollout abort` ends it; no request fails meanwhile."""
    last = stack.rollout_status()  # whatever ran before (nothing when run alone: stable iris:v1)
    stable = last.get("candidate" if last.get("phase") == "Promoted" else "stable", "iris:v1")
    candidate = "iris:v2" if stable != "iris:v2" else "iris:slow"
    strategy = {"shadow": {"mirrorPercent": 100, "duration": "30s"}}
    with cr.locust(stack, "shadow-refused") as summary:
        time.sleep(3)
        stack.upgrade({
            "models.stable": stable, "models.candidate": candidate, "rollout.enabled": True,
            "rollout.strategy": strategy, "rollout.strategy.canary": None,  # null: out of the reused values
        })  # fmt: skip

        def held() -> dict | None:
            st = stack.rollout_status()
            ok = st.get("candidate") == candidate and st.get("phase") == "Paused"
            return st if ok and "HTTPRouteRequestMirror" in (st.get("message") or "") else None

        st = stack.until("the shadow held: the Gateway cannot mirror", held, 120,
                         lambda: json.dumps(stack.rollout_status(), indent=1)[-2000:])  # fmt: skip
        assert "traefik.io/gateway-controller" in st["message"], st["message"]
        route = stack.custom().get_namespaced_custom_object(
            *cr.HTTPROUTE[:2], cr.NAMESPACE, cr.HTTPROUTE[2], cr.ROUTE
        )
        assert not [r for r in route["spec"]["rules"] if r.get("filters")], route["spec"]["rules"]
        time.sleep(10)  # users on stable meanwhile
        cli = Path(sys.executable).with_name("rollout")
        kubeconfig = str(stack.node.control_plane.kubeconfig)
        proc = subprocess.run([str(cli), "abort", cr.ROLLOUT, "-n", cr.NAMESPACE, "--kubeconfig", kubeconfig],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        stack.until("Aborted by rollout abort", lambda: stack.rollout_status().get("phase") == "Aborted", 60)
    answered = json.loads(summary.read_text())
    assert answered["total_failed"] == 0 and answered["total_answered"] > 100, answered
    assert set(answered["answers_by_version"]) == {stable.split(":")[1]}, answered
