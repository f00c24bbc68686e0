"""Shadow agreement on real pods: Traefik's CRD provider mirrors users' requests to the candidate, both
versions' answers to the same request id are compared in the chart's join store, and the
``shadow-agreement`` gate decides (bentos/redis_join.py, rollout/routers/traefik.py).

Traefik's Gateway API provider cannot mirror (tests/e2e/test_cluster_gateway.py: a shadow there is
held), so the chart is installed in ``routing.mode: traefik``: an IngressRoute on Traefik's ``web``
entry point to the chart's TraefikService, which the controller turns from weighted into mirroring
(stable answers, the candidate's predictor gets a copy of every request after stable answered).
Otherwise as tests/e2e/test_cluster_feedback.py: two pods per version, the Redis join store,
Prometheus scraping the pods and the store's exporter. Locust sends predictions through Traefik
the whole time, each with an ``X-Request-ID`` of its own (``LOAD_REQUEST_IDS``): Traefik makes no
request id, so without one each version's server makes its own and nothing could be compared.

- a shadow of iris:poisoned (trained on 35 % flipped labels) mirrored 100 %, gated on agreement
  with stable >= 0.95, is rolled back: it agrees on about 71 % of Locust's rows (43 of the 150 iris
  rows differ); users are only ever answered by stable, and a request sent mid-shadow under a known
  id is labelled once and counted for both versions (the mirrored copy kept the id);
- a shadow of iris:v2 under the same gate is promoted and handed off to stable: v2 and v1 differ
  on 3 of the 150 iris rows (agreement 0.98, computed from the stored models with
  rollout.registry.load_model), so 0.95 passes it with room and still rejects the poisoned one.

Agreement, comparisons counted and requests are printed (``-s``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.test_cluster_feedback import TWO_PODS
from tests.k8s import cluster_rollouts as cr
from tests.k8s.kserve import KServe

pytestmark = pytest.mark.k8s

TRAEFIK_SERVICE = ("traefik.io", "v1alpha1", "traefikservices")
SHADOW = {"shadow": {"mirrorPercent": 100, "duration": "60s", "promoteOnSuccess": True}}
AGREEMENT = {
    "interval": "10s",
    "metrics": [
        {"name": "agreement", "template": "shadow-agreement", "direction": "higher",
         "threshold": {"min": 0.95}, "failureLimit": 1},
    ],
}  # fmt: skip
FIGURES: dict[str, dict[str, Any]] = {}


@pytest.fixture(scope="module")
def stack(kserve_node: KServe, tmp_path_factory: pytest.TempPathFactory) -> Iterator[cr.ClusterStack]:
    values = {**TWO_PODS, "routing.mode": "traefik"}
    with cr.cluster_stack(
        kserve_node, tmp_path_factory.mktemp("cluster-shadow"), values, load_env={"LOAD_REQUEST_IDS": "1"}
    ) as s:
        s.until("the join store's exporter scraped", lambda: s.prom.query("model_join_store_up") == 1, 120,
                s.pod_state)  # fmt: skip
        try:
            yield s
        finally:
            print("\n--- shadow agreement through Traefik's mirror ---")
            for name, row in FIGURES.items():
                print(name, json.dumps(row))


def _split(stack: cr.ClusterStack) -> dict[str, Any]:
    obj = stack.custom().get_namespaced_custom_object(
        *TRAEFIK_SERVICE[:2], cr.NAMESPACE, TRAEFIK_SERVICE[2], stack.service
    )
    return dict(obj["spec"])


def _shadow_counts(stack: cr.ClusterStack, version: str) -> tuple[float, float, float]:
    """(comparisons, agreements) counted for ``version`` in the join store, and the rows its pods
    predicted, as Prometheus has them."""
    time.sleep(5)  # > the PodMonitor's 2 s interval: the last numbers scraped

    def total(metric: str) -> float:  # the shadow counters: the join store's exporter only
        return sum(v for _, v in stack.prom.vector(f'sum({metric}{{model="iris",version="{version}"}})'))

    return (
        total("model_shadow_comparisons_total"),
        total("model_shadow_agreements_total"),
        total("model_predictions_total"),
    )


def _ship_shadow(stack: cr.ClusterStack, name: str, candidate: str) -> tuple[cr.Shipped, dict[str, Any]]:
    """Ship ``candidate`` as a shadow gated on agreement; while it is mirrored, one request under a
    known X-Request-ID and its label (whose answer says which versions it counted for)."""
    version = candidate.split(":", 1)[1]
    before = _shadow_counts(stack, version)
    seen: dict[str, Any] = {}

    def probe_request_id(s: cr.ClusterStack, _status: dict[str, Any]) -> None:
        deadline = time.monotonic() + 30
        with httpx.Client(base_url=s.traefik.url, timeout=10) as http:
            while time.monotonic() < deadline:  # until the controller's mirror is applied by Traefik
                rid = f"shadow-probe-{uuid.uuid4().hex}"
                answer = http.post("/predict", json={"instances": [[6.0, 2.2, 5.0, 1.5]]},
                                   headers={"X-Request-ID": rid})  # fmt: skip
                time.sleep(1.0)  # Traefik sends the copy after stable answered
                label = http.post(
                    "/feedback", json={"request_id": rid, "label": "virginica"},
                    headers={"Authorization": f"Bearer {s.feedback_token()}"},
                )  # fmt: skip
                seen.update(request_id=rid, answered_id=answer.headers.get("x-request-id"),
                            answered_by=answer.headers.get("x-model-version"), label=label.status_code,
                            counted_for=sorted((label.json() or {}).get("counted_for") or []))  # fmt: skip
                if len(seen["counted_for"]) == 2:
                    return
                time.sleep(1.0)

    shipped = cr.ship(stack, name, candidate, strategy=SHADOW, extra={"rollout.analysis": AGREEMENT},
                      during=probe_request_id)  # fmt: skip
    after = _shadow_counts(stack, version)
    comparisons, agreements, predicted = (a - b for a, b in zip(after, before, strict=True))
    FIGURES[name] = {
        "candidate": candidate, "phase": shipped.phase, "requests": shipped.requests, "failed": shipped.failed,
        "answers_by_version": shipped.locust.get("answers_by_version"),
        "request_ids": shipped.locust.get("request_ids"), "candidate_predicted_rows": predicted,
        "comparisons": comparisons,
        "agreement": round(agreements / comparisons, 4) if comparisons else None,
        "seconds": round(shipped.seconds, 1), "traefik_requests_by_code": shipped.traefik_codes,
        "probe": seen, "events": [f"{e['reason']}: {e['message']}" for e in shipped.history],
    }  # fmt: skip
    return shipped, FIGURES[name]


def test_the_chart_routes_through_a_traefik_service(stack: cr.ClusterStack) -> None:
    """IngressRoute -> TraefikService (weighted, all to stable) -> stable's pods."""
    assert _split(stack) == {
        "weighted": {"services": [{"name": "iris-stable-predictor", "port": 80, "weight": 100}]}
    }
    assert cr._only(stack, "v1", 20)


def test_a_poisoned_shadow_is_rejected_by_agreement_and_users_only_see_stable(stack: cr.ClusterStack) -> None:
    shipped, fig = _ship_shadow(stack, "shadow-poisoned", "iris:poisoned")
    assert shipped.phase == "RolledBack", shipped.why()
    failed = [e["message"] for e in shipped.history if e["reason"] in ("AnalysisFailed", "MeasurementFailed")]
    assert any("agreement" in m for m in failed), shipped.history
    assert fig["comparisons"] > 200, fig
    assert fig["agreement"] < 0.95, fig  # what the gate saw, from the same counters
    assert 0.5 < fig["agreement"] < 0.9, fig  # ~0.71 expected (43 of 150 rows differ)
    # users: only stable answered, none failed, every answer echoed the request id it was sent with
    assert set(shipped.locust.get("answers_by_version", {})) == {"v1"}, fig
    assert shipped.failed == 0, fig
    ids = shipped.locust.get("request_ids", {})
    assert ids.get("sent", 0) > 0 and ids.get("echoed") == ids.get("sent"), fig
    # the mirrored copy kept the request id: one label, counted for the version users saw and the shadow
    assert fig["probe"].get("answered_by") == "v1" and fig["probe"].get("label") == 200, fig
    assert fig["probe"].get("counted_for") == ["poisoned", "v1"], fig
    # every mirrored prediction compared (the shadow's rows: one per request): none lost for want of
    # a shared id (a few may still be in a server's 50 ms record batch when the counters are read)
    assert fig["comparisons"] >= 0.95 * fig["candidate_predicted_rows"], fig
    assert "weighted" in _split(stack) and "mirroring" not in _split(stack)  # the mirror removed


def test_a_good_shadow_is_promoted_and_handed_off(stack: cr.ClusterStack) -> None:
    shipped, fig = _ship_shadow(stack, "shadow-good", "iris:v2")
    assert shipped.phase == "Promoted", shipped.why()
    assert any(e["reason"] == "ShadowPassed" for e in shipped.history), shipped.history
    assert (stack.rollout_status().get("handoff") or {}).get("phase") == "Complete"
    assert fig["comparisons"] > 200 and fig["agreement"] >= 0.95, fig  # ~0.98 expected (3 of 150 rows)
    assert fig["probe"].get("counted_for") == ["v1", "v2"], fig
    assert shipped.failed == 0, fig
    assert cr._only(stack, "v2", 20)  # stable's pods serve the promoted model
    split = _split(stack)  # all to stable again, the candidate (at 0 %) not named
    assert [(s["name"], s["weight"]) for s in split["weighted"]["services"]] == [
        ("iris-stable-predictor", 100)
    ]
