"""The project's own images on real pods (tests/k8s/buildah_images.py, built here with buildah, no
registry): the Bento image runs as the Helm chart's predictor runs it - the pod spec is taken from
``helm template`` of helm/bento-rollout (args, env, securityContext: uid 1034, non-root, read-only
root filesystem, all capabilities dropped; the /tmp emptyDir; the readiness probe on
/v2/health/ready) - becomes Ready through that probe, serves a real Open Inference Protocol
prediction of iris:v1 and counts it in /metrics; the controller image runs ``rollout --help`` as
uid 1034 on a read-only root; a second build with nothing changed builds nothing; and building
left nothing on the host (no /var/lib/containers, /etc/cni, /run/runc, no change in /etc/containers,
no mount of the store)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client
from kubernetes.stream import stream

from tests.e2e import helmkit
from tests.k8s import buildah_images
from tests.k8s import node as nodekit
from tests.kit import until

# a cold build of both images takes minutes (tests/k8s/README.md), inside the fixtures' setup
pytestmark = [pytest.mark.k8s, pytest.mark.slow, pytest.mark.timeout(1800)]

T = TypeVar("T")
POD_SPEC_FIELDS = {
    "automountServiceAccountToken",
    "securityContext",
    "imagePullSecrets",
    "containers",
    "volumes",
}
IRIS_ROW = [5.1, 3.5, 1.4, 0.2]  # a setosa


def _until(what: str, probe: Callable[[], T | None], timeout: float, node: nodekit.Node) -> T:
    return until(
        what, probe, timeout, node.check_alive, lambda: f"--- kubelet.log ---\n{node.log('kubelet')}"
    )


HOST_PATHS = ("/var/lib/containers", "/etc/cni", "/run/runc", "/run/containers", "/run/buildah")


def _host_state() -> dict[str, object]:
    """What a buildah run could leave on the host: its default paths, /etc/containers, mounts of the store."""
    state: dict[str, object] = {p: sorted(os.listdir(p)) if os.path.isdir(p) else None for p in HOST_PATHS}
    etc = Path("/etc/containers")
    state["/etc/containers"] = sorted(
        (str(f), f.stat().st_mtime_ns) for f in etc.rglob("*") if f.is_file()
    ) if etc.is_dir() else None  # fmt: skip
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    state["mounts"] = [m for m in mounts if str(buildah_images.STORE) in m]
    return state


@pytest.fixture(scope="module")
def host_before() -> dict[str, object]:
    return _host_state()


@pytest.fixture(scope="module")
def bento(k8s_node: nodekit.Node, host_before: dict[str, object]) -> buildah_images.BuiltImage:
    built = buildah_images.bento_image()
    k8s_node.import_image(built.image)
    return built


@pytest.fixture(scope="module")
def controller(k8s_node: nodekit.Node, host_before: dict[str, object]) -> buildah_images.BuiltImage:
    built = buildah_images.controller_image()
    k8s_node.import_image(built.image)
    return built


def _chart_predictor(tmp_path: Path, ref: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod spec the chart gives the Bento: its InferenceService's predictor, for iris:v1 alone,
    and the chart's feedback Secret it takes its token from. No Redis on this node: the join store
    is the pod's own (feedback.join local); the token is required all the same."""
    repository, tag = ref.rsplit(":", 1)
    values = {"image.repository": repository, "image.tag": tag, "image.pullPolicy": "Never",
              "models.stable": "iris:v1", "models.candidate": "", "controller.enabled": False,
              "feedback.join": "local"}  # fmt: skip
    docs = helmkit.template(tmp_path / "helm", values)
    (isvc,) = [d for d in docs if d["kind"] == "InferenceService"]
    (secret,) = [d for d in docs if d["kind"] == "Secret"]
    predictor = isvc["spec"]["predictor"]
    return {k: v for k, v in predictor.items() if k in POD_SPEC_FIELDS}, secret


def _ready(core: client.CoreV1Api, ns: str, name: str) -> Any:
    pod = core.read_namespaced_pod(name, ns)
    if pod.status.phase == "Running" and any(
        c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []
    ):
        return pod
    return None


def test_the_bento_image_serves_as_the_chart_runs_it(
    k8s_node: nodekit.Node, k8s_node_namespace: str, bento: buildah_images.BuiltImage, tmp_path: Path
) -> None:
    ns, api = k8s_node_namespace, k8s_node.control_plane.api_client()
    core = client.CoreV1Api(api)
    spec, secret = _chart_predictor(tmp_path, bento.image.ref)
    core.create_namespaced_secret(ns, {**secret, "metadata": {**secret["metadata"], "namespace": ns}})
    (container,) = spec["containers"]
    assert container["image"] == bento.image.ref
    security = container["securityContext"]
    assert security["runAsUser"] == 1034 and security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True and security["capabilities"]["drop"] == ["ALL"]
    assert {"name": "BENTO_MODEL_TAG", "value": "iris:v1"} in container["env"]
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])
    probe = container["readinessProbe"]["httpGet"]
    assert probe["path"] == "/v2/health/ready"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "iris", "labels": {"app": "iris"}},
           "spec": {**spec, "terminationGracePeriodSeconds": 5}}  # fmt: skip
    core.create_namespaced_pod(ns, pod)

    # Given the pod Ready through the chart's readiness probe (the kubelet's, on /v2/health/ready)
    def ready() -> Any:
        found = _ready(core, ns, "iris")
        if found is None:
            status = core.read_namespaced_pod("iris", ns).status
            for cs in status.container_statuses or []:
                if cs.restart_count > 0 or (cs.state.terminated is not None):
                    raise AssertionError(
                        f"the Bento container exited:\n{k8s_node.pod_log(ns, 'iris')[:8000]}"
                    )
        return found

    ready_pod = _until("the Bento pod Ready", ready, 240, k8s_node)
    ip, port = ready_pod.status.pod_ip, probe["port"]
    base = f"http://{ip}:{port}"
    assert json.loads(k8s_node.http_get(f"{base}/v2/health/ready")) == {"ready": True}

    # When a client inside the node netns asks for a prediction (Open Inference Protocol v2)
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": IRIS_ROW}]})
    proc = k8s_node.run("curl", "-sS", "--fail", "-m", "10", "-H", "content-type: application/json",
                        "--data", body, f"{base}/v2/models/iris/infer")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)

    # Then the model the chart names answers, and /metrics counts the request
    assert answer["model_name"] == "iris" and answer["model_version"] == "v1"
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["predictions"]["data"] == ["setosa"]
    assert len(outputs["probabilities"]["data"]) == 3
    metrics = k8s_node.http_get(f"{base}/metrics")
    counted = [
        ln
        for ln in metrics.splitlines()
        if ln.startswith("model_requests_total{") and 'endpoint="infer"' in ln
    ]
    assert counted and float(counted[0].rsplit(" ", 1)[1]) >= 1, metrics
    # ... as uid 1034 on a read-only root, writing only to its emptyDirs
    check = ["sh", "-c", "id -u; touch /home/bentoml/bento/x 2>/dev/null && echo writable || echo read-only"]
    out = stream(core.connect_get_namespaced_pod_exec, "iris", ns, command=check,
                 stderr=True, stdin=False, stdout=True, tty=False)  # fmt: skip
    assert out.split() == ["1034", "read-only"]
    api.close()


def test_the_controller_image_runs_rollout_as_a_non_root_user_on_a_read_only_root(
    k8s_node: nodekit.Node, k8s_node_namespace: str, controller: buildah_images.BuiltImage
) -> None:
    ns, api = k8s_node_namespace, k8s_node.control_plane.api_client()
    core = client.CoreV1Api(api)
    container = client.V1Container(
        name="rollout",
        image=controller.image.ref,
        image_pull_policy="Never",
        command=["sh", "-c", "id -u && touch /app/x 2>/dev/null || echo read-only && exec rollout --help"],
        env=[client.V1EnvVar(name="HOME", value="/tmp")],
        security_context=client.V1SecurityContext(
            run_as_user=1034,
            run_as_group=1034,
            run_as_non_root=True,
            read_only_root_filesystem=True,
            allow_privilege_escalation=False,
            capabilities=client.V1Capabilities(drop=["ALL"]),
        ),  # fmt: skip
        volume_mounts=[client.V1VolumeMount(name="tmp", mount_path="/tmp")],
    )
    core.create_namespaced_pod(ns, client.V1Pod(
        metadata=client.V1ObjectMeta(name="rollout-help"),
        spec=client.V1PodSpec(
            containers=[container], restart_policy="Never", termination_grace_period_seconds=1,
            volumes=[client.V1Volume(name="tmp", empty_dir=client.V1EmptyDirVolumeSource())],
        ),
    ))  # fmt: skip

    def finished() -> Any:
        pod = core.read_namespaced_pod("rollout-help", ns)
        return pod if pod.status.phase in ("Succeeded", "Failed") else None

    pod = _until("rollout --help to finish", finished, 120, k8s_node)
    log = k8s_node.pod_log(ns, "rollout-help")
    (state,) = [cs.state.terminated for cs in pod.status.container_statuses]
    assert pod.status.phase == "Succeeded" and state.exit_code == 0, log
    lines = [ln.split(" ", 3)[-1] for ln in log.splitlines()]  # the kubelet's CRI log format
    assert lines[:2] == ["1034", "read-only"], log
    assert any("Usage: rollout" in ln for ln in lines), log
    api.close()


def test_a_rebuild_with_nothing_changed_builds_nothing(
    bento: buildah_images.BuiltImage, controller: buildah_images.BuiltImage
) -> None:
    for first, build in ((bento, buildah_images.bento_image), (controller, buildah_images.controller_image)):
        before = first.image.archive.stat()
        again = build()
        after = again.image.archive.stat()
        assert again.built is False and again.image == first.image
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not rewritten


def test_building_leaves_nothing_on_the_host(
    host_before: dict[str, object], bento: buildah_images.BuiltImage, controller: buildah_images.BuiltImage
) -> None:
    # (vacuous when both archives were cached: then no buildah ran at all)
    assert _host_state() == host_before
