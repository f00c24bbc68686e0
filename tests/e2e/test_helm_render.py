"""The chart rendered by Helm's own engine (the real ``helm`` binary): lint passes, every combination
of routing mode x monitoring x load test renders the objects that combination promises, pods run
restricted, and bad values fail before anything is sent to a cluster, with a message naming the
value. Installing into a real API server is tests/e2e/test_helm_install.py."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from rollout.k8s import generate
from tests.e2e.helmkit import CHART, ROOT, by_kind, pod_specs, run_helm, set_args, template

pytestmark = pytest.mark.k8s

MODES = ["kserve", "istio", "gateway-api", "traefik"]
STANDARD = ["istio", "gateway-api", "traefik"]  # two Standard-mode InferenceServices and a route
MATRIX = list(itertools.product(MODES, [True, False], [True, False]))
# the chart's defaults name no candidate (stable alone); the tests of a rollout name one
CANDIDATE = {"models.candidate": "iris:v2"}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("helm-home")


def test_helm_lint_passes_strict(home: Path) -> None:
    result = run_helm(["lint", "--strict", str(CHART)], home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("mode", MODES)
def test_helm_lint_passes_for_each_routing_mode(home: Path, mode: str) -> None:
    values = [
        "--set",
        f"routing.mode={mode}",
        "--set",
        "rollout.enabled=true",
        "--set",
        "models.candidate=iris:v2",
        "--set",
        "loadtest.enabled=true",
    ]
    if mode in ("gateway-api", "traefik"):
        values += ["--set", "loadtest.host=http://gateway.example"]
    result = run_helm(["lint", "--strict", str(CHART), *values], home)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("mode", "monitoring", "loadtest"), MATRIX, ids=[f"{m}-mon{int(a)}-load{int(b)}" for m, a, b in MATRIX]
)
def test_every_value_combination_renders_what_it_promises(
    home: Path, mode: str, monitoring: bool, loadtest: bool
) -> None:
    values: dict[str, Any] = {
        **CANDIDATE,
        "routing.mode": mode,
        "monitoring.enabled": monitoring,
        "loadtest.enabled": loadtest,
        "rollout.enabled": True,
        "routing.candidateWeight": 20,
    }
    if mode in ("gateway-api", "traefik"):
        values["loadtest.host"] = "http://inference-gateway.gateway-system"
    kinds = by_kind(template(home, values))

    isvcs = kinds["InferenceService"]
    assert len(isvcs) == (1 if mode == "kserve" else 2)
    assert ("VirtualService" in kinds) == (mode == "istio")
    assert ("HTTPRoute" in kinds) == (mode == "gateway-api")
    assert ("IngressRoute" in kinds) == ("TraefikService" in kinds) == (mode == "traefik")
    for kind in ("PodMonitor", "PrometheusRule"):
        assert (kind in kinds) == monitoring, kind
    dashboards = [c for c in kinds.get("ConfigMap", []) if c["metadata"]["name"].endswith("-dashboard")]
    assert bool(dashboards) == monitoring
    assert ("Job" in kinds) == loadtest
    for always in (
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Deployment",
        "NetworkPolicy",
        "PodDisruptionBudget",
    ):
        assert always in kinds, always
    assert kinds["ModelRollout"][0]["spec"]["router"]["provider"] == mode
    if mode == "gateway-api":  # the one cluster-wide right: get GatewayClasses (their supportedFeatures)
        (cluster_role,) = kinds["ClusterRole"]
        assert cluster_role["rules"] == [
            {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["gatewayclasses"], "verbs": ["get"]}
        ]
        assert len(kinds["ClusterRoleBinding"]) == 1
    else:
        assert "ClusterRole" not in kinds and "ClusterRoleBinding" not in kinds


def test_kserve_mode_sets_canary_traffic_percent_on_the_candidate_revision(home: Path) -> None:
    (isvc,) = by_kind(template(home, {**CANDIDATE, "routing.candidateWeight": 25}))["InferenceService"]
    predictor = isvc["spec"]["predictor"]
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
    assert predictor["canaryTrafficPercent"] == 25
    env = {e["name"]: e.get("value") for e in predictor["containers"][0]["env"]}
    assert env["BENTO_MODEL_TAG"] == "iris:v2"
    (stable_only,) = by_kind(template(home, {"models.candidate": ""}))["InferenceService"]
    assert "canaryTrafficPercent" not in stable_only["spec"]["predictor"]
    assert stable_only["spec"]["predictor"]["containers"][0]["env"][0]["value"] == "iris:v1"


@pytest.mark.parametrize(
    ("mode", "deployment"),
    [("kserve", "Knative"), ("istio", "Standard"), ("gateway-api", "Standard"), ("traefik", "Standard")],
)
def test_every_inference_service_names_its_mode_by_kserves_current_name(
    home: Path, mode: str, deployment: str
) -> None:
    """KServe v0.20.0 deprecates "Serverless" and "RawDeployment" (pkg/constants/constants.go);
    the chart writes "Knative" / "Standard", and nothing else anywhere it renders."""
    from rollout.routers.kserve import KNOWN_MODES, LEGACY_MODES

    docs = template(home, {**CANDIDATE, "routing.mode": mode, "rollout.enabled": True})
    isvcs = by_kind(docs)["InferenceService"]
    assert {i["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] for i in isvcs} == {deployment}
    assert deployment in KNOWN_MODES
    rendered = yaml.safe_dump_all(docs)
    assert not [old for old in LEGACY_MODES if old in rendered]


def test_istio_virtual_service_weights_mirror_and_header_match(home: Path) -> None:
    values = {
        **CANDIDATE,
        "routing.mode": "istio",
        "routing.candidateWeight": 30,
        "routing.mirror.enabled": True,
        "routing.mirror.percent": 40,
        "routing.headerMatch.enabled": True,
        "routing.istio.gateways": ["istio-system/ingressgateway"],
    }
    (vs,) = by_kind(template(home, values))["VirtualService"]
    match_route, primary = vs["spec"]["http"]
    assert match_route["match"] == [{"headers": {"x-model-version": {"exact": "candidate"}}}]
    assert (
        match_route["route"][0]["destination"]["host"] == "iris-candidate-predictor.models.svc.cluster.local"
    )
    weights = {r["destination"]["host"].split("-predictor")[0]: r["weight"] for r in primary["route"]}
    assert weights == {"iris-stable": 70, "iris-candidate": 30}
    assert primary["mirror"]["host"] == "iris-candidate-predictor.models.svc.cluster.local"
    assert primary["mirrorPercentage"] == {"value": 40.0}
    assert vs["spec"]["gateways"] == ["istio-system/ingressgateway"]


def test_gateway_api_route_weights_request_mirror_and_header_match(home: Path) -> None:
    values = {
        **CANDIDATE,
        "routing.mode": "gateway-api",
        "routing.candidateWeight": 10,
        "routing.mirror.enabled": True,
        "routing.mirror.percent": 50,
        "routing.headerMatch.enabled": True,
        "routing.hosts": ["iris.example.com"],
    }
    (route,) = by_kind(template(home, values))["HTTPRoute"]
    match_rule, split = route["spec"]["rules"]
    assert match_rule["matches"][0]["headers"] == [
        {"type": "Exact", "name": "x-model-version", "value": "candidate"}
    ]
    assert [(b["name"], b["weight"]) for b in split["backendRefs"]] == [
        ("iris-stable-predictor", 90),
        ("iris-candidate-predictor", 10),
    ]
    (mirror,) = split["filters"]
    assert mirror == {
        "type": "RequestMirror",
        "requestMirror": {"backendRef": {"name": "iris-candidate-predictor", "port": 80}, "percent": 50},
    }
    assert route["spec"]["hostnames"] == ["iris.example.com"]


def test_traefik_mode_routes_an_ingress_route_to_a_traefik_service_over_both_predictors(home: Path) -> None:
    """routing.mode traefik (Traefik's CRD provider): the IngressRoute sends every request on its
    entry points to the TraefikService the controller rewrites (routers/traefik.py reads it back)."""
    from rollout.routers.base import Backend, Routes, RouteTarget
    from rollout.routers.traefik import routes_from_traefik_service

    target = RouteTarget("iris", Backend("iris-stable-predictor", "iris:v1"),
                         Backend("iris-candidate-predictor", "iris:v2"))  # fmt: skip
    values = {**CANDIDATE, "routing.mode": "traefik", "routing.candidateWeight": 10, "rollout.enabled": True,
              "routing.hosts": ["iris.example.com", "iris.internal"]}  # fmt: skip
    kinds = by_kind(template(home, values))
    assert "HTTPRoute" not in kinds and "VirtualService" not in kinds
    (ingress,) = kinds["IngressRoute"]
    assert ingress["apiVersion"] == "traefik.io/v1alpha1" and ingress["spec"]["entryPoints"] == ["web"]
    (rule,) = ingress["spec"]["routes"]
    assert rule["match"] == "(Host(`iris.example.com`) || Host(`iris.internal`)) && PathPrefix(`/`)"
    assert rule["services"] == [{"kind": "TraefikService", "name": "iris"}]
    (split,) = kinds["TraefikService"]
    assert split["metadata"]["name"] == "iris" and routes_from_traefik_service(split, target) == Routes(
        candidate_weight=10
    )
    (rollout,) = kinds["ModelRollout"]
    assert rollout["spec"]["router"] == {"provider": "traefik", "name": "iris"}
    assert "ClusterRole" not in kinds  # nothing cluster-wide in traefik mode

    mirrored = by_kind(template(home, {**CANDIDATE, "routing.mode": "traefik", "routing.mirror.enabled": True,
                                       "routing.mirror.percent": 30}))["TraefikService"][0]  # fmt: skip
    assert routes_from_traefik_service(mirrored, target) == Routes(mirror_percent=30)
    stable_alone = {"weighted": {"services": [{"name": "iris-stable-predictor", "port": 80, "weight": 100}]}}
    assert by_kind(template(home, {"routing.mode": "traefik"}))["TraefikService"][0]["spec"] == stable_alone
    # a candidate at 0 % is not named yet: Traefik drops a TraefikService naming a Service KServe has
    # not made yet (the candidate's predictor, just after the upgrade that set models.candidate)
    at_zero = by_kind(template(home, {**CANDIDATE, "routing.mode": "traefik"}))["TraefikService"][0]
    assert at_zero["spec"] == stable_alone
    assert (
        "entryPoints"
        not in by_kind(template(home, {"routing.mode": "traefik", "routing.traefik.entryPoints": []}))[
            "IngressRoute"
        ][0]["spec"]
    )


@pytest.mark.parametrize("mode", MODES)
def test_every_pod_runs_restricted_with_oip_v2_probes(home: Path, mode: str) -> None:
    values = {"routing.mode": mode, "loadtest.enabled": True, "loadtest.host": "http://x.example"}
    docs = template(home, values)
    specs = [(d["kind"], spec) for d in docs for spec in pod_specs(d)]
    assert {k for k, _ in specs} == {"InferenceService", "Deployment", "Job"}
    for kind, spec in specs:
        for container in spec["containers"]:
            # what the container runs with: its own securityContext over the pod's
            sc = {**spec.get("securityContext", {}), **container["securityContext"]}
            assert sc["runAsNonRoot"] is True, kind
            # the images' own users: the Bento's and the controller's bentoml, Debian's redis
            uid = 999 if container["name"] == "redis" else 1034
            assert (sc["runAsUser"], sc["runAsGroup"]) == (uid, uid), kind
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, kind
            assert sc["allowPrivilegeEscalation"] is False, kind
            assert sc["readOnlyRootFilesystem"] is True, kind
            assert sc["capabilities"] == {"drop": ["ALL"]}, kind
            assert container["resources"]["limits"], kind
    for isvc in by_kind(docs)["InferenceService"]:
        (container,) = isvc["spec"]["predictor"]["containers"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
        assert container["ports"][0]["containerPort"] == 3000
        # `bentoml serve` keeps idle connections longer than the proxies in front pool them
        assert container["args"] == ["--port", "3000", "--timeout-keep-alive", "75"]


def test_the_bento_listens_on_the_port_its_probes_and_container_port_say(home: Path) -> None:
    """service.port other than 3000: the containerPort and probes moved, the server stayed on 3000
    (the args never passed the port), so the pods never became Ready."""
    for mode in ("kserve", "istio"):
        for isvc in by_kind(template(home, {"routing.mode": mode, "service.port": 8080}))["InferenceService"]:
            (container,) = isvc["spec"]["predictor"]["containers"]
            args = container["args"]
            assert args[args.index("--port") + 1] == "8080", args
            assert container["ports"][0]["containerPort"] == 8080
            assert container["readinessProbe"]["httpGet"]["port"] == 8080


# What Knative v0.48.1's webhook admits with its default features (knative.dev/serving
# pkg/apis/serving/fieldmask.go: PodSpecMask, ContainerMask, SecurityContextMask, VolumeSourceMask;
# a field outside them is refused, "must not set the field(s)"). KServe copies the predictor's pod
# fields into the Knative Service as they are (reconcilers/knative/ksvc_reconciler.go) and keeps
# its own (ComponentExtensionSpec) out of it.
KSERVE_COMPONENT_FIELDS = {"minReplicas", "maxReplicas", "labels", "annotations", "canaryTrafficPercent"}
KNATIVE_POD_FIELDS = {"serviceAccountName", "containers", "volumes", "imagePullSecrets", "enableServiceLinks",
                      "automountServiceAccountToken"}  # fmt: skip
KNATIVE_CONTAINER_FIELDS = {
    "name", "args", "command", "env", "workingDir", "envFrom", "image", "imagePullPolicy", "livenessProbe",
    "ports", "readinessProbe", "resources", "securityContext", "startupProbe", "terminationMessagePath",
    "terminationMessagePolicy", "volumeMounts",
}  # fmt: skip
KNATIVE_CONTAINER_SECURITY_FIELDS = {"capabilities", "readOnlyRootFilesystem", "runAsUser", "runAsGroup",
                                     "runAsNonRoot", "allowPrivilegeEscalation", "seccompProfile"}  # fmt: skip


def test_the_kserve_mode_predictor_is_one_knatives_default_features_admit(home: Path) -> None:
    """The pod-level securityContext (runAsUser, runAsGroup, fsGroup, seccompProfile) is refused
    by Knative unless kubernetes.podspec-securitycontext is on: with it the Knative Service was
    never created. The user, group, non-root and seccomp now live on the container, which Knative
    keeps (fsGroup is not needed: the volumes are emptyDirs)."""
    (isvc,) = by_kind(template(home, {"routing.mode": "kserve"}))["InferenceService"]
    predictor = isvc["spec"]["predictor"]
    assert set(predictor) - KSERVE_COMPONENT_FIELDS <= KNATIVE_POD_FIELDS
    assert "securityContext" not in predictor
    assert predictor["automountServiceAccountToken"] is False  # Knative admits only false
    assert all(set(v) == {"name", "emptyDir"} for v in predictor["volumes"])  # emptyDir: on by default
    (container,) = predictor["containers"]
    assert set(container) <= KNATIVE_CONTAINER_FIELDS
    sc = container["securityContext"]
    assert set(sc) <= KNATIVE_CONTAINER_SECURITY_FIELDS
    assert set(sc["capabilities"]) == {"drop"}  # adding one needs another feature flag
    assert (sc["runAsUser"], sc["runAsGroup"], sc["runAsNonRoot"]) == (1034, 1034, True)


def test_the_kustomize_base_inference_service_is_one_knative_admits_under_current_names() -> None:
    """k8s/base (kubectl apply -k) had the chart's two old faults: the deprecated Serverless name
    and a pod-level securityContext, with which the Knative Service was never created."""
    isvc = yaml.safe_load((ROOT / "k8s" / "base" / "inferenceservice.yaml").read_text())
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
    predictor = isvc["spec"]["predictor"]
    assert set(predictor) - KSERVE_COMPONENT_FIELDS <= KNATIVE_POD_FIELDS
    (container,) = predictor["containers"]
    assert set(container) <= KNATIVE_CONTAINER_FIELDS
    sc = container["securityContext"]
    assert set(sc) <= KNATIVE_CONTAINER_SECURITY_FIELDS
    assert (sc["runAsUser"], sc["runAsGroup"], sc["runAsNonRoot"]) == (1034, 1034, True)


@pytest.mark.parametrize("mode", STANDARD)
def test_standard_mode_predictors_keep_the_pod_security_context_with_fs_group(home: Path, mode: str) -> None:
    for isvc in by_kind(template(home, {"routing.mode": mode, "securityContext.fsGroup": 2000}))[
        "InferenceService"
    ]:
        assert isvc["spec"]["predictor"]["securityContext"]["fsGroup"] == 2000


@pytest.mark.parametrize("mode", STANDARD)
def test_a_standard_mode_pod_told_to_stop_keeps_serving_while_its_endpoints_drop_it(
    home: Path, mode: str
) -> None:
    """A rolling update (the hand-off) deletes the old pod; kube-proxy and the gateway drop it only
    after the EndpointSlice update reaches them. The preStop sleep (probes.drainSeconds) keeps its
    server answering meanwhile, inside the grace period; 0 turns it off."""
    for isvc in by_kind(template(home, {"routing.mode": mode, "models.candidate": "iris:v2"}))[
        "InferenceService"
    ]:
        predictor = isvc["spec"]["predictor"]
        (container,) = predictor["containers"]
        assert container["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
        assert predictor.get("terminationGracePeriodSeconds", 30) > 5
    for isvc in by_kind(template(home, {"routing.mode": mode, "probes.drainSeconds": 0}))["InferenceService"]:
        assert "lifecycle" not in isvc["spec"]["predictor"]["containers"][0]


def test_the_kserve_mode_pod_leaves_draining_to_the_queue_proxy(home: Path) -> None:
    (isvc,) = by_kind(template(home, {"routing.mode": "kserve"}))["InferenceService"]
    assert "lifecycle" not in isvc["spec"]["predictor"]["containers"][0]


def controller_deployment(kinds: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    (deploy,) = [d for d in kinds["Deployment"] if d["metadata"]["name"] == "br-bento-rollout-controller"]
    return deploy


def test_controller_runs_rollout_controller_with_leader_election(home: Path) -> None:
    deploy = controller_deployment(by_kind(template(home)))
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["rollout", "controller"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["ROLLOUT_LEADER_ELECTION"] == "true"
    assert env["ROLLOUT_WATCH_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert deploy["spec"]["replicas"] == 2


def test_the_controller_fetches_the_charts_prometheus_and_the_listed_addresses_only(home: Path) -> None:
    """ROLLOUT_ALLOWED_METRICS_ADDRESSES: controller.prometheusUrl, then allowedMetricsAddresses;
    the chart's own ModelRollout names an allowed address, and any other is refused."""
    from rollout.addresses import AddressPolicy, split_entries
    from rollout.errors import MetricsAddressRefusedError

    def allowed(values: dict[str, Any]) -> tuple[AddressPolicy, dict[str, list[dict[str, Any]]]]:
        kinds = by_kind(template(home, {**CANDIDATE, "rollout.enabled": True, **values}))
        (container,) = controller_deployment(kinds)["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        return AddressPolicy(
            split_entries([env["ROLLOUT_ALLOWED_METRICS_ADDRESSES"]]), lambda h, p: ()
        ), kinds

    policy, kinds = allowed({})
    assert policy.describe() == "http://prometheus-operated.monitoring.svc:9090"
    policy.check(kinds["ModelRollout"][0]["spec"]["metricsAddress"])
    with pytest.raises(MetricsAddressRefusedError):
        policy.check("http://prometheus-operated.monitoring.svc:9091")
    url = "https://prom.example.com/tenant"
    policy, _ = allowed(
        {
            "controller.allowedMetricsAddresses": [
                "prom-b:9090",
                url,
                "http://prometheus-operated.monitoring.svc:9090",
            ]
        }
    )
    assert policy.describe() == f"http://prometheus-operated.monitoring.svc:9090, prom-b:9090, {url}"
    policy.check("http://prom-b:9090")


def test_controller_probes_point_at_the_exporters_real_paths_on_its_metrics_port(home: Path) -> None:
    """Both probes hit the rollout_* metrics server (rollout/exporter.py), which a standby replica
    serves too (kopf's own /healthz opens only after the Lease is held); tests/unit/
    test_exporter_probes.py checks the server answers these very paths."""
    from rollout.exporter import HEALTH_PATH, READY_PATH

    deploy = controller_deployment(by_kind(template(home, {"controller.metricsPort": 9333})))
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert ports["metrics"] == int(env["ROLLOUT_METRICS_PORT"]) == 9333
    assert env["ROLLOUT_METRICS_HOST"] == "0.0.0.0"  # the kubelet probes the pod IP
    ready, live = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
    assert (ready["path"], live["path"]) == (READY_PATH, HEALTH_PATH)
    assert ready["port"] == live["port"] == "metrics"
    assert container["livenessProbe"]["failureThreshold"] * container["livenessProbe"]["periodSeconds"] >= 60


def role_rules(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    (role,) = by_kind(docs)["Role"]
    return {f"{r['resources'][0]}.{r['apiGroups'][0]}".rstrip("."): r for r in role["rules"]}


@pytest.mark.parametrize("mode", MODES)
def test_the_controller_role_names_every_object_whose_name_the_chart_knows(home: Path, mode: str) -> None:
    docs = template(home, {**CANDIDATE, "routing.mode": mode, "rollout.enabled": True})
    rules = role_rules(docs)
    isvc = rules["inferenceservices.serving.kserve.io"]
    assert isvc["resourceNames"] == (["iris"] if mode == "kserve" else ["iris-stable", "iris-candidate"])
    assert isvc["verbs"] == ["get", "patch", "update"]
    route = {"kserve": None, "istio": "virtualservices.networking.istio.io",
             "gateway-api": "httproutes.gateway.networking.k8s.io",
             "traefik": "traefikservices.traefik.io"}[mode]  # fmt: skip
    routes = {
        k
        for k in rules
        if k.startswith(("virtualservices", "httproutes", "traefikservices", "ingressroutes"))
    }
    assert routes == ({route} if route else set())
    if route:
        assert rules[route]["resourceNames"] == ["iris"] and rules[route]["verbs"] == ["get", "update"]
    (lease,) = by_kind(docs)["Lease"]
    assert rules["leases.coordination.k8s.io"]["resourceNames"] == [lease["metadata"]["name"]]
    assert rules["leases.coordination.k8s.io"]["verbs"] == ["get", "update"]
    # create only where a name cannot be known; no delete, no wildcard anywhere
    every = [(k, v) for k, r in rules.items() for v in r["verbs"]]
    assert [k for k, v in every if v == "create"] == ["events"]
    assert not [k for k, v in every if v in ("delete", "deletecollection", "*")]
    assert all("*" not in r["resources"] and "*" not in r["apiGroups"] for r in rules.values())
    unnamed = sorted(k for k, r in rules.items() if "resourceNames" not in r)
    pods = [] if mode == "kserve" else ["endpointslices.discovery.k8s.io"]
    assert unnamed == sorted(
        ["events", "modelrollouts.bento-rollout.io", "modelrollouts/status.bento-rollout.io", *pods]
    )
    # istio / gateway-api: what the pods serve (rollout/controller/served.py) - the predictor
    # Services' EndpointSlices, listed only, and stable's predictor Deployment by name, get only
    if mode == "kserve":
        assert "deployments.apps" not in rules
    else:
        assert rules["endpointslices.discovery.k8s.io"]["verbs"] == ["list"]
        assert rules["deployments.apps"]["resourceNames"] == [
            "iris-stable-predictor",
            "iris-candidate-predictor",
        ]
        assert rules["deployments.apps"]["verbs"] == ["get"]


def test_the_kustomize_base_role_grants_what_the_charts_does(home: Path) -> None:
    """k8s/base/controller-rbac.yaml: the same verbs per resource as the chart, the same kinds of
    names (every routing mode's), its own Lease."""
    base_docs = list(
        yaml.safe_load_all((CHART.parents[1] / "k8s" / "base" / "controller-rbac.yaml").read_text())
    )
    base = role_rules(base_docs)
    charts: dict[str, dict[str, Any]] = {}
    for mode in MODES:
        charts.update(role_rules(template(home, {"routing.mode": mode})))
    assert {k: r["verbs"] for k, r in base.items()} == {k: r["verbs"] for k, r in charts.items()}
    assert set(base) == set(charts)
    assert base["inferenceservices.serving.kserve.io"]["resourceNames"] == [
        "iris",
        "iris-stable",
        "iris-candidate",
    ]
    (lease,) = by_kind(base_docs)["Lease"]
    assert base["leases.coordination.k8s.io"]["resourceNames"] == [lease["metadata"]["name"]]


def test_no_lease_without_leader_election(home: Path) -> None:
    docs = template(home, {"controller.replicas": 1, "controller.leaderElection.enabled": False})
    assert "Lease" not in by_kind(docs)
    assert "leases.coordination.k8s.io" not in role_rules(docs)


def test_every_namespaced_object_names_the_release_namespace(home: Path) -> None:
    """`helm template | kubectl apply` lands in the release namespace, not the context's."""
    docs = template(home, {**CANDIDATE, "rollout.enabled": True, "loadtest.enabled": True})
    assert {d["kind"]: d["metadata"].get("namespace") for d in docs} == {d["kind"]: "models" for d in docs}


def test_chart_ships_the_generated_rules_dashboard_and_crd(home: Path) -> None:
    kinds = by_kind(template(home, {}, "--include-crds"))
    (rule,) = kinds["PrometheusRule"]
    committed = yaml.safe_load(generate.RULES_FILE.read_text(encoding="utf-8"))
    assert rule["spec"] == committed
    (dash,) = [c for c in kinds["ConfigMap"] if c["metadata"]["name"].endswith("-dashboard")]
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dash["data"]["bento-rollout.json"]) == json.loads(generate.DASHBOARD_FILE.read_text())
    (crd,) = kinds["CustomResourceDefinition"]
    assert crd == yaml.safe_load(generate.CRD_FILE.read_text(encoding="utf-8"))


def test_loadtest_job_mounts_the_locustfile_and_is_bounded(home: Path) -> None:
    kinds = by_kind(template(home, {"loadtest.enabled": True, "loadtest.runTime": "90s"}))
    (job,) = kinds["Job"]
    (cm,) = [c for c in kinds["ConfigMap"] if c["metadata"]["name"].endswith("-locust")]
    assert "class" in cm["data"]["locustfile.py"] and "HttpUser" in cm["data"]["locustfile.py"]
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "--headless" in command and "--run-time=90s" in command
    assert "--host=http://iris.models.svc.cluster.local" in command
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["activeDeadlineSeconds"] == 900


PIN_A, PIN_B = "sha256:" + "a" * 64, "sha256:" + "b" * 64


def model_env(isvc: dict[str, Any]) -> dict[str, str]:
    (container,) = isvc["spec"]["predictor"]["containers"]
    return {e["name"]: e.get("value") for e in container["env"]}


@pytest.mark.parametrize("mode", MODES)
def test_pinned_digests_reach_each_predictor_and_the_model_rollout(home: Path, mode: str) -> None:
    values = {
        **CANDIDATE,
        "routing.mode": mode,
        "rollout.enabled": True,
        "models.stableDigest": PIN_A,
        "models.candidateDigest": PIN_B,
    }
    kinds = by_kind(template(home, values))
    served = {
        model_env(i)["BENTO_MODEL_TAG"]: model_env(i).get("BENTO_MODEL_DIGEST")
        for i in kinds["InferenceService"]
    }
    # kserve: one object whose latest revision is the candidate (stable's revision keeps its own env)
    assert served == ({"iris:v2": PIN_B} if mode == "kserve" else {"iris:v1": PIN_A, "iris:v2": PIN_B})
    (rollout,) = kinds["ModelRollout"]
    assert rollout["spec"]["stable"] == {"model": "iris:v1", "digest": PIN_A}
    assert rollout["spec"]["candidate"] == {"model": "iris:v2", "digest": PIN_B}
    # the rendered ModelRollout is one the CLI and the controller accept
    from rollout.spec import RolloutSpec

    assert RolloutSpec.model_validate(rollout["spec"]).candidate.digest == PIN_B


def test_no_pin_sets_no_digest(home: Path) -> None:
    kinds = by_kind(template(home, {**CANDIDATE, "routing.mode": "istio", "rollout.enabled": True}))
    assert all("BENTO_MODEL_DIGEST" not in model_env(i) for i in kinds["InferenceService"])
    (rollout,) = kinds["ModelRollout"]
    assert "digest" not in rollout["spec"]["stable"] and "digest" not in rollout["spec"]["candidate"]


BAD_VALUES = [
    ({"routing.mode": "nginx"}, ["routing", "mode"]),
    ({"routing.candidateWeight": 150}, ["candidateWeight", "100"]),
    ({"models.stable": "not a tag!"}, ["models", "stable"]),
    ({"service.name": "Iris_Service"}, ["service", "name"]),
    ({"routing.wieght": 10}, ["wieght"]),
    ({"rollout.strategy": {"canary": {"stepWeight": 500}}}, ["stepWeight"]),
    ({"rollout.analysis": {"interval": "soon"}}, ["interval"]),
    ({"controller.image.tag": ""}, ["controller", "tag"]),
    ({"routing.mirror.enabled": True}, ["routing.mirror needs routing.mode istio, gateway-api or traefik"]),
    ({"models.candidate": "", "routing.candidateWeight": 10}, ["models.candidate is empty"]),
    ({"controller.leaderElection.enabled": False}, ["needs controller.leaderElection.enabled=true"]),
    (
        {"monitoring.kind": "ServiceMonitor"},
        ["ServiceMonitor needs routing.mode istio, gateway-api or traefik"],
    ),
    (
        {"routing.mode": "traefik", **CANDIDATE, "routing.headerMatch.enabled": True},
        ["routing.headerMatch needs routing.mode istio or gateway-api", "cannot route by header"],
    ),
    (
        {
            "routing.mode": "traefik",
            **CANDIDATE,
            "routing.mirror.enabled": True,
            "routing.candidateWeight": 10,
        },
        ["weighted or mirroring, not both"],
    ),
    ({"routing.mode": "traefik", "loadtest.enabled": True}, ["loadtest in traefik mode: set loadtest.host"]),
    ({"loadtest.enabled": True, "loadtest.locustfile": "missing.py"}, ['"missing.py" is not in loadtests/']),
    ({"models.stableDigest": "sha256:abc"}, ["models/stableDigest"]),
    ({"models.candidateDigest": "a" * 64}, ["models/candidateDigest"]),
    ({"models.candidate": "", "models.candidateDigest": PIN_B}, ["models.candidateDigest pins a candidate"]),
    ({"controller.prometheusUrl": "file:///etc/passwd"}, ["controller/prometheusUrl"]),
    ({"controller.prometheusUrl": "http://u:pw@prometheus:9090"}, ["controller/prometheusUrl"]),
    ({"controller.allowedMetricsAddresses": ["http://u:pw@x"]}, ["controller/allowedMetricsAddresses/0"]),
    ({"controller.allowedMetricsAddresses": "prom:9090"}, ["controller/allowedMetricsAddresses"]),
]


@pytest.mark.parametrize(("values", "words"), BAD_VALUES, ids=[next(iter(v)) for v, _ in BAD_VALUES])
def test_bad_values_fail_with_a_message_naming_the_problem(
    home: Path, values: dict[str, Any], words: list[str]
) -> None:
    result = run_helm(["template", "br", str(CHART), *set_args(values)], home)
    assert result.returncode != 0, f"{values} rendered but should have failed"
    for word in words:
        assert word in result.stderr, f"{word!r} not in helm's error:\n{result.stderr}"


def test_service_monitor_selects_both_predictor_services(home: Path) -> None:
    kinds = by_kind(
        template(home, {**CANDIDATE, "routing.mode": "istio", "monitoring.kind": "ServiceMonitor"})
    )
    (monitor,) = kinds["ServiceMonitor"]
    (expr,) = monitor["spec"]["selector"]["matchExpressions"]
    assert expr["key"] == "serving.kserve.io/inferenceservice"
    assert expr["values"] == ["iris-stable", "iris-candidate"]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert sorted(p["metadata"]["name"] for p in kinds["PodMonitor"]) == [
        "br-bento-rollout-controller",
        "br-bento-rollout-join-exporter",
    ]


# The ports of the pods KServe v0.20.0 creates for the chart's predictor, per deployment mode, and
# who connects to them (README "NetworkPolicy"). Standard: the chart's container as it is (KServe
# reconcilers/service/service_reconciler.go forwards the predictor Service's port 80 to it).
# Knative: the queue-proxy sidecar's ports (knative.dev/serving v0.48.1 pkg/networking/constants.go:
# BackendHTTPPort 8012, BackendHTTPSPort 8112, AutoscalingQueueMetricsPort 9090) and the user
# container's, which Knative renames "user-port" (pkg/reconciler/revision/resources/deploy.go).
POD_PORTS = {
    "kserve": {"queue-port": 8012, "https-port": 8112, "http-autometric": 9090, "user-port": 3000},
    "istio": {"http1": 3000},
    "gateway-api": {"http1": 3000},
    "traefik": {"http1": 3000},
}


@pytest.mark.parametrize("mode", MODES)
def test_the_model_network_policy_admits_every_port_the_modes_pods_serve_and_no_other(
    home: Path, mode: str
) -> None:
    """Knative mode: requests reach the queue-proxy (8012, or 8112 with internal TLS), the
    autoscaler scrapes 9090, Prometheus the Bento's /metrics; admitting the Bento port alone
    (as before) refused every request the gateway or the activator sent."""
    kinds = by_kind(template(home, {"routing.mode": mode}))
    (policy,) = [p for p in kinds["NetworkPolicy"] if p["metadata"]["name"].endswith("-model")]
    (rule,) = policy["spec"]["ingress"]
    assert {p["port"] for p in rule["ports"]} == set(POD_PORTS[mode].values())
    assert {p["protocol"] for p in rule["ports"]} == {"TCP"}
    namespaces = rule["from"][1]["namespaceSelector"]["matchExpressions"][0]["values"]
    assert namespaces == ["istio-system", "knative-serving", "monitoring"]


@pytest.mark.parametrize("mode", STANDARD)
def test_the_model_network_policy_lets_the_controller_ask_the_pods_what_they_serve(
    home: Path, mode: str
) -> None:
    """The controller asks every Ready model pod GET /v2/models/<name> on the Bento port before
    traffic moves to the candidate and before the hand-off completes (rollout/controller/served.py):
    the model pods' policy admits the controller's pods there."""
    kinds = by_kind(template(home, {"routing.mode": mode, "networkPolicy.enabled": True}))
    (policy,) = [p for p in kinds["NetworkPolicy"] if p["metadata"]["name"].endswith("-model")]
    (deployment,) = [d for d in kinds["Deployment"] if d["metadata"]["name"].endswith("-controller")]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (rule,) = policy["spec"]["ingress"]
    admitted = [
        peer
        for peer in rule["from"]
        if "podSelector" in peer
        and labels.items() >= peer["podSelector"]["matchLabels"].items()
        and "namespaceSelector" not in peer
    ]
    assert admitted, (labels, rule["from"])
    assert {"port": 3000, "protocol": "TCP"} in rule["ports"]


@pytest.mark.parametrize("mode", MODES)
def test_the_pod_monitor_scrapes_the_bento_port_by_the_name_it_has_on_the_pod(home: Path, mode: str) -> None:
    """Knative renames the container's port "user-port": a PodMonitor naming "http1" there found
    no endpoint at all, so nothing of the model pods was scraped in kserve routing mode."""
    kinds = by_kind(template(home, {"routing.mode": mode}))
    (monitor,) = [m for m in kinds["PodMonitor"] if m["metadata"]["name"].endswith("-model")]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert POD_PORTS[mode][endpoint["port"]] == 3000 and endpoint["path"] == "/metrics"
    if mode != "kserve":  # Standard: KServe keeps the chart's container port, name and all
        for isvc in kinds["InferenceService"]:
            (container,) = isvc["spec"]["predictor"]["containers"]
            assert container["ports"] == [
                {"name": endpoint["port"], "containerPort": 3000, "protocol": "TCP"}
            ]


@pytest.mark.parametrize("port", [8012, 9090, 8112])
def test_a_bento_port_the_queue_proxy_takes_is_refused_in_kserve_mode(home: Path, port: int) -> None:
    result = run_helm(["template", "br", str(CHART), *set_args({"service.port": port})], home)
    assert result.returncode != 0
    assert f"service.port {port} is a port Knative's queue-proxy takes" in result.stderr
    kinds = by_kind(template(home, {"service.port": port, "routing.mode": "istio"}))
    assert (
        kinds["InferenceService"][0]["spec"]["predictor"]["containers"][0]["ports"][0]["containerPort"]
        == port
    )


def test_read_only_root_filesystem_leaves_bentoml_its_writable_dirs(home: Path) -> None:
    """The Bento image (BENTOML_HOME=/home/bentoml/) writes metrics files and temp files only there."""
    (isvc,) = by_kind(template(home))["InferenceService"]
    predictor = isvc["spec"]["predictor"]
    mounts = {m["mountPath"] for m in predictor["containers"][0]["volumeMounts"]}
    assert mounts == {"/tmp", "/home/bentoml/prometheus_multiproc_dir"}
    assert all("emptyDir" in v for v in predictor["volumes"])
    env = {e["name"] for e in predictor["containers"][0]["env"]}
    assert "BENTOML_HOME" not in env, "the image's BENTOML_HOME locates the packed bento; keep it"


def container_env(isvc: dict[str, Any]) -> list[tuple[str, str]]:
    (container,) = isvc["spec"]["predictor"]["containers"]
    return [(e["name"], e.get("value", e.get("valueFrom"))) for e in container["env"]]


DRILL = [{"name": "BENTO_FAULT_ERROR_RATE", "value": "0.3"}, {"name": "BENTO_WORKERS", "value": "2"}]
STABLE_ENV = [{"name": "BENTO_WORKERS", "value": "4"}]


@pytest.mark.parametrize("mode", STANDARD)
def test_each_version_gets_its_own_extra_env_after_the_charts(home: Path, mode: str) -> None:
    """models.stableEnv / models.candidateEnv: a rollback drill (BENTO_FAULT_ERROR_RATE on the
    candidate only), workers per version; rendered after the chart's own variables."""
    values = {"routing.mode": mode, "models.candidate": "iris:v2", "models.stableEnv": STABLE_ENV,
              "models.candidateEnv": DRILL}  # fmt: skip
    isvcs = {
        i["metadata"]["name"]: container_env(i) for i in by_kind(template(home, values))["InferenceService"]
    }
    stable, candidate = isvcs["iris-stable"], isvcs["iris-candidate"]
    assert stable[0] == ("BENTO_MODEL_TAG", "iris:v1") and candidate[0] == ("BENTO_MODEL_TAG", "iris:v2")
    assert stable[-1:] == [("BENTO_WORKERS", "4")]
    assert candidate[-2:] == [("BENTO_FAULT_ERROR_RATE", "0.3"), ("BENTO_WORKERS", "2")]
    assert "BENTO_FAULT_ERROR_RATE" not in dict(stable)


def test_kserve_mode_serves_the_env_of_the_version_its_latest_revision_runs(home: Path) -> None:
    """One InferenceService: its predictor is the candidate's while a candidate is set (env
    included), else the stable's."""
    values = {"models.stableEnv": STABLE_ENV, "models.candidateEnv": DRILL}
    (isvc,) = by_kind(template(home, {**values, "models.candidate": "iris:v2"}))["InferenceService"]
    env = container_env(isvc)
    assert env[0] == ("BENTO_MODEL_TAG", "iris:v2") and env[-2:] == [(d["name"], d["value"]) for d in DRILL]
    assert ("BENTO_WORKERS", "4") not in env
    (isvc,) = by_kind(template(home, {**values, "models.candidate": ""}))["InferenceService"]
    env = container_env(isvc)
    assert env[0] == ("BENTO_MODEL_TAG", "iris:v1") and env[-1] == ("BENTO_WORKERS", "4")
    assert "BENTO_FAULT_ERROR_RATE" not in dict(env)


def test_no_extra_env_renders_the_charts_own_only(home: Path) -> None:
    for isvc in by_kind(template(home, {"routing.mode": "istio", "models.candidate": "iris:v2"}))[
        "InferenceService"
    ]:
        assert [n for n, _ in container_env(isvc)] == [
            "BENTO_MODEL_TAG", "TMPDIR", "XDG_CACHE_HOME",
            "BENTO_JOIN_STORE", "BENTO_JOIN_PASSWORD", "BENTO_FEEDBACK_TOKEN", "BENTO_JOIN_WINDOW_SECONDS",
        ]  # fmt: skip


BAD_ENV = [
    (
        {"models.candidateEnv": [{"name": "BENTO_MODEL_TAG", "value": "iris:v9"}]},
        ["models.candidateEnv sets BENTO_MODEL_TAG, which the chart sets itself", "models.candidate"],
    ),
    (
        {"models.stableEnv": [{"name": "BENTO_MODEL_DIGEST", "value": PIN_A}]},
        ["models.stableEnv sets BENTO_MODEL_DIGEST", "models.stableDigest"],
    ),
    ({"models.stableEnv": [{"name": "TMPDIR", "value": "/var"}]}, ["models.stableEnv sets TMPDIR"]),
    (
        {"models.candidateEnv": [{"name": "BENTO_SUPERVISOR_PID", "value": "1"}]},
        ["models.candidateEnv sets BENTO_SUPERVISOR_PID"],
    ),
    ({"models.stableEnv": [{"name": "BAD NAME", "value": "1"}]}, ["models/stableEnv/0/name"]),
    ({"models.stableEnv": [{"name": "BENTO_WORKERS"}]}, ["models/stableEnv/0", "value"]),
    ({"models.candidateEnv": [{"name": "X", "value": 1}]}, ["models/candidateEnv/0/value"]),
    (
        {"models.candidate": "iris:v2", "models.candidateEnv": [{"name": "X", "value": "1"}] * 2},
        ["models.candidateEnv names X twice"],
    ),
]


@pytest.mark.parametrize(("values", "words"), BAD_ENV, ids=[str(i) for i in range(len(BAD_ENV))])
def test_extra_env_may_not_replace_the_charts_own_variables(
    home: Path, values: dict[str, Any], words: list[str]
) -> None:
    result = run_helm(["template", "br", str(CHART), *set_args(values)], home)
    assert result.returncode != 0, f"{values} rendered but should have failed"
    for word in words:
        assert word in result.stderr, f"{word!r} not in helm's error:\n{result.stderr}"


def served_tag(isvc: dict[str, Any]) -> str:
    return dict(container_env(isvc))["BENTO_MODEL_TAG"]


@pytest.mark.parametrize("mode", MODES)
def test_the_defaults_serve_stable_alone(home: Path, mode: str) -> None:
    """Chart defaults (kserve): one InferenceService whose only revision ran the candidate iris:v2 -
    all traffic, as KServe has no previous revision - while the chart's ModelRollout said stable
    is iris:v1. Now the defaults name no candidate: every mode serves stable and nothing else."""
    values = {"routing.mode": mode}
    if mode in ("gateway-api", "traefik"):
        values["loadtest.host"] = "http://gw.example"
    kinds = by_kind(template(home, values))
    isvcs = kinds["InferenceService"]
    assert [served_tag(i) for i in isvcs] == ["iris:v1"]
    assert "canaryTrafficPercent" not in isvcs[0]["spec"]["predictor"]
    assert not [a for a in isvcs[0]["metadata"]["annotations"] if "candidate" in a]
    assert "ModelRollout" not in kinds
    routes = kinds.get("VirtualService", []) + kinds.get("HTTPRoute", []) + kinds.get("TraefikService", [])
    assert "iris-candidate" not in yaml.safe_dump(routes)


def test_kserve_mode_inference_service_and_model_rollout_agree_on_stable_and_candidate(home: Path) -> None:
    values = {"models.candidate": "iris:v2", "routing.candidateWeight": 10, "rollout.enabled": True}
    kinds = by_kind(template(home, values))
    (isvc,) = kinds["InferenceService"]
    (rollout,) = kinds["ModelRollout"]
    notes = isvc["metadata"]["annotations"]
    # the latest revision (the candidate's) takes canaryTrafficPercent; the previous one is stable
    assert (
        served_tag(isvc) == notes["bento-rollout.io/candidate-model"] == rollout["spec"]["candidate"]["model"]
    )
    assert notes["bento-rollout.io/stable-model"] == rollout["spec"]["stable"]["model"] == "iris:v1"
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert rollout["spec"]["router"] == {"provider": "kserve", "name": isvc["metadata"]["name"]}


def cluster_host(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[0].split(":", 1)[0]


def locust_host(kinds: dict[str, list[dict[str, Any]]]) -> str:
    (job,) = kinds["Job"]
    (arg,) = [
        a for a in job["spec"]["template"]["spec"]["containers"][0]["command"] if a.startswith("--host=")
    ]
    return arg.removeprefix("--host=")


@pytest.mark.parametrize("mode", STANDARD)
def test_the_service_address_the_virtual_service_routes_is_a_service_the_chart_renders(
    home: Path, mode: str
) -> None:
    """The VirtualService's host and the Locust Job named <service>.<ns>.svc, which nothing created:
    the chart renders it (ClusterIP, port 80 -> the Bento port). It selects stable's pods: a mesh
    client gets the route's split (Istio routes the host by the VirtualService, not by the Service's
    endpoints), a client outside the mesh reaches stable, never a candidate at 0 %."""
    values = {"routing.mode": mode, "models.candidate": "iris:v2", "service.port": 8080}
    kinds = by_kind(template(home, values))
    (service,) = [s for s in kinds["Service"] if s["metadata"]["name"] == "iris"]
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]
    selector = service["spec"]["selector"]
    pods = {i["metadata"]["name"]: i["spec"]["predictor"]["labels"] for i in kinds["InferenceService"]}
    assert selector.items() <= pods["iris-stable"].items()
    assert not selector.items() <= pods["iris-candidate"].items()
    if mode == "istio":
        (vs,) = kinds["VirtualService"]
        assert vs["spec"]["hosts"] == ["iris.models.svc.cluster.local"]


def test_kserve_mode_renders_no_service_of_the_name_kserve_takes(home: Path) -> None:
    """KServe (Knative mode) makes the "<service>" Service of the InferenceService itself."""
    kinds = by_kind(template(home, {"loadtest.enabled": True}))
    # the chart's Services are the feedback join's (tests/e2e/test_helm_feedback.py) only
    assert {s["metadata"]["name"] for s in kinds["Service"]} == {
        "br-bento-rollout-join-redis",
        "br-bento-rollout-join-exporter",
    }
    (isvc,) = kinds["InferenceService"]
    assert locust_host(kinds) == f"http://{isvc['metadata']['name']}.models.svc.cluster.local"


@pytest.mark.parametrize(
    ("values", "host"),
    [
        ({"routing.mode": "istio"}, "http://iris.models.svc.cluster.local"),
        (
            {"routing.mode": "istio", "routing.hosts": ["iris.example.com"],
             "routing.istio.gateways": ["istio-system/ingressgateway"]},
            "http://iris.example.com",
        ),
        ({"routing.mode": "gateway-api", "routing.hosts": ["iris.example.com"]}, "http://iris.example.com"),
        ({"routing.mode": "gateway-api", "loadtest.host": "http://gw.example:8080"}, "http://gw.example:8080"),
        ({"routing.mode": "traefik", "routing.hosts": ["iris.example.com"]}, "http://iris.example.com"),
    ],
    ids=["istio-service", "istio-host", "gateway-api-host", "explicit", "traefik-host"],
)  # fmt: skip
def test_the_locust_job_targets_an_address_the_chart_routes(
    home: Path, values: dict[str, Any], host: str
) -> None:
    kinds = by_kind(template(home, {**values, "models.candidate": "iris:v2", "loadtest.enabled": True}))
    assert locust_host(kinds) == host
    if "loadtest.host" in values:
        return
    name = cluster_host(host)
    route_hosts = [h for r in kinds.get("VirtualService", []) for h in r["spec"]["hosts"]]
    route_hosts += [h for r in kinds.get("HTTPRoute", []) for h in r["spec"].get("hostnames", [])]
    route_hosts += [
        h for r in kinds.get("IngressRoute", []) for rule in r["spec"]["routes"]
        for h in re.findall(r"Host\(`([^`]+)`\)", rule["match"])
    ]  # fmt: skip
    assert name in route_hosts  # the route applies to what the Job sends
    if name.endswith(".svc.cluster.local"):
        service, namespace = name.split(".")[:2]
        assert namespace == "models" and service in [s["metadata"]["name"] for s in kinds["Service"]]


def test_a_gateway_api_load_test_without_an_address_names_the_gateway_to_ask(home: Path) -> None:
    """No cluster to read the Gateway's status.addresses from (helm template): say which Gateway
    and what to set, instead of a host nothing serves."""
    values = {"routing.mode": "gateway-api", "loadtest.enabled": True,
              "routing.gatewayApi.parentRefs": [{"name": "edge", "namespace": "gateway-system"}]}  # fmt: skip
    result = run_helm(["template", "br", str(CHART), *set_args(values)], home)
    assert result.returncode != 0
    assert "Gateway gateway-system/edge" in result.stderr and "loadtest.host" in result.stderr
