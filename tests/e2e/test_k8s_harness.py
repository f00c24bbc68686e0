"""The real Kubernetes control plane the e2e tests run on: RBAC enforced, real CRD schemas in force,
namespaces isolated per test. Uses the ``k8s_cluster`` / ``k8s_namespace`` fixtures (tests/k8s)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from kubernetes import client

from tests.k8s import crds, harness
from tests.k8s.fixtures import K8sCluster

pytestmark = pytest.mark.k8s

REQUIRED_KINDS = {
    "InferenceService": "serving.kserve.io",
    "InferenceGraph": "serving.kserve.io",
    "HTTPRoute": "gateway.networking.k8s.io",
    "VirtualService": "networking.istio.io",
    "DestinationRule": "networking.istio.io",
    "ServiceMonitor": "monitoring.coreos.com",
    "PodMonitor": "monitoring.coreos.com",
    "PrometheusRule": "monitoring.coreos.com",
    "TraefikService": "traefik.io",
    "IngressRoute": "traefik.io",
}


def _client_as(cluster: K8sCluster, *, token: str | None = None, user: str | None = None) -> client.ApiClient:
    """An ApiClient that authenticates with a bearer token, or as the admin impersonating ``user``."""
    if token is not None:
        cfg = client.Configuration(host=cluster.server)
        cfg.ssl_ca_cert = str(cluster.control_plane.pki / "ca.crt")
        cfg.api_key = {"authorization": token}
        cfg.api_key_prefix = {"authorization": "Bearer"}
        return client.ApiClient(cfg)
    api = cluster.control_plane.api_client()
    api.set_default_header("Impersonate-User", user or "")
    return api


def _status_of(call: Any, *args: Any, **kwargs: Any) -> int:
    try:
        call(*args, **kwargs)
    except client.ApiException as exc:
        return int(exc.status)
    return 200


# --- the API server and RBAC -------------------------------------------------------------------


def test_api_server_reports_the_pinned_version_and_is_ready(k8s_cluster: K8sCluster) -> None:
    with k8s_cluster.http() as http:
        assert http.get("/readyz").text == "ok"
        version = http.get("/version").json()
    assert version["gitVersion"] == "v1.34.4"
    assert k8s_cluster.server.startswith("https://127.0.0.1:")


def test_requests_without_a_client_certificate_are_refused(k8s_cluster: K8sCluster) -> None:
    import ssl

    import httpx

    ca = ssl.create_default_context(cafile=str(k8s_cluster.control_plane.pki / "ca.crt"))
    with httpx.Client(verify=ca, timeout=30) as anon:
        resp = anon.get(f"{k8s_cluster.server}/api/v1/namespaces")
    assert resp.status_code == 401


def test_service_account_token_is_limited_to_its_role(k8s_cluster: K8sCluster, k8s_namespace: str) -> None:
    core = client.CoreV1Api(k8s_cluster.api_client)
    rbac = client.RbacAuthorizationV1Api(k8s_cluster.api_client)
    ns = k8s_namespace
    core.create_namespaced_service_account(
        ns, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="reader"))
    )
    rbac.create_namespaced_role(
        ns,
        client.V1Role(
            metadata=client.V1ObjectMeta(name="configmap-reader"),
            rules=[client.V1PolicyRule(api_groups=[""], resources=["configmaps"], verbs=["get", "list"])],
        ),
    )
    rbac.create_namespaced_role_binding(
        ns,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="reader"),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name="configmap-reader"
            ),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name="reader", namespace=ns)],
        ),
    )
    token = core.create_namespaced_service_account_token(
        "reader",
        ns,
        client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[harness.SERVICE_ACCOUNT_ISSUER], expiration_seconds=600)
        ),
    ).status.token
    with _client_as(k8s_cluster, token=token) as api:
        sa_core = client.CoreV1Api(api)
        assert _status_of(sa_core.list_namespaced_config_map, ns) == 200
        assert _status_of(sa_core.list_namespaced_secret, ns) == 403
        assert _status_of(sa_core.list_namespaced_config_map, "default") == 403
        cm = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="x"), data={"k": "v"})
        assert _status_of(sa_core.create_namespaced_config_map, ns, cm) == 403
        review = client.AuthorizationV1Api(api).create_self_subject_access_review(
            client.V1SelfSubjectAccessReview(
                spec=client.V1SelfSubjectAccessReviewSpec(
                    resource_attributes=client.V1ResourceAttributes(
                        namespace=ns, verb="delete", resource="configmaps"
                    )
                )
            )
        )
        assert review.status.allowed is False
        who = client.AuthenticationV1Api(api).create_self_subject_review(client.V1SelfSubjectReview())
        assert who.status.user_info.username == f"system:serviceaccount:{ns}:reader"


def test_impersonated_user_without_bindings_is_refused(k8s_cluster: K8sCluster, k8s_namespace: str) -> None:
    with _client_as(k8s_cluster, user="someone-unprivileged") as api:
        core = client.CoreV1Api(api)
        assert _status_of(core.list_namespaced_config_map, k8s_namespace) == 403
        assert _status_of(core.list_namespace) == 403


def test_controller_manager_gives_new_namespaces_a_default_service_account(
    k8s_cluster: K8sCluster, k8s_namespace: str
) -> None:
    core = client.CoreV1Api(k8s_cluster.api_client)
    deadline = time.monotonic() + 60
    while _status_of(core.read_namespaced_service_account, "default", k8s_namespace) != 200:
        assert time.monotonic() < deadline, "the ServiceAccount controller did not create 'default'"
        time.sleep(0.5)


# --- namespaces --------------------------------------------------------------------------------

_seen_namespaces: list[str] = []


@pytest.mark.parametrize("attempt", [1, 2])
def test_each_test_gets_a_fresh_empty_namespace(
    k8s_cluster: K8sCluster, k8s_namespace: str, attempt: int
) -> None:
    core = client.CoreV1Api(k8s_cluster.api_client)
    assert k8s_namespace not in _seen_namespaces
    assert core.list_namespaced_config_map(k8s_namespace, label_selector="test=isolation").items == []
    # The same name in every run: this only succeeds if the namespace is really new.
    core.create_namespaced_config_map(
        k8s_namespace,
        client.V1ConfigMap(metadata=client.V1ObjectMeta(name="shared-name", labels={"test": "isolation"})),
    )
    for previous in _seen_namespaces:
        phase = _namespace_phase(core, previous)
        assert phase in ("Terminating", "gone"), f"namespace {previous} of an earlier test is still {phase}"
    _seen_namespaces.append(k8s_namespace)


def _namespace_phase(core: client.CoreV1Api, name: str) -> str:
    try:
        return str(core.read_namespace(name).status.phase)
    except client.ApiException as exc:
        if exc.status == 404:
            return "gone"
        raise


def test_deleted_namespace_and_its_objects_are_removed(k8s_cluster: K8sCluster) -> None:
    core = client.CoreV1Api(k8s_cluster.api_client)
    name = "t-delete-me"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    core.create_namespaced_config_map(name, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="leftover")))
    core.delete_namespace(name)
    deadline = time.monotonic() + 120
    while _namespace_phase(core, name) != "gone":
        assert time.monotonic() < deadline, "the namespace controller did not finish deleting the namespace"
        time.sleep(0.5)


# --- the real CRDs -----------------------------------------------------------------------------


def test_pinned_crds_are_installed_and_established(k8s_cluster: K8sCluster) -> None:
    pinned = {f"{s.module}@{s.version}" for s in crds.load_sources()}
    for kind, group in REQUIRED_KINDS.items():
        assert k8s_cluster.crd(kind, group).group == group
    ext = client.ApiextensionsV1Api(k8s_cluster.api_client)
    for crd in k8s_cluster.crds.values():
        obj = ext.read_custom_resource_definition(crd.name)
        assert obj.metadata.annotations["bento-rollout.dev/source"] in pinned
        conditions = {c.type: c.status for c in obj.status.conditions}
        assert conditions.get("Established") == "True", crd.name
    kserve = f"{crds.KSERVE_MODULE}@{crds.pinned(crds.KSERVE_MODULE)}"  # also the controller's
    assert k8s_cluster.crd("InferenceService").source == kserve
    assert {c.group for c in k8s_cluster.crds.values() if c.kind == "Gateway"} == {
        "gateway.networking.k8s.io",
        "networking.istio.io",
    }


def _contains(actual: Any, expected: Any) -> bool:
    """Whether ``actual`` holds everything in ``expected`` (the server may add defaults, not drop fields)."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and _contains(actual[k], v) for k, v in expected.items()
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(expected)
            and all(_contains(a, e) for a, e in zip(actual, expected, strict=True))
        )
    return bool(actual == expected)


def _meta(name: str) -> dict[str, Any]:
    return {"name": name}


# kind -> (a valid object's spec, a change that breaks the schema, words the server's message must contain)
CASES: dict[str, tuple[dict[str, Any], dict[str, Any], tuple[str, ...]]] = {
    "InferenceService": (
        {
            "predictor": {
                "canaryTrafficPercent": 10,
                "minReplicas": 1,
                "containers": [
                    {
                        "name": "kserve-container",
                        "image": "registry.example/iris:1",
                        "ports": [{"containerPort": 3000, "protocol": "TCP"}],
                    }
                ],
            }
        },
        {
            "predictor": {
                "canaryTrafficPercent": "ten",
                "containers": [{"name": "kserve-container", "image": "x"}],
            }
        },
        ("canaryTrafficPercent", "integer"),
    ),
    "InferenceGraph": (
        {"nodes": {"root": {"routerType": "Splitter", "steps": [{"serviceName": "iris", "weight": 100}]}}},
        {"nodes": {"root": {"routerType": "RoundRobin", "steps": [{"serviceName": "iris"}]}}},
        ("routerType", "Unsupported value"),
    ),
    "HTTPRoute": (
        {
            "parentRefs": [{"name": "gw"}],
            "rules": [
                {
                    "backendRefs": [
                        {"name": "stable", "port": 80, "weight": 90},
                        {"name": "canary", "port": 80, "weight": 10},
                    ],
                    "filters": [
                        {
                            "type": "RequestMirror",
                            "requestMirror": {"backendRef": {"name": "shadow", "port": 80}, "percent": 25},
                        }
                    ],
                }
            ],
        },
        {"rules": [{"backendRefs": [{"name": "stable", "port": 80, "weight": -5}]}]},
        ("weight", "greater than or equal to 0"),
    ),
    "VirtualService": (
        {
            "hosts": ["iris"],
            "http": [
                {
                    "match": [{"headers": {"x-variant": {"exact": "b"}}}],
                    "route": [{"destination": {"host": "iris", "subset": "candidate"}, "weight": 100}],
                },
                {
                    "route": [
                        {"destination": {"host": "iris", "subset": "stable"}, "weight": 80},
                        {"destination": {"host": "iris", "subset": "candidate"}, "weight": 20},
                    ],
                    "mirror": {"host": "iris-shadow"},
                    "mirrorPercentage": {"value": 10.0},
                },
            ],
        },
        {"hosts": ["iris"], "http": [{"route": [{"destination": {"host": "iris"}, "weight": "heavy"}]}]},
        ("weight", "integer"),
    ),
    "ServiceMonitor": (
        {"selector": {"matchLabels": {"app": "iris"}}, "endpoints": [{"port": "http", "interval": "15s"}]},
        {"selector": {}, "endpoints": [{"port": "http", "interval": "every now and then"}]},
        ("interval", "should match"),
    ),
    "PodMonitor": (
        {
            "selector": {"matchLabels": {"app": "iris"}},
            "podMetricsEndpoints": [{"port": "http", "path": "/metrics"}],
        },
        {"selector": {}, "podMetricsEndpoints": [{"port": "http", "interval": "soon"}]},
        ("interval", "should match"),
    ),
    "PrometheusRule": (
        {
            "groups": [
                {"name": "iris", "rules": [{"alert": "HighErrors", "expr": "vector(1) > 0", "for": "5m"}]}
            ]
        },
        {
            "groups": [
                {
                    "name": "iris",
                    "rules": [{"alert": "HighErrors", "expr": "vector(1)", "for": "five minutes"}],
                }
            ]
        },
        ("for", "should match"),
    ),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_crd_accepts_a_valid_object_and_rejects_an_invalid_one(
    k8s_cluster: K8sCluster, k8s_namespace: str, kind: str
) -> None:
    crd = k8s_cluster.crd(kind)
    custom = client.CustomObjectsApi(k8s_cluster.api_client)
    version = crd.versions[0]
    valid_spec, invalid_spec, words = CASES[kind]

    def create(name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": f"{crd.group}/{version}", "kind": kind, "metadata": _meta(name), "spec": spec}
        return custom.create_namespaced_custom_object(crd.group, version, k8s_namespace, crd.plural, body)

    created = create("good", valid_spec)
    assert created["metadata"]["uid"]
    stored = custom.get_namespaced_custom_object(crd.group, version, k8s_namespace, crd.plural, "good")
    assert _contains(stored["spec"], valid_spec), f"{kind}: stored {stored['spec']} lost part of {valid_spec}"

    with pytest.raises(client.ApiException) as err:
        create("bad", invalid_spec)
    assert err.value.status == 422, err.value.body
    message = json.loads(err.value.body)["message"]
    for word in words:
        assert word in message, f"{kind}: {word!r} not in the server's message {message!r}"
    assert (
        _status_of(custom.get_namespaced_custom_object, crd.group, version, k8s_namespace, crd.plural, "bad")
        == 404
    )


def test_unknown_fields_are_refused_by_strict_field_validation(
    k8s_cluster: K8sCluster, k8s_namespace: str
) -> None:
    crd = k8s_cluster.crd("InferenceService")
    version = crd.versions[0]
    body = {
        "apiVersion": f"{crd.group}/{version}",
        "kind": "InferenceService",
        "metadata": {"name": "typo"},
        "spec": {
            "predictor": {
                "canaryTrafficPercnt": 10,
                "containers": [{"name": "kserve-container", "image": "x"}],
            }
        },
    }
    custom = client.CustomObjectsApi(k8s_cluster.api_client)
    with pytest.raises(client.ApiException) as err:
        custom.create_namespaced_custom_object(
            crd.group, version, k8s_namespace, crd.plural, body, field_validation="Strict"
        )
    assert err.value.status in (400, 422)
    assert 'unknown field "spec.predictor.canaryTrafficPercnt"' in json.loads(err.value.body)["message"]
