"""The chart installed into the real kube-apiserver with the real KServe, Istio, Gateway API and
Prometheus Operator CRDs: every object is accepted by server-side validation, upgrade and rollback
change what the server holds, the controller's ServiceAccount can do exactly what the operator
needs (checked by the server with SelfSubjectAccessReview under impersonation), and the k8s/
manifests (CRD, examples, kustomize base) are accepted too."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.helmkit import CHART, ROOT, kubectl, run_helm, set_args
from tests.k8s.fixtures import K8sCluster
from tests.kit import until

pytestmark = pytest.mark.k8s

RELEASE = "br"
CONTROLLER_SA = "br-bento-rollout-controller"


def helm(cluster: K8sCluster, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_helm(list(args), home, kubeconfig=cluster.kubeconfig, timeout=300)


def install(cluster: K8sCluster, home: Path, namespace: str, values: dict[str, Any]) -> None:
    result = helm(cluster, home, "install", RELEASE, str(CHART), "--namespace", namespace, *set_args(values))
    assert result.returncode == 0, f"helm install failed:\n{result.stderr}"


def upgrade(cluster: K8sCluster, home: Path, namespace: str, values: dict[str, Any]) -> str:
    result = helm(
        cluster, home, "upgrade", RELEASE, str(CHART), "--namespace", namespace, "--reuse-values",
        *set_args(values),
    )  # fmt: skip
    assert result.returncode == 0, f"helm upgrade failed:\n{result.stderr}"
    return result.stdout


def server_object(cluster: K8sCluster, namespace: str, kind: str, name: str) -> dict[str, Any]:
    got = kubectl(cluster, "get", kind, name, "-n", namespace, "-o", "json")
    assert got.returncode == 0, got.stderr
    return json.loads(got.stdout)


FULL = {
    "models.candidate": "iris:v2",
    "monitoring.enabled": True,
    "loadtest.enabled": True,
    "rollout.enabled": True,
    "routing.candidateWeight": 10,
}


@pytest.mark.parametrize("mode", ["kserve", "istio", "gateway-api"])
def test_install_every_object_is_accepted_by_the_server(
    k8s_cluster: K8sCluster, k8s_namespace: str, tmp_path: Path, modelrollout_crd: None, mode: str
) -> None:
    values = {**FULL, "routing.mode": mode}
    if mode == "istio":
        values.update({"routing.mirror.enabled": True, "routing.headerMatch.enabled": True})
        values["monitoring.kind"] = "ServiceMonitor"  # RawDeployment predictors have Services
    if mode == "gateway-api":
        values.update({"routing.mirror.enabled": True, "routing.headerMatch.enabled": True})
        values["loadtest.host"] = "http://inference-gateway.gateway-system"
    if mode == "kserve":  # two steps: stable alone, then the candidate (a first install is refused)
        install(k8s_cluster, tmp_path, k8s_namespace, {"routing.mode": mode})
        upgrade(k8s_cluster, tmp_path, k8s_namespace, values)
    else:
        install(k8s_cluster, tmp_path, k8s_namespace, values)

    manifest = helm(k8s_cluster, tmp_path, "get", "manifest", RELEASE, "-n", k8s_namespace)
    assert manifest.returncode == 0, manifest.stderr
    rendered = [d for d in yaml.safe_load_all(manifest.stdout) if d]
    on_server = kubectl(
        k8s_cluster, "get", "-n", k8s_namespace, "-f", "-", "-o", "json", stdin=manifest.stdout
    )
    assert on_server.returncode == 0, on_server.stderr
    items = json.loads(on_server.stdout)
    items = items.get("items", [items])
    assert sorted((i["kind"], i["metadata"]["name"]) for i in items) == sorted(
        (d["kind"], d["metadata"]["name"]) for d in rendered
    )
    # strict field validation: a field a CRD schema does not know would be an error here, not a
    # silently pruned setting
    strict = kubectl(
        k8s_cluster, "apply", "--server-side", "--dry-run=server", "--validate=strict", "--force-conflicts",
        "--field-manager=strict-check", "-n", k8s_namespace, "-f", "-", stdin=manifest.stdout,
    )  # fmt: skip
    assert strict.returncode == 0, strict.stderr
    assert "unknown field" not in strict.stderr.lower(), strict.stderr
    kinds = {i["kind"] for i in items}
    expected_route = {"kserve": set(), "istio": {"VirtualService"}, "gateway-api": {"HTTPRoute"}}[mode]
    assert (
        expected_route | {"InferenceService", "ModelRollout", "PodMonitor", "PrometheusRule", "Job"} <= kinds
    )
    assert ("ServiceMonitor" in kinds) == (mode == "istio")

    # what the server stored is what the chart meant (no field silently pruned by a CRD schema)
    if mode == "istio":
        vs = server_object(k8s_cluster, k8s_namespace, "virtualservices.networking.istio.io", "iris")
        primary = vs["spec"]["http"][-1]
        assert [r["weight"] for r in primary["route"]] == [90, 10]
        assert primary["mirrorPercentage"] == {"value": 100}
    if mode == "gateway-api":
        route = server_object(k8s_cluster, k8s_namespace, "httproutes.gateway.networking.k8s.io", "iris")
        split = route["spec"]["rules"][-1]
        assert split["filters"][0]["requestMirror"]["percent"] == 100
    if mode == "kserve":
        isvc = server_object(k8s_cluster, k8s_namespace, "inferenceservices.serving.kserve.io", "iris")
        predictor = isvc["spec"]["predictor"]
        assert predictor["canaryTrafficPercent"] == 10
        assert predictor["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
        # Knative refuses a pod-level securityContext by default: the user is the container's
        assert predictor["containers"][0]["securityContext"]["runAsUser"] == 1034
        assert "securityContext" not in predictor
        assert predictor["labels"]["app.kubernetes.io/component"] == "model"
    # KServe's current mode names (v0.20.0 deprecates Serverless / RawDeployment)
    modes = {
        i["metadata"]["annotations"]["serving.kserve.io/deploymentMode"]
        for i in items
        if i["kind"] == "InferenceService"
    }
    assert modes == {"Knative" if mode == "kserve" else "Standard"}
    rollout = server_object(k8s_cluster, k8s_namespace, "modelrollouts.bento-rollout.io", "iris")
    assert rollout["spec"]["strategy"]["canary"]["steps"][0] == {"setWeight": 10}


def test_upgrade_and_rollback_change_the_routing_on_the_server(
    k8s_cluster: K8sCluster, k8s_namespace: str, tmp_path: Path, modelrollout_crd: None
) -> None:
    install(k8s_cluster, tmp_path, k8s_namespace, {"routing.mode": "istio", "models.candidate": "iris:v2"})

    def weights() -> list[int]:
        vs = server_object(k8s_cluster, k8s_namespace, "virtualservices.networking.istio.io", "iris")
        return [r["weight"] for r in vs["spec"]["http"][-1]["route"]]

    assert weights() == [100, 0]
    up = helm(
        k8s_cluster, tmp_path, "upgrade", RELEASE, str(CHART), "-n", k8s_namespace, "--reuse-values",
        "--set", "routing.candidateWeight=40",
    )  # fmt: skip
    assert up.returncode == 0, up.stderr
    assert weights() == [60, 40]
    back = helm(k8s_cluster, tmp_path, "rollback", RELEASE, "1", "-n", k8s_namespace)
    assert back.returncode == 0, back.stderr
    assert weights() == [100, 0]
    history = helm(k8s_cluster, tmp_path, "history", RELEASE, "-n", k8s_namespace, "-o", "json")
    revisions = json.loads(history.stdout)
    assert [r["revision"] for r in revisions] == [1, 2, 3]
    assert revisions[-1]["status"] == "deployed" and "Rollback to 1" in revisions[-1]["description"]


def test_bad_values_fail_at_install_and_leave_nothing_behind(
    k8s_cluster: K8sCluster, k8s_namespace: str, tmp_path: Path, modelrollout_crd: None
) -> None:
    result = helm(
        k8s_cluster,
        tmp_path,
        "install",
        RELEASE,
        str(CHART),
        "-n",
        k8s_namespace,
        "--set",
        "routing.candidateWeight=101",
    )
    assert result.returncode != 0
    assert "candidateWeight" in result.stderr
    listed = helm(k8s_cluster, tmp_path, "list", "-n", k8s_namespace, "-a", "-q")
    assert listed.stdout.strip() == ""


# --- what is served, and where clients and the load test reach it ---------------------------------


def default_service_account(cluster: K8sCluster, namespace: str) -> None:
    """The namespace's "default" ServiceAccount, which the chart asks for to know it sees a cluster
    (kube-controller-manager creates it just after the namespace)."""
    until(
        f"ServiceAccount {namespace}/default",
        lambda: kubectl(cluster, "get", "sa", "default", "-n", namespace).returncode == 0,
        30,
    )


def served(isvc: dict[str, Any]) -> str:
    (container,) = isvc["spec"]["predictor"]["containers"]
    return {e["name"]: e.get("value") for e in container["env"]}["BENTO_MODEL_TAG"]


def test_kserve_mode_installs_stable_alone_then_rolls_the_candidate_out_with_an_upgrade(
    k8s_cluster: K8sCluster, k8s_namespace: str, tmp_path: Path, modelrollout_crd: None
) -> None:
    """The chart's defaults made one InferenceService whose only revision ran the candidate iris:v2
    (all traffic: no previous revision) while its ModelRollout said stable is iris:v1. Now: the
    defaults serve stable alone; a first install with a candidate is refused and leaves nothing;
    the upgrade that sets one makes the candidate the latest revision at its weight, the
    ModelRollout agreeing; a candidate over another stable than the one served is refused."""
    default_service_account(k8s_cluster, k8s_namespace)
    ns = k8s_namespace
    first = helm(
        k8s_cluster, tmp_path, "install", RELEASE, str(CHART), "-n", ns, "--set", "models.candidate=iris:v2"
    )
    assert first.returncode != 0
    assert f"InferenceService {ns}/iris does not exist yet" in first.stderr, first.stderr
    assert "Install with models.candidate=" in first.stderr
    assert helm(k8s_cluster, tmp_path, "list", "-n", ns, "-a", "-q").stdout.strip() == ""

    installed = helm(k8s_cluster, tmp_path, "install", RELEASE, str(CHART), "-n", ns)  # the defaults
    assert installed.returncode == 0, installed.stderr
    isvc = server_object(k8s_cluster, ns, "inferenceservices.serving.kserve.io", "iris")
    assert served(isvc) == "iris:v1" and "canaryTrafficPercent" not in isvc["spec"]["predictor"]
    assert "Model service iris: stable iris:v1." in installed.stdout  # NOTES: what is served
    assert "--set models.candidate=<model:tag>" in installed.stdout

    # stable alone serves iris:v1 (its predictor says so): a candidate over another stable is refused
    other = helm(k8s_cluster, tmp_path, "upgrade", RELEASE, str(CHART), "-n", ns, "--reuse-values",
                 "--set", "models.stable=iris:v0,models.candidate=iris:v2")  # fmt: skip
    assert other.returncode != 0
    assert f"InferenceService {ns}/iris serves iris:v1" in other.stderr, other.stderr

    drill = [{"name": "BENTO_FAULT_ERROR_RATE", "value": "0.3"}]
    values = {"models.candidate": "iris:v2", "routing.candidateWeight": 10, "rollout.enabled": True,
              "models.candidateEnv": drill}  # fmt: skip
    notes = upgrade(k8s_cluster, tmp_path, ns, values)
    assert "stable iris:v1, candidate iris:v2 at 10% (kserve routing)" in notes and "WARNING" not in notes
    isvc = server_object(k8s_cluster, ns, "inferenceservices.serving.kserve.io", "iris")
    rollout = server_object(k8s_cluster, ns, "modelrollouts.bento-rollout.io", "iris")
    predictor = isvc["spec"]["predictor"]
    assert served(isvc) == rollout["spec"]["candidate"]["model"] == "iris:v2"
    assert predictor["canaryTrafficPercent"] == 10
    assert (
        isvc["metadata"]["annotations"]["bento-rollout.io/stable-model"] == rollout["spec"]["stable"]["model"]
    )
    assert predictor["containers"][0]["env"][-1] == drill[0]  # the candidate's own env, stored

    # a canary in flight over iris:v1: another stable is not what KServe keeps
    refused = helm(k8s_cluster, tmp_path, "upgrade", RELEASE, str(CHART), "-n", ns, "--reuse-values",
                   "--set", "models.stable=iris:v0")  # fmt: skip
    assert refused.returncode != 0
    assert f"InferenceService {ns}/iris serves iris:v1" in refused.stderr, refused.stderr
    assert "set models.stable=iris:v1" in refused.stderr
    # a new candidate over the same stable is fine
    upgrade(k8s_cluster, tmp_path, ns, {"models.candidate": "iris:v3"})
    assert served(server_object(k8s_cluster, ns, "inferenceservices.serving.kserve.io", "iris")) == "iris:v3"


def test_the_service_the_virtual_service_names_exists_and_selects_stables_pods(
    k8s_cluster: K8sCluster, k8s_namespace: str, tmp_path: Path, modelrollout_crd: None
) -> None:
    """<service>.<ns>.svc, the VirtualService's host and the Locust Job's target, was no object: the
    chart creates it, selecting the labels KServe puts on stable's predictor pods (the predictor's
    labels as the server stored them) and not the candidate's."""
    values = {"routing.mode": "istio", "models.candidate": "iris:v2", "loadtest.enabled": True}
    install(k8s_cluster, tmp_path, k8s_namespace, values)
    service = server_object(k8s_cluster, k8s_namespace, "services", "iris")
    assert service["spec"]["type"] == "ClusterIP" and service["spec"]["clusterIP"]
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(80, 3000)]
    selector = service["spec"]["selector"].items()
    labels = {
        role: server_object(
            k8s_cluster, k8s_namespace, "inferenceservices.serving.kserve.io", f"iris-{role}"
        )["spec"]["predictor"]["labels"].items()
        for role in ("stable", "candidate")
    }
    assert selector <= labels["stable"] and not selector <= labels["candidate"]
    vs = server_object(k8s_cluster, k8s_namespace, "virtualservices.networking.istio.io", "iris")
    assert vs["spec"]["hosts"] == [f"iris.{k8s_namespace}.svc.cluster.local"]
    (job,) = json.loads(kubectl(k8s_cluster, "get", "jobs", "-n", k8s_namespace, "-o", "json").stdout)[
        "items"
    ]
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert f"--host=http://iris.{k8s_namespace}.svc.cluster.local" in command


def test_the_gateway_api_load_test_targets_the_gateways_own_address(
    k8s_cluster: K8sCluster, k8s_namespace: str, tmp_path: Path, modelrollout_crd: None
) -> None:
    """gateway-api: the Locust Job had no default but a value; now it reads the Gateway the route
    attaches to (status.addresses, the HTTP listener's port)."""
    gateway = {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "inference-gateway", "namespace": k8s_namespace},
        "spec": {"gatewayClassName": "test", "listeners": [
            {"name": "tls", "protocol": "HTTPS", "port": 443, "tls": {"certificateRefs": [{"name": "x"}]}},
            {"name": "web", "protocol": "HTTP", "port": 8000},
        ]},
    }  # fmt: skip
    created = kubectl(k8s_cluster, "create", "-f", "-", stdin=json.dumps(gateway))
    assert created.returncode == 0, created.stderr
    address = {
        "status": {"addresses": [{"type": "Hostname", "value": "gw.gateway-system.svc.cluster.local"}]}
    }
    patched = kubectl(
        k8s_cluster, "patch", "gateways.gateway.networking.k8s.io", "inference-gateway", "-n", k8s_namespace,
        "--subresource=status", "--type=merge", "-p", json.dumps(address),
    )  # fmt: skip
    assert patched.returncode == 0, patched.stderr
    values = {"routing.mode": "gateway-api", "models.candidate": "iris:v2", "loadtest.enabled": True}
    install(k8s_cluster, tmp_path, k8s_namespace, values)
    (job,) = json.loads(kubectl(k8s_cluster, "get", "jobs", "-n", k8s_namespace, "-o", "json").stdout)[
        "items"
    ]
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "--host=http://gw.gateway-system.svc.cluster.local:8000" in command


# --- least privilege -------------------------------------------------------------------------------

LEASE = CONTROLLER_SA  # the chart's Lease is named as the controller
# "resource[/subresource][@name]"; installed in istio mode
NEEDED = [
    ("get", "modelrollouts.bento-rollout.io"),
    ("list", "modelrollouts.bento-rollout.io"),
    ("watch", "modelrollouts.bento-rollout.io"),
    ("patch", "modelrollouts.bento-rollout.io"),
    ("patch", "modelrollouts.bento-rollout.io/status"),
    ("update", "modelrollouts.bento-rollout.io/status"),
    ("get", "inferenceservices.serving.kserve.io@iris-stable"),
    ("patch", "inferenceservices.serving.kserve.io@iris-candidate"),
    ("update", "inferenceservices.serving.kserve.io@iris-stable"),
    ("get", "virtualservices.networking.istio.io@iris"),
    ("update", "virtualservices.networking.istio.io@iris"),
    ("create", "events"),
    # what the pods serve (rollout/controller/served.py): their IPs, and the predictors' rollouts
    ("list", "endpointslices.discovery.k8s.io"),
    ("get", "deployments.apps@iris-stable-predictor"),
    ("get", "deployments.apps@iris-candidate-predictor"),
    ("get", f"leases.coordination.k8s.io@{LEASE}"),
    ("update", f"leases.coordination.k8s.io@{LEASE}"),
]
REFUSED = [
    ("get", "secrets"),
    ("list", "secrets"),
    ("watch", "secrets"),
    ("get", "configmaps"),
    ("create", "pods"),
    ("update", "modelrollouts.bento-rollout.io"),
    ("delete", "modelrollouts.bento-rollout.io"),
    ("update", "modelrollouts.bento-rollout.io/finalizers"),
    # InferenceServices: only this release's, by name, never listed, created or deleted
    ("get", "inferenceservices.serving.kserve.io@other-stable"),
    ("patch", "inferenceservices.serving.kserve.io@iris"),  # kserve mode's name: not in istio mode
    ("list", "inferenceservices.serving.kserve.io"),
    ("watch", "inferenceservices.serving.kserve.io"),
    ("delete", "inferenceservices.serving.kserve.io@iris-stable"),
    ("create", "inferenceservices.serving.kserve.io"),
    # the route: the chart's only, never created
    ("update", "virtualservices.networking.istio.io@other"),
    ("create", "virtualservices.networking.istio.io"),
    ("list", "virtualservices.networking.istio.io"),
    ("patch", "httproutes.gateway.networking.k8s.io@iris"),  # istio mode: no Gateway API rights
    # what runs behind the Services: read, and only what served.py reads
    ("watch", "endpointslices.discovery.k8s.io"),
    ("update", "endpointslices.discovery.k8s.io"),
    ("list", "deployments.apps"),
    ("get", "deployments.apps@other-predictor"),
    ("update", "deployments.apps@iris-stable-predictor"),
    ("get", "pods"),
    # Leases: the chart creates its own; none other
    ("create", "leases.coordination.k8s.io"),
    ("update", "leases.coordination.k8s.io@kube-scheduler"),
    ("patch", "events"),
    ("create", "events.events.k8s.io"),
    ("create", "roles.rbac.authorization.k8s.io"),
    ("create", "rolebindings.rbac.authorization.k8s.io"),
]


def can_i(
    cluster: K8sCluster, namespace: str, verb: str, resource: str, *, in_namespace: str | None = None
) -> bool:
    """The server's SelfSubjectAccessReview answer for the controller's ServiceAccount (impersonated).
    ``resource`` is ``type[/subresource][@name]``."""
    resource, _, name = resource.partition("@")
    kind, _, sub = resource.partition("/")
    args = ["auth", "can-i", verb, f"{kind}/{name}" if name else kind]
    if sub:
        args.append(f"--subresource={sub}")
    args += ["--as", f"system:serviceaccount:{namespace}:{CONTROLLER_SA}"]
    args += ["--all-namespaces"] if in_namespace == "*" else ["-n", in_namespace or namespace]
    result = kubectl(cluster, *args)
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), f"kubectl auth can-i {verb} {resource}: {result.stdout}{result.stderr}"
    return answer == "yes"


def test_controller_service_account_has_exactly_the_rights_the_operator_needs(
    k8s_cluster: K8sCluster, k8s_namespace: str, tmp_path: Path, modelrollout_crd: None
) -> None:
    values = {"routing.mode": "istio", "rollout.enabled": True, "models.candidate": "iris:v2"}
    install(k8s_cluster, tmp_path, k8s_namespace, values)
    missing = [f"{v} {r}" for v, r in NEEDED if not can_i(k8s_cluster, k8s_namespace, v, r)]
    assert missing == [], f"the controller cannot: {missing}"
    excess = [f"{v} {r}" for v, r in REFUSED if can_i(k8s_cluster, k8s_namespace, v, r)]
    assert excess == [], f"the controller may, but must not: {excess}"
    # other namespaces and cluster-wide: nothing
    for verb, resource in [
        ("list", "modelrollouts.bento-rollout.io"),
        ("patch", "inferenceservices.serving.kserve.io@iris-stable"),
    ]:
        assert not can_i(k8s_cluster, k8s_namespace, verb, resource, in_namespace="default")
        assert not can_i(k8s_cluster, k8s_namespace, verb, resource, in_namespace="*")
    assert not can_i(k8s_cluster, k8s_namespace, "list", "secrets", in_namespace="kube-system")


def test_after_a_hand_off_values_that_would_put_stable_back_are_refused(
    k8s_cluster: K8sCluster, k8s_namespace: str, tmp_path: Path, modelrollout_crd: None
) -> None:
    """The controller's hand-off made the stable InferenceService serve iris:v2 (status written here
    as the controller writes it: no controller runs in this test). Shipping iris:v3 with
    models.stable still iris:v1, or removing the candidate, would have helm put stable back on
    iris:v1 under users' traffic: refused naming the value to set, nothing changed. Setting
    models.stable=iris:v2 ships, and the same release again renders as the controller left it."""
    ns = k8s_namespace
    install(k8s_cluster, tmp_path, ns, {"routing.mode": "gateway-api", "rollout.enabled": True,
                                        "models.candidate": "iris:v2"})  # fmt: skip
    status = {"status": {"phase": "Promoted", "stable": "iris:v1", "candidate": "iris:v2",
                         "handoff": {"phase": "Complete", "model": "iris:v2", "stable": "iris-stable"}}}  # fmt: skip
    patched = kubectl(k8s_cluster, "patch", "modelrollouts.bento-rollout.io", "iris", "-n", ns,
                      "--subresource=status", "--type=merge", "-p", json.dumps(status))  # fmt: skip
    assert patched.returncode == 0, patched.stderr
    for values in ({"models.candidate": "iris:v3"}, {"models.candidate": "", "rollout.enabled": False}):
        up = helm(k8s_cluster, tmp_path, "upgrade", RELEASE, str(CHART), "-n", ns, "--reuse-values",
                  *set_args(values))  # fmt: skip
        assert up.returncode != 0, f"{values} was accepted"
        assert "set models.stable=iris:v2" in up.stderr, up.stderr
    history = json.loads(helm(k8s_cluster, tmp_path, "history", RELEASE, "-n", ns, "-o", "json").stdout)
    assert [r["status"] for r in history] == ["deployed"]  # the refused upgrades changed nothing
    upgrade(k8s_cluster, tmp_path, ns, {"monitoring.interval": "30s"})  # the same release again
    assert (
        served(server_object(k8s_cluster, ns, "inferenceservices.serving.kserve.io", "iris-stable"))
        == "iris:v2"
    )
    upgrade(k8s_cluster, tmp_path, ns, {"models.stable": "iris:v2", "models.candidate": "iris:v3"})
    assert (
        served(server_object(k8s_cluster, ns, "inferenceservices.serving.kserve.io", "iris-candidate"))
        == "iris:v3"
    )


def test_the_controller_leases_the_charts_lease_and_helm_upgrade_leaves_its_holder(
    k8s_cluster: K8sCluster, k8s_namespace: str, tmp_path: Path, modelrollout_crd: None
) -> None:
    """The chart creates the Lease (the controller may not create Leases); the controller's writes
    to it, as the ServiceAccount, survive `helm upgrade` (the holder is not in the manifest)."""
    from datetime import UTC, datetime

    install(k8s_cluster, tmp_path, k8s_namespace, {"routing.mode": "kserve"})
    as_sa = ["--as", f"system:serviceaccount:{k8s_namespace}:{CONTROLLER_SA}", "-n", k8s_namespace]
    lease = server_object(k8s_cluster, k8s_namespace, "leases.coordination.k8s.io", LEASE)
    assert not lease["spec"].get("holderIdentity")
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    lease["spec"] = {"holderIdentity": "pod-a", "leaseDurationSeconds": 15, "renewTime": now}
    replaced = kubectl(k8s_cluster, "replace", *as_sa, "-f", "-", stdin=json.dumps(lease))  # an update
    assert replaced.returncode == 0, replaced.stderr
    up = helm(
        k8s_cluster, tmp_path, "upgrade", RELEASE, str(CHART), "-n", k8s_namespace, "--reuse-values",
        "--set", "controller.leaderElection.leaseDuration=20",
    )  # fmt: skip
    assert up.returncode == 0, up.stderr
    after = server_object(k8s_cluster, k8s_namespace, "leases.coordination.k8s.io", LEASE)
    assert after["spec"]["holderIdentity"] == "pod-a"
    other = kubectl(k8s_cluster, "create", *as_sa, "-f", "-", stdin=json.dumps(
        {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "other"}, "spec": {}}
    ))  # fmt: skip
    assert other.returncode != 0 and "forbidden" in other.stderr.lower()


def test_controller_identity_is_refused_secrets_by_a_real_request(
    k8s_cluster: K8sCluster, k8s_namespace: str, tmp_path: Path, modelrollout_crd: None
) -> None:
    install(k8s_cluster, tmp_path, k8s_namespace, {"routing.mode": "kserve"})
    upgrade(k8s_cluster, tmp_path, k8s_namespace, {"rollout.enabled": True, "models.candidate": "iris:v2"})
    as_sa = ["--as", f"system:serviceaccount:{k8s_namespace}:{CONTROLLER_SA}", "-n", k8s_namespace]
    secrets = kubectl(k8s_cluster, "get", "secrets", *as_sa)
    assert secrets.returncode != 0 and "forbidden" in secrets.stderr.lower()
    rollouts = kubectl(k8s_cluster, "get", "modelrollouts.bento-rollout.io", *as_sa, "-o", "name")
    assert rollouts.returncode == 0, rollouts.stderr
    assert rollouts.stdout.strip() == "modelrollout.bento-rollout.io/iris"
    # the status subresource is writable by the controller (what it does on every transition)
    patched = kubectl(
        k8s_cluster, "patch", "modelrollouts.bento-rollout.io", "iris", *as_sa, "--subresource=status",
        "--type=merge", "-p", json.dumps({"status": {"phase": "Progressing", "candidateWeight": 10}}),
    )  # fmt: skip
    assert patched.returncode == 0, patched.stderr
    listed = kubectl(k8s_cluster, "get", "modelrollouts.bento-rollout.io", "iris", "-n", k8s_namespace)
    assert "Progressing" in listed.stdout and "iris:v2" in listed.stdout  # printer columns


# --- k8s/: the CRD's own validation, the examples, the kustomize base ------------------------------


def test_examples_for_every_strategy_are_accepted(
    k8s_cluster: K8sCluster, k8s_namespace: str, modelrollout_crd: None
) -> None:
    result = kubectl(
        k8s_cluster, "apply", "--server-side", "-n", k8s_namespace, "-f", str(ROOT / "k8s" / "examples")
    )
    assert result.returncode == 0, result.stderr
    names = kubectl(k8s_cluster, "get", "modelrollouts.bento-rollout.io", "-n", k8s_namespace, "-o", "name")
    assert sorted(names.stdout.split()) == [
        f"modelrollout.bento-rollout.io/iris-{s}" for s in ("abtest", "bluegreen", "canary", "shadow")
    ]


INVALID = [
    (
        lambda s: s["strategy"].update(shadow={"mirrorPercent": 10}),
        "exactly one of canary, blueGreen, shadow, abTest",
    ),
    (lambda s: s["candidate"].update(model="iris:v1"), "stable and candidate are the same model"),
    (
        lambda s: s["strategy"]["canary"]["steps"][0].update(pause={}),
        "exactly one of setWeight, pause, analysis",
    ),
    (lambda s: s["analysis"]["metrics"][0].pop("threshold"), "needs a threshold"),
    (lambda s: s["strategy"]["canary"]["steps"][0].update(setWeight=101), "setWeight"),
    (lambda s: s["analysis"].update(interval="soon"), "interval"),
    (lambda s: s["analysis"]["metrics"].append(dict(s["analysis"]["metrics"][0])), "Duplicate value"),
]


@pytest.mark.parametrize(
    ("mutate", "words"), INVALID, ids=[w.split()[0] + str(i) for i, (_, w) in enumerate(INVALID)]
)
def test_the_server_rejects_invalid_rollouts_with_the_spec_message(
    k8s_cluster: K8sCluster, k8s_namespace: str, modelrollout_crd: None, mutate: Any, words: str
) -> None:
    doc = yaml.safe_load((ROOT / "k8s" / "examples" / "canary.yaml").read_text(encoding="utf-8"))
    mutate(doc["spec"])
    result = kubectl(k8s_cluster, "create", "-n", k8s_namespace, "-f", "-", stdin=yaml.safe_dump(doc))
    assert result.returncode != 0, "the API server accepted an invalid ModelRollout"
    assert words in result.stderr, result.stderr


def test_kustomize_base_renders_and_is_accepted(
    k8s_cluster: K8sCluster, k8s_namespace: str, modelrollout_crd: None
) -> None:
    rendered = kubectl(k8s_cluster, "kustomize", str(ROOT / "k8s" / "base"))
    assert rendered.returncode == 0, rendered.stderr
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(rendered.stdout) if d)
    assert kinds == sorted(
        [
            "CustomResourceDefinition",
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "ClusterRole",  # get GatewayClasses (Gateway API routing: can the implementation mirror?)
            "ClusterRoleBinding",
            "Lease",
            "Deployment",
            "InferenceService",
        ]
    )
    applied = kubectl(
        k8s_cluster, "apply", "--server-side", "--force-conflicts", "--field-manager=kustomize-test",
        "--dry-run=server", "-n", k8s_namespace, "-f", "-", stdin=rendered.stdout,
    )  # fmt: skip
    assert applied.returncode == 0, applied.stderr
    assert "inferenceservice.serving.kserve.io/iris serverside-applied (server dry run)" in applied.stdout
