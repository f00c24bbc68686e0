"""The cluster routers against a real kube-apiserver with the real CRDs (KServe, Istio, Gateway API,
Traefik).

Each router sets canary weights, mirroring and header/cookie matches; the routes are read back
through the API server, so the CRD schemas (server-side validation, ``fieldValidation=Strict``)
accept every object we write; ``finalize`` sends everything back to stable. The client's error
translation (404, 409, 422) and its conflict-retrying ``update`` are checked on the same server.

What cannot run here: no KServe controller, Knative, Istio or Gateway implementation runs in the
test cluster (no pods at all), so nothing *acts* on these objects. The InferenceService status a
KServe controller would write (conditions, revisions, traffic) is written by the test through the
status subresource to simulate readiness.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from rollout.errors import (
    ConflictError,
    InvalidObjectError,
    NotFoundError,
    RouterError,
    UnsupportedRouteError,
)
from rollout.k8s.client import HTTP_ROUTE, INFERENCE_SERVICE, VIRTUAL_SERVICE, KubeClient
from rollout.routers.base import Backend, Routes, RouteTarget, TrafficRouter
from rollout.routers.matching import normalize_routes
from rollout.routers.registry import make_router
from rollout.spec import HeaderMatch, StickyKey

pytestmark = pytest.mark.k8s

TARGET = RouteTarget(
    service="iris", stable=Backend("iris-v1", "iris:v1"), candidate=Backend("iris-v2", "iris:v2")
)
STEPS = [
    Routes(candidate_weight=10),
    Routes(candidate_weight=50),
    Routes(candidate_weight=0, mirror_percent=30),
    Routes(candidate_weight=20, match=(HeaderMatch(header="X-Canary", value="yes"),)),
    Routes(
        candidate_weight=0,
        match=(HeaderMatch(cookie="cohort", value="b"), HeaderMatch(header="x-user", value="42")),
    ),
    Routes(candidate_weight=100),
]


@pytest.fixture
def kube(k8s_cluster: Any) -> Iterator[KubeClient]:
    client = KubeClient.from_kubeconfig(str(k8s_cluster.kubeconfig))
    yield client
    client.close()


def _walk(router: TrafficRouter, steps: list[Routes]) -> None:
    router.ensure(TARGET)
    assert router.get_routes() == Routes.all_stable()
    for routes in steps:
        router.set_routes(routes)
        assert router.get_routes() == normalize_routes(routes), routes
    router.finalize(TARGET)
    assert router.get_routes() == Routes.all_stable()


def test_istio_virtual_service_through_every_route_kind(kube: KubeClient, k8s_namespace: str) -> None:
    router = make_router(
        "istio", client=kube, namespace=k8s_namespace, name="iris", gateway="mesh-gw", port=3000
    )
    _walk(router, STEPS)
    vs = kube.get(VIRTUAL_SERVICE, k8s_namespace, "iris")
    assert vs["spec"]["gateways"] == ["mesh-gw"]
    weights = {r["destination"]["host"]: r["weight"] for r in vs["spec"]["http"][-1]["route"]}
    assert weights == {"iris-v1": 100, "iris-v2": 0}
    with pytest.raises(UnsupportedRouteError):
        router.set_routes(Routes(candidate_weight=50, sticky=StickyKey(cookie="user")))
    assert router.get_routes() == Routes.all_stable()  # nothing half-applied


def test_istio_router_adopts_an_existing_virtual_service(kube: KubeClient, k8s_namespace: str) -> None:
    """A VirtualService made by someone else (e.g. the chart) is taken over: hosts kept, routes ours."""
    kube.create(
        VIRTUAL_SERVICE,
        k8s_namespace,
        {
            "metadata": {"name": "iris"},
            "spec": {
                "hosts": ["iris.example.com"],
                "http": [{"route": [{"destination": {"host": "iris-v1"}}]}],
            },
        },
    )
    router = make_router("istio", client=kube, namespace=k8s_namespace, name="iris")
    router.ensure(TARGET)
    router.set_routes(Routes(candidate_weight=25))
    # a fresh router (a restarted controller) reads the target from the object's annotations
    again = make_router("istio", client=kube, namespace=k8s_namespace, name="iris")
    assert again.get_routes() == Routes(candidate_weight=25)
    assert kube.get(VIRTUAL_SERVICE, k8s_namespace, "iris")["spec"]["hosts"] == ["iris.example.com"]


def _gateway(kube: KubeClient, namespace: str, name: str, features: list[str] | None) -> None:
    """A Gateway ``name`` of a GatewayClass of its own whose status lists ``features`` as a Gateway
    API implementation publishes them (GEP-2162; written by the test: no implementation runs in this
    API-only cluster; tests/e2e/test_cluster_gateway.py has Traefik's own)."""
    group, version = "gateway.networking.k8s.io", "v1"
    cls = f"{namespace}-{name}"
    kube.custom.create_cluster_custom_object(group, version, "gatewayclasses", {
        "apiVersion": f"{group}/{version}", "kind": "GatewayClass", "metadata": {"name": cls},
        "spec": {"controllerName": "example.com/gateway-controller"},
    })  # fmt: skip
    if features is not None:
        kube.custom.patch_cluster_custom_object_status(group, version, "gatewayclasses", cls, {
            "status": {"supportedFeatures": [{"name": f} for f in sorted(features)], "conditions": []},
        })  # fmt: skip
    kube.custom.create_namespaced_custom_object(group, version, namespace, "gateways", {
        "apiVersion": f"{group}/{version}", "kind": "Gateway", "metadata": {"name": name},
        "spec": {"gatewayClassName": cls, "listeners": [{"name": "http", "protocol": "HTTP", "port": 80}]},
    })  # fmt: skip


def test_gateway_api_http_route_through_every_route_kind(kube: KubeClient, k8s_namespace: str) -> None:
    _gateway(kube, k8s_namespace, "edge", ["HTTPRouteRequestMirror", "HTTPRouteRequestPercentageMirror"])
    router = make_router(
        "gateway-api", client=kube, namespace=k8s_namespace, name="iris", gateway="edge", port=3000
    )
    _walk(router, STEPS)
    obj = kube.get(HTTP_ROUTE, k8s_namespace, "iris")
    assert obj["spec"]["parentRefs"][0]["name"] == "edge"
    refs = {r["name"]: r["weight"] for r in obj["spec"]["rules"][-1]["backendRefs"]}
    assert refs == {"iris-v1": 100, "iris-v2": 0}
    mirror = Routes(candidate_weight=5, mirror_percent=20)
    router.set_routes(mirror)
    filt = kube.get(HTTP_ROUTE, k8s_namespace, "iris")["spec"]["rules"][-1]["filters"][0]
    assert filt["requestMirror"]["percent"] == 20 and filt["requestMirror"]["backendRef"]["name"] == "iris-v2"
    # a sticky split is a header bucket rule (buckets.py), which the standard-channel CRD accepts
    sticky = Routes(candidate_weight=50, sticky=StickyKey(header="X-User"))
    router.set_routes(sticky)
    assert router.get_routes() == Routes(candidate_weight=50, sticky=StickyKey(header="x-user"))
    rules = kube.get(HTTP_ROUTE, k8s_namespace, "iris")["spec"]["rules"]
    assert rules[0]["matches"][0]["headers"][0] == {
        "type": "RegularExpression",
        "name": "x-user",
        "value": "^.*[01234abcABC]$",
    }
    assert "sessionPersistence" not in rules[-1]


def test_traefik_service_through_every_route_kind_it_can_express(
    kube: KubeClient, k8s_namespace: str
) -> None:
    """Weights and a mirror from stable, accepted by Traefik's own CRD (Strict field validation);
    each write leaves one form (weighted or mirroring); matches are refused with nothing written."""
    from rollout.routers.traefik import TRAEFIK_SERVICE

    router = make_router("traefik", client=kube, namespace=k8s_namespace, name="iris", port=3000)
    _walk(router, [s for s in STEPS if not s.match] + [Routes(mirror_percent=100)])
    router.set_routes(Routes(mirror_percent=30))
    spec = kube.get(TRAEFIK_SERVICE, k8s_namespace, "iris")["spec"]
    assert spec == {"mirroring": {"name": "iris-v1", "port": 3000, "mirrorBody": True,
                                  "mirrors": [{"name": "iris-v2", "port": 3000, "percent": 30}]}}  # fmt: skip
    version = kube.get(TRAEFIK_SERVICE, k8s_namespace, "iris")["metadata"]["resourceVersion"]
    with pytest.raises(UnsupportedRouteError, match="cannot match headers"):
        router.set_routes(STEPS[3])
    assert kube.get(TRAEFIK_SERVICE, k8s_namespace, "iris")["metadata"]["resourceVersion"] == version
    router.finalize(TARGET)
    spec = kube.get(TRAEFIK_SERVICE, k8s_namespace, "iris")["spec"]
    assert spec == {"weighted": {"services": [{"name": "iris-v1", "port": 3000, "weight": 100}]}}


def test_gateway_api_refuses_to_mirror_through_a_gateway_that_cannot(
    kube: KubeClient, k8s_namespace: str
) -> None:
    """A Gateway whose implementation does not list RequestMirror among its supported features (as
    Traefik v3.6 does not: it answers every request of such a rule with HTTP 500) gets no mirror
    filter: refused with the class and the feature named, the route left as it was; weights and
    header matches still go through."""
    _gateway(kube, k8s_namespace, "edge", ["HTTPRouteHostRewrite", "HTTPRouteQueryParamMatching"])
    router = make_router("gateway-api", client=kube, namespace=k8s_namespace, name="iris", gateway="edge")
    router.ensure(TARGET)
    router.set_routes(Routes(candidate_weight=20))
    for mirror in (Routes(mirror_percent=100), Routes(candidate_weight=20, mirror_percent=30)):
        with pytest.raises(
            UnsupportedRouteError,
            match=r"example.com/gateway-controller\) does not support HTTPRouteRequestMirror",
        ):
            router.set_routes(mirror)
    assert router.get_routes() == Routes(candidate_weight=20)
    assert "filters" not in kube.get(HTTP_ROUTE, k8s_namespace, "iris")["spec"]["rules"][-1]
    router.set_routes(
        Routes(candidate_weight=10, match=(HeaderMatch(header="x-rollout-preview", value="1"),))
    )
    assert router.get_routes().candidate_weight == 10
    # a Gateway that cannot be read (here: none of that name) refuses the mirror too
    other = make_router("gateway-api", client=kube, namespace=k8s_namespace, name="iris", gateway="missing")
    with pytest.raises(UnsupportedRouteError, match="cannot tell whether Gateway"):
        other.set_routes(Routes(mirror_percent=50))


def test_the_real_crd_schema_rejects_a_bad_route(kube: KubeClient, k8s_namespace: str) -> None:
    """Validation is the server's: a negative weight and an unknown field are refused with its message."""
    bad = {
        "metadata": {"name": "bad"},
        "spec": {"rules": [{"backendRefs": [{"name": "a", "port": 80, "weight": -1}]}]},
    }
    with pytest.raises(InvalidObjectError, match="weight"):
        kube.create(HTTP_ROUTE, k8s_namespace, bad)
    unknown = {"metadata": {"name": "bad"}, "spec": {"hosts": ["a"], "http": [{"route": [], "weighted": 3}]}}
    with pytest.raises(InvalidObjectError, match="weighted"):
        kube.create(VIRTUAL_SERVICE, k8s_namespace, unknown)


def _isvc(name: str, mode: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if mode:
        meta["annotations"] = {"serving.kserve.io/deploymentMode": mode}
    return {
        "metadata": meta,
        "spec": {
            "predictor": {
                "minReplicas": 1,
                "containers": [
                    {
                        "name": "kserve-container",
                        "image": "bento-iris:v2",
                        "ports": [{"containerPort": 3000, "protocol": "TCP"}],
                    }
                ],
            }
        },
    }


def _write_status(kube: KubeClient, ns: str, name: str, ready: bool, created: str, ready_rev: str) -> None:
    """What KServe's controller would write (it does not run here)."""
    isvc = kube.get(INFERENCE_SERVICE, ns, name)
    flag = "True" if ready else "False"
    isvc["status"] = {
        "observedGeneration": isvc["metadata"]["generation"],
        "conditions": [
            {"type": "PredictorReady", "status": flag, "lastTransitionTime": "2026-01-01T00:00:00Z"},
            {"type": "Ready", "status": flag, "lastTransitionTime": "2026-01-01T00:00:00Z"},
        ],
        "components": {
            "predictor": {
                "latestCreatedRevision": created,
                "latestReadyRevision": ready_rev,
                "previousRolledoutRevision": "iris-predictor-00001",
            }
        },
    }
    kube.replace_status(INFERENCE_SERVICE, ns, isvc)


def test_kserve_canary_traffic_percent_and_readiness(kube: KubeClient, k8s_namespace: str) -> None:
    created = kube.create(INFERENCE_SERVICE, k8s_namespace, _isvc("iris", mode="Knative"))
    router = make_router("kserve", client=kube, namespace=k8s_namespace, name="iris")
    router.ensure(TARGET)
    # KServe copies labels and annotations into the Knative revision template: ensure writes none
    assert kube.get(INFERENCE_SERVICE, k8s_namespace, "iris")["metadata"] == created["metadata"]
    _write_status(
        kube,
        k8s_namespace,
        "iris",
        ready=False,
        created="iris-predictor-00002",
        ready_rev="iris-predictor-00001",
    )
    readiness = router.readiness()
    assert not readiness.ready and "iris-predictor-00002" in readiness.reason
    _write_status(
        kube,
        k8s_namespace,
        "iris",
        ready=True,
        created="iris-predictor-00002",
        ready_rev="iris-predictor-00002",
    )
    assert router.readiness().ready

    for pct in (10, 50, 100):
        router.set_routes(Routes(candidate_weight=pct))
        assert router.get_routes() == Routes(candidate_weight=pct)
        assert (
            kube.get(INFERENCE_SERVICE, k8s_namespace, "iris")["spec"]["predictor"]["canaryTrafficPercent"]
            == pct
        )
    for unsupported in (Routes(mirror_percent=10), Routes(match=(HeaderMatch(header="x", value="1"),))):
        with pytest.raises(UnsupportedRouteError):
            router.set_routes(unsupported)
    assert router.get_routes() == Routes(candidate_weight=100)
    router.finalize(TARGET)
    assert (
        kube.get(INFERENCE_SERVICE, k8s_namespace, "iris")["spec"]["predictor"]["canaryTrafficPercent"] == 0
    )


@pytest.mark.parametrize("mode", ["RawDeployment", "Standard"])
def test_kserve_router_refuses_standard_mode_by_either_name(
    kube: KubeClient, k8s_namespace: str, mode: str
) -> None:
    kube.create(INFERENCE_SERVICE, k8s_namespace, _isvc("raw", mode=mode))
    router = make_router("kserve", client=kube, namespace=k8s_namespace, name="raw")
    with pytest.raises(UnsupportedRouteError, match="KServe's Standard mode"):
        router.ensure(TARGET)


def _record_mode(kube: KubeClient, ns: str, name: str, mode: str) -> None:
    """status.deploymentMode as KServe v0.20.0 records it at its first reconcile."""
    isvc = kube.get(INFERENCE_SERVICE, ns, name)
    isvc["status"] = {"deploymentMode": mode}
    kube.replace_status(INFERENCE_SERVICE, ns, isvc)


def test_kserve_router_reads_the_mode_kserve_recorded_before_the_annotation(
    kube: KubeClient, k8s_namespace: str
) -> None:
    """KServe decides by status.deploymentMode first (and refuses to change it afterwards): an
    object it runs in Standard mode is refused whatever its annotation says, or without one."""
    kube.create(INFERENCE_SERVICE, k8s_namespace, _isvc("plain"))
    kube.create(INFERENCE_SERVICE, k8s_namespace, _isvc("said-knative", mode="Knative"))
    for name in ("plain", "said-knative"):
        _record_mode(kube, k8s_namespace, name, "Standard")
        router = make_router("kserve", client=kube, namespace=k8s_namespace, name=name)
        with pytest.raises(UnsupportedRouteError, match="Standard mode"):
            router.ensure(TARGET)
    kube.create(INFERENCE_SERVICE, k8s_namespace, _isvc("old-status"))
    _record_mode(kube, k8s_namespace, "old-status", "Serverless")  # recorded by an older KServe
    make_router("kserve", client=kube, namespace=k8s_namespace, name="old-status").ensure(TARGET)


def test_kserve_router_writes_no_percent_kserve_would_ignore(kube: KubeClient, k8s_namespace: str) -> None:
    """Standard mode reads no canaryTrafficPercent: set_routes refuses it on the object it would
    write (not only at ensure), and finalize leaves such an object as it is."""
    kube.create(INFERENCE_SERVICE, k8s_namespace, _isvc("flip"))
    _record_mode(kube, k8s_namespace, "flip", "Knative")
    router = make_router("kserve", client=kube, namespace=k8s_namespace, name="flip")
    router.ensure(TARGET)
    router.set_routes(Routes(candidate_weight=10))
    kube.delete(INFERENCE_SERVICE, k8s_namespace, "flip")  # recreated in Standard mode, same name
    kube.create(INFERENCE_SERVICE, k8s_namespace, _isvc("flip", mode="Standard"))
    _record_mode(kube, k8s_namespace, "flip", "Standard")
    with pytest.raises(UnsupportedRouteError, match="KServe ignores canaryTrafficPercent there"):
        router.set_routes(Routes(candidate_weight=50))
    router.finalize(TARGET)
    assert (
        "canaryTrafficPercent" not in kube.get(INFERENCE_SERVICE, k8s_namespace, "flip")["spec"]["predictor"]
    )


def test_kserve_router_takes_kserves_default_mode_when_the_object_names_none(
    kube: KubeClient, k8s_namespace: str
) -> None:
    """No status and no annotation: KServe's default (its inferenceservice-config ConfigMap, here
    in the test namespace); without a readable one, an error that says what to do, and no write."""
    kube.create(INFERENCE_SERVICE, k8s_namespace, _isvc("unnamed"))

    def router() -> TrafficRouter:
        return make_router(
            "kserve", client=kube, namespace=k8s_namespace, name="unnamed", kserve_namespace=k8s_namespace
        )

    with pytest.raises(RouterError, match="deployment mode not known") as caught:
        router().ensure(TARGET)
    assert "Annotate it serving.kserve.io/deploymentMode: Knative" in str(caught.value)
    assert "inferenceservice-config" in str(caught.value)
    assert "labels" not in kube.get(INFERENCE_SERVICE, k8s_namespace, "unnamed")["metadata"]  # no write
    body = {
        "metadata": {"name": "inferenceservice-config"},
        "data": {"deploy": json.dumps({"defaultDeploymentMode": "Standard"})},
    }
    kube.core.create_namespaced_config_map(k8s_namespace, body)
    with pytest.raises(UnsupportedRouteError, match="Standard mode"):
        router().ensure(TARGET)
    body["data"]["deploy"] = json.dumps({"defaultDeploymentMode": "Serverless"})  # KServe's shipped one
    kube.core.replace_namespaced_config_map("inferenceservice-config", k8s_namespace, body)
    router().ensure(TARGET)


def test_client_errors_and_conflict_retry(kube: KubeClient, k8s_namespace: str) -> None:
    with pytest.raises(NotFoundError, match="absent"):
        kube.get(VIRTUAL_SERVICE, k8s_namespace, "absent")
    created = kube.create(
        VIRTUAL_SERVICE, k8s_namespace, {"metadata": {"name": "c"}, "spec": {"hosts": ["c"]}}
    )
    kube.patch(VIRTUAL_SERVICE, k8s_namespace, "c", {"spec": {"hosts": ["c", "d"]}})
    with pytest.raises(ConflictError):  # a stale resourceVersion is refused, not overwritten
        kube.replace(VIRTUAL_SERVICE, k8s_namespace, created)

    calls = []

    def mutate(obj: dict[str, Any]) -> dict[str, Any]:
        calls.append(obj["metadata"]["resourceVersion"])
        if len(calls) == 1:  # someone else writes between our read and our write
            kube.patch(VIRTUAL_SERVICE, k8s_namespace, "c", {"metadata": {"labels": {"other": "writer"}}})
        obj["spec"]["hosts"].append("e")
        return obj

    out = kube.update(VIRTUAL_SERVICE, k8s_namespace, "c", mutate)
    assert len(calls) == 2 and calls[0] != calls[1]
    assert out["spec"]["hosts"] == ["c", "d", "e"] and out["metadata"]["labels"] == {"other": "writer"}


def test_events_are_recorded_on_the_object(kube: KubeClient, k8s_namespace: str) -> None:
    vs = kube.create(VIRTUAL_SERVICE, k8s_namespace, {"metadata": {"name": "ev"}, "spec": {"hosts": ["ev"]}})
    kube.emit_event(vs, "WeightSet", "candidate weight 10%")
    events = kube.list_events(k8s_namespace, "ev")
    assert [(e["reason"], e["message"], e["involvedObject"]["kind"]) for e in events] == [
        ("WeightSet", "candidate weight 10%", "VirtualService")
    ]
