"""Real pods end to end: the chart installed with ``helm install`` as a user would, on a single-node
cluster running the real KServe v0.20.0 controller (fixture ``kserve_node``), the project's own
images (tests/k8s/buildah_images.py) and a real Prometheus scraping the pods (tests/k8s/
pod_prometheus.py).

Given ``helm install`` of helm/bento-rollout in istio routing mode (the Standard-mode pair
``iris-stable`` / ``iris-candidate``, the PodMonitor, the controller with the chart's RBAC and the
chart's ModelRollout), then:

- KServe makes the predictor Deployments and Services of both InferenceServices and its pods become
  Ready through the chart's probes (KServe writes every InferenceService status; the test writes
  none);
- the ``<isvc>-predictor`` Service's ClusterIP answers, from inside the node netns, an Open
  Inference Protocol v2 ``/v2/models/iris/infer`` and a ``/predict``: stable with iris:v1,
  candidate with iris:v2 (body and ``X-Model-Version``);
- Prometheus, configured from the chart's PodMonitor, scrapes both pods: ``model_requests_total``
  of each pod rises by the requests sent, labelled with its pod and namespace and selected as the
  analysis templates select it (its own ``endpoint`` label: the PodMonitor's ``honorLabels``);
- the controller's Deployment (the controller image, its ServiceAccount token, the chart's
  least-privilege Role) becomes Ready and reconciles the chart's ModelRollout against the
  InferenceServices KServe manages: it writes its ``.status`` (phase, candidateWeight, conditions)
  and the VirtualService's weights follow the first step (90 / 10). There is no Istio data plane:
  the VirtualService is an object only;
- with requests sent to both predictor Services as the mesh would split them, the analysis
  measures the candidate (error-rate, latency-p99 Successful) on that Prometheus and the rollout
  steps on to 50 %, the VirtualService with it;
- ``rollout promote --full`` (the CLI from the host): Promoted, iris:v2 handed over to the stable
  InferenceService, all traffic back on stable, KServe rolls stable's pod and the stable Service
  answers iris:v2. The hand-off says Complete only once every Ready pod of stable's predictor
  Service answers iris:v2 and its Deployment is rolled out: the controller asks the pods
  (rollout/controller/served.py), since KServe keeps the InferenceService Ready through the
  rolling update;
- a new rollout whose candidate the pods do not serve (iris-candidate's new pods refuse the
  pinned digest and never start, its old pod still answers iris:v2, KServe still says Ready) gets
  no traffic: CandidateReady False (ServedModelMismatch) and a Warning Event name iris:v1 pinned
  and iris:v2 found; once the pin goes and the new pods serve iris:v1, the first step sends 10 %.

The Prometheus the controller queries is that same pod_prometheus, listening on the node's address
(``start(listen=NODE_IP)``: pods reach ``http://10.200.0.2:PORT``); the chart's
``controller.prometheusUrl`` names that address (Prometheus is a process, not a Service).

Each phase's time is measured and printed (``-s``); tests/k8s/README.md, "Real pods end to end",
records them.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client

from rollout.metrics.names import REQUESTS_TOTAL, ROLLOUT_CANDIDATE_WEIGHT
from rollout.metrics.templates import PREDICT_ENDPOINTS
from tests.e2e import helmkit
from tests.k8s import buildah_images, crds, pod_prometheus
from tests.k8s import cluster_rollouts as cr
from tests.k8s.harness import _die_with_parent
from tests.k8s.kserve import KServe
from tests.k8s.node import NODE_IP, Node
from tests.kit import until

pytestmark = pytest.mark.k8s

T = TypeVar("T")
NAMESPACE = "models"
RELEASE = "br"
CONTROLLER = f"{RELEASE}-bento-rollout-controller"
ROLLOUT = "iris"
ISVCS = {"stable": ("iris-stable", "v1"), "candidate": ("iris-candidate", "v2")}
IRIS_ROW = [5.1, 3.5, 1.4, 0.2]  # a setosa
KSERVE = ("serving.kserve.io", "v1beta1", "inferenceservices")
MODELROLLOUT = ("bento-rollout.io", "v1alpha1", "modelrollouts")
VIRTUALSERVICE = ("networking.istio.io", "v1", "virtualservices")


@dataclass
class Release:
    """The installed chart and what the tests share: clients, Prometheus, the measured times."""

    node: Node
    api: Any
    prom: pod_prometheus.PodPrometheus
    installed_at: float  # time.monotonic() when `helm install` began
    installed_wall: float  # time.time() then: the API's timestamps (whole seconds) are read against it
    times: dict[str, float] = field(default_factory=dict)
    ready_pods: dict[str, str] = field(default_factory=dict)  # role -> pod name
    sent: dict[str, int] = field(default_factory=dict)  # role -> requests counted in model_requests_total
    served_at_handoff: list[str] | None = (
        None  # stable pods Ready with iris:v2 when the hand-off was Complete
    )
    old_at_handoff: list[str] | None = None  # ... and those with iris:v1

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)


def _until(what: str, probe: Callable[[], T | None], timeout: float, node: Node, why: Callable[[], str]) -> T:
    return until(what, probe, timeout, node.check_alive, why)


def _values(bento: str, controller: str, prometheus_url: str, redis: str) -> dict[str, Any]:
    """The harness's install values (tests/k8s/cluster_rollouts.py, one source), in istio mode (the
    VirtualService is only an object here: no Istio runs) with the candidate and its rollout."""
    values = cr.install_values(bento, controller, prometheus_url, redis)
    values.pop("routing.gatewayApi.parentRefs")
    return {**values, "routing.mode": "istio", "models.candidate": "iris:v2", "rollout.enabled": True}


@dataclass(frozen=True)
class Images:
    bento: buildah_images.BuiltImage
    controller: buildah_images.BuiltImage
    redis: buildah_images.BuiltImage
    seconds: float
    began: float  # time.monotonic() at the module's first fixture


@pytest.fixture(scope="module")
def images() -> Images:
    """The project's images, built (or their cached archives found) before the node starts."""
    began = time.monotonic()
    bento, controller = buildah_images.bento_image(), buildah_images.controller_image()
    redis = buildah_images.redis_image()
    return Images(bento, controller, redis, time.monotonic() - began, began)


@pytest.fixture(scope="module")
def release(
    images: Images, kserve_node: KServe, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Release]:
    node = kserve_node.node
    began = time.monotonic()
    times = {"images (built or cached)": images.seconds, "node + KServe": kserve_node.seconds}
    bento, controller = images.bento, images.controller
    mark = time.monotonic()
    for built in (bento, controller, images.redis):
        node.import_image(built.image)
    times["ctr import of the three"] = time.monotonic() - mark
    mark = time.monotonic()
    others = [s for s in crds.load_sources() if s.module != crds.KSERVE_MODULE]
    with node.control_plane.http(timeout=60) as http:
        crds.install_pinned(http, others)  # Istio, Gateway API, Prometheus Operator (KServe's are in)
    times["the other pinned CRDs"] = time.monotonic() - mark
    workdir = tmp_path_factory.mktemp("cluster-pods")
    prom = pod_prometheus.start(node, workdir / "prometheus", listen=NODE_IP)  # pods reach it there
    api = node.control_plane.api_client()
    try:
        client.CoreV1Api(api).create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE))
        )
        values = _values(
            bento.image.ref, controller.image.ref, f"http://{NODE_IP}:{prom.port}", images.redis.image.ref
        )
        mark, wall = time.monotonic(), time.time()
        result = helmkit.run_helm(
            ["install", RELEASE, str(helmkit.CHART), "--namespace", NAMESPACE, *helmkit.set_args(values)],
            workdir / "helm", kubeconfig=node.control_plane.kubeconfig,
        )  # fmt: skip
        assert result.returncode == 0, f"helm install failed:\n{result.stderr}"
        times["helm install"] = time.monotonic() - mark
        yield Release(node, api, prom, mark, wall, times)
    finally:
        print("\n--- real pods end to end: seconds per phase ---")
        for what, seconds in times.items():
            print(f"{what:>50}: {seconds:6.1f}")
        print(f"{'after node + KServe, to the teardown':>50}: {time.monotonic() - began:6.1f}")
        print(f"{'module, images to the teardown':>50}: {time.monotonic() - images.began:6.1f}")
        prom.stop()
        api.close()


def _pod_state(rel: Release, selector: str) -> str:
    out = []
    for pod in rel.core.list_namespaced_pod(NAMESPACE, label_selector=selector).items:
        statuses = [
            (c.name, c.ready, c.restart_count, c.state.to_dict()) for c in pod.status.container_statuses or []
        ]
        out.append(f"{pod.metadata.name} {pod.status.phase} {statuses}")
        log = rel.node.pod_log(NAMESPACE, pod.metadata.name)
        out.append(log if len(log) < 6000 else f"{log[:3000]}\n[...]\n{log[-3000:]}")
    events = rel.core.list_namespaced_event(NAMESPACE).items
    out += [
        f"event {e.involved_object.kind}/{e.involved_object.name}: {e.reason} {e.message}"
        for e in events[-30:]
    ]
    return "\n".join(out)


def _ready_pod(rel: Release, selector: str) -> str | None:
    for pod in rel.core.list_namespaced_pod(NAMESPACE, label_selector=selector).items:
        for cs in pod.status.container_statuses or []:
            if cs.restart_count > 0 or cs.state.terminated is not None:
                raise AssertionError(f"{pod.metadata.name} exited:\n{_pod_state(rel, selector)}")
        if any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []):
            return str(pod.metadata.name)
    return None


def _iso(stamp: str) -> float:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _pod_times(rel: Release, name: str) -> tuple[float, float]:
    """A pod's container start and its Ready transition, in seconds after `helm install` began
    (from the API's timestamps, whole seconds: the polls of these tests come later)."""
    pod = rel.core.read_namespaced_pod(name, NAMESPACE)
    (cs,) = pod.status.container_statuses
    (ready,) = [c for c in pod.status.conditions if c.type == "Ready"]
    started = cs.state.running.started_at.timestamp()
    return started - rel.installed_wall, ready.last_transition_time.timestamp() - rel.installed_wall


CURL_COULD_NOT_CONNECT = 7


def _post(
    node: Node, url: str, body: dict[str, Any], connect_for: float = 30
) -> tuple[dict[str, str], dict[str, Any]]:
    """POST from the node netns; the headers and the JSON answer. A refused connection is tried
    again for ``connect_for`` seconds: a pod turns Ready before kube-proxy has written its
    Service's rules (the EndpointSlice update, then kube-proxy's sync), and until then the
    ClusterIP refuses."""
    deadline = time.monotonic() + connect_for
    while True:
        proc = node.run("curl", "-sS", "--fail-with-body", "-m", "10", "-D", "/dev/stderr", "-H",
                        "content-type: application/json", "--data", json.dumps(body), url)  # fmt: skip
        if proc.returncode != CURL_COULD_NOT_CONNECT or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert proc.returncode == 0, f"POST {url}: {proc.returncode} {proc.stderr}\n{proc.stdout}"
    headers = {}
    for line in proc.stderr.splitlines():
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers, json.loads(proc.stdout)


def _rollout_status(rel: Release) -> dict[str, Any]:
    obj = rel.custom.get_namespaced_custom_object(*MODELROLLOUT[:2], NAMESPACE, MODELROLLOUT[2], ROLLOUT)
    return dict(obj.get("status") or {})


def _is_step(event: dict[str, Any], weight: int) -> bool:
    return bool(event["reason"] == "StepStarted" and event["message"].endswith(f"setWeight {weight}"))


def _vs_weights(rel: Release) -> dict[str, int]:
    vs = rel.custom.get_namespaced_custom_object(*VIRTUALSERVICE[:2], NAMESPACE, VIRTUALSERVICE[2], "iris")
    (primary,) = [r for r in vs["spec"]["http"] if r["name"] == "primary"]
    return {d["destination"]["host"].removesuffix("-predictor"): d["weight"] for d in primary["route"]}


def _routes_agree(rel: Release) -> bool:
    weights = _rollout_status(rel)["weights"]
    return _vs_weights(rel) == {"iris-stable": weights["stable"], "iris-candidate": weights["candidate"]}


def test_kserve_runs_both_predictors_ready_through_the_charts_probes(release: Release) -> None:
    rel = release
    for role, (isvc, _version) in ISVCS.items():
        selector = f"serving.kserve.io/inferenceservice={isvc}"
        pod = _until(f"a Ready pod of {isvc}", lambda s=selector: _ready_pod(rel, s), 300, rel.node,
                     lambda s=selector: _pod_state(rel, s))  # fmt: skip
        rel.ready_pods[role] = pod
        started, ready = _pod_times(rel, pod)
        rel.times[f"helm install -> {role} container started"] = started
        rel.times[f"helm install -> {role} pod Ready"] = ready
        deployment = rel.apps.read_namespaced_deployment(f"{isvc}-predictor", NAMESPACE)
        assert (deployment.status.ready_replicas or 0) >= 1
        (container,) = deployment.spec.template.spec.containers
        assert container.image.startswith("bento-rollout.test/bento:")
        env = {e.name: e.value for e in container.env}
        assert env["BENTO_MODEL_TAG"] == f"iris:{ISVCS[role][1]}", env

    def isvc_ready(name: str) -> dict[str, Any] | None:
        obj = rel.custom.get_namespaced_custom_object(*KSERVE[:2], NAMESPACE, KSERVE[2], name)
        conds = {c["type"]: c["status"] for c in (obj.get("status") or {}).get("conditions") or []}
        return obj if conds.get("Ready") == "True" else None

    for isvc, _version in ISVCS.values():
        obj = _until(f"KServe marks {isvc} Ready", lambda n=isvc: isvc_ready(n), 60, rel.node, lambda: "")
        assert obj["status"]["deploymentMode"] == "Standard"
        assert obj["status"]["address"]["url"] == f"http://{isvc}-predictor.{NAMESPACE}.svc.cluster.local"


def test_each_predictor_service_answers_with_its_own_model(release: Release) -> None:
    rel = release
    infer = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": IRIS_ROW}]}
    for role, (isvc, version) in ISVCS.items():
        svc = rel.core.read_namespaced_service(f"{isvc}-predictor", NAMESPACE)
        base = f"http://{svc.spec.cluster_ip}:{svc.spec.ports[0].port}"
        headers, answer = _post(rel.node, f"{base}/v2/models/iris/infer", infer)
        if role == "stable":
            rel.times["helm install -> first prediction"] = time.monotonic() - rel.installed_at
        assert answer["model_name"] == "iris" and answer["model_version"] == version, answer
        assert headers["x-model-version"] == version and headers["x-model-name"] == "iris"
        outputs = {o["name"]: o for o in answer["outputs"]}
        assert outputs["predictions"]["data"] == ["setosa"]
        headers, answer = _post(rel.node, f"{base}/predict", {"instances": [IRIS_ROW, IRIS_ROW]})
        assert headers["x-model-version"] == version, headers
        assert answer["predictions"] == ["setosa", "setosa"], answer
        rel.sent[role] = 2


def test_prometheus_scrapes_both_pods_through_the_charts_podmonitor(release: Release) -> None:
    rel = release
    assert rel.sent, "the predictions test runs first"
    mark = time.monotonic()
    rel.prom.sync()
    for role, (_isvc, version) in ISVCS.items():
        pod = rel.ready_pods[role]
        # selected as the analysis templates select them: by their own endpoint label (predict, infer)
        labels = f'namespace="{NAMESPACE}", pod="{pod}", version="{version}", {PREDICT_ENDPOINTS}'
        query = f"sum({REQUESTS_TOTAL}{{{labels}}})"

        def counted(q: str = query, n: int = rel.sent[role]) -> float | None:
            value = rel.prom.query(q)
            return value if value is not None and value >= n else None

        _until(f"{REQUESTS_TOTAL} of {pod} >= {rel.sent[role]}", counted, 60, rel.node,
               lambda: f"{rel.prom.targets()}\n{rel.prom.log_tail()}")  # fmt: skip
        (target,) = [t for t in rel.prom.targets(f"podMonitor/{NAMESPACE}/") if t.labels.get("pod") == pod]
        assert target.health == "up" and target.labels["namespace"] == NAMESPACE, target
        assert target.labels["container"] == "kserve-container", target
    rel.times["sync -> both pods' requests in Prometheus"] = time.monotonic() - mark


def test_the_controller_in_a_pod_reconciles_the_charts_modelrollout(release: Release) -> None:
    rel = release
    selector = "app.kubernetes.io/component=controller"
    pod = _until("the controller pod Ready", lambda: _ready_pod(rel, selector), 180, rel.node,
                 lambda: _pod_state(rel, selector))  # fmt: skip
    spec = rel.core.read_namespaced_pod(pod, NAMESPACE).spec
    assert spec.service_account_name == CONTROLLER  # the chart's Role, through its projected token
    assert spec.containers[0].image.startswith("bento-rollout.test/controller:")
    started, ready = _pod_times(rel, pod)
    rel.times["helm install -> controller container started"] = started
    rel.times["helm install -> controller Ready"] = ready

    def reconciled() -> dict[str, Any] | None:
        status = _rollout_status(rel)
        return status if any(_is_step(e, 10) for e in status.get("history") or []) else None

    # (the analysis after it may already have moved on: test 2's requests reached the candidate)
    status = _until("the ModelRollout's status at the first step (10 %)", reconciled, 180, rel.node,
                    lambda: _pod_state(rel, selector))  # fmt: skip
    first = _iso(status["history"][0]["time"]) - rel.installed_wall
    (step,) = [e for e in status["history"] if _is_step(e, 10)]
    rel.times["helm install -> first status (RolloutStarted)"] = first
    rel.times["helm install -> status at 10 % (StepStarted)"] = _iso(step["time"]) - rel.installed_wall
    assert status["phase"] == "Progressing", status
    assert status["candidateWeight"] in (10, 50), status
    conds = {c["type"]: c["status"] for c in status["conditions"]}
    assert conds.get("StableReady") == "True", status["conditions"]
    assert conds.get("CandidateReady") == "True", status["conditions"]
    # the VirtualService follows the status: 90 / 10 at the first step
    _until("the VirtualService's weights as the status says", lambda: _routes_agree(rel), 30, rel.node,
           lambda: f"{_rollout_status(rel).get('weights')} {_vs_weights(rel)}")  # fmt: skip

    # ... and Prometheus scrapes the controller's own series through the chart's second PodMonitor
    rel.prom.sync()
    query = (
        f'{ROLLOUT_CANDIDATE_WEIGHT}{{rollout="{ROLLOUT}", namespace="{NAMESPACE}", pod=~"{CONTROLLER}-.*"}}'
    )

    def exported() -> bool:
        return rel.prom.query(query) == _rollout_status(rel)["candidateWeight"]

    _until(f"{query} as the status says", exported, 60, rel.node,
           lambda: f"{rel.prom.targets(f'podMonitor/{NAMESPACE}/{CONTROLLER}/')}")  # fmt: skip


def test_the_analysis_measures_the_candidate_and_the_rollout_steps_on(release: Release) -> None:
    """When requests reach both versions as the VirtualService splits them (no Istio data plane
    here: the test sends them to each predictor Service, 9 to stable for 1 to the candidate), the
    controller's error-rate and latency-p99 measure the candidate on the Prometheus that scrapes
    the pods, Successful, and the rollout goes on to its next weight, 50 %, the VirtualService too."""
    rel = release
    ips = {role: rel.core.read_namespaced_service(f"{isvc}-predictor", NAMESPACE).spec.cluster_ip
           for role, (isvc, _v) in ISVCS.items()}  # fmt: skip
    post = "curl -s -o /dev/null -m 2 -H 'content-type: application/json' --data '{\"instances\": [[5.1, 3.5, 1.4, 0.2]]}'"
    loop = (f"while :; do for i in 1 2 3 4 5 6 7 8 9; do {post} http://{ips['stable']}/predict; done; "
            f"{post} http://{ips['candidate']}/predict; done")  # fmt: skip
    load = subprocess.Popen(rel.node.nsenter("sh", "-c", loop), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=_die_with_parent)  # fmt: skip
    mark = time.monotonic()
    try:

        def stepped() -> dict[str, Any] | None:
            status = _rollout_status(rel)
            return status if any(_is_step(e, 50) for e in status.get("history") or []) else None

        status = _until("the rollout at 50 % after a Successful analysis", stepped, 150, rel.node,
                        lambda: json.dumps(_rollout_status(rel).get("analysis"), indent=1))  # fmt: skip
    finally:
        os.killpg(load.pid, signal.SIGTERM)
        load.wait(10)
    rel.times["load -> analysis Successful, status at 50 %"] = time.monotonic() - mark
    measured = {a["name"]: a for a in status["analysis"]}
    for name in ("error-rate", "latency-p99"):
        assert measured[name]["successful"] >= 1 and measured[name]["value"] is not None, measured
    assert measured["error-rate"]["value"] == 0, measured
    assert status["phase"] == "Progressing" and status["candidateWeight"] >= 50, status
    _until("the VirtualService's weights as the status says", lambda: _routes_agree(rel), 30, rel.node,
           lambda: f"{_rollout_status(rel).get('weights')} {_vs_weights(rel)}")  # fmt: skip


def _serving_pods(rel: Release, isvc: str, tag: str) -> list[str]:
    """The Ready pods of ``isvc`` whose container runs ``tag`` (BENTO_MODEL_TAG)."""
    out = []
    for pod in rel.core.list_namespaced_pod(
        NAMESPACE, label_selector=f"serving.kserve.io/inferenceservice={isvc}"
    ).items:
        env = {e.name: e.value for e in pod.spec.containers[0].env or []}
        ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
        if ready and env.get("BENTO_MODEL_TAG") == tag and pod.metadata.deletion_timestamp is None:
            out.append(str(pod.metadata.name))
    return out


def test_promote_hands_the_candidates_model_to_stable_and_kserve_rolls_its_pods(release: Release) -> None:
    """`rollout promote --full` from the host (the CLI against the cluster, as a user): the controller
    promotes, hands iris:v2 over to the stable InferenceService (its predictor becomes the
    candidate's), routes all traffic back to stable, and KServe rolls stable's Deployment to a new
    pod: the stable Service answers iris:v2; `rollout status` says Promoted."""
    rel = release
    cli = Path(sys.executable).with_name("rollout")
    kubeconfig = str(rel.node.control_plane.kubeconfig)
    mark = time.monotonic()
    proc = subprocess.run(
        [str(cli), "promote", ROLLOUT, "--full", "-n", NAMESPACE, "--kubeconfig", kubeconfig],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, f"rollout promote: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"

    def handed_off() -> dict[str, Any] | None:
        status = _rollout_status(rel)
        return status if (status.get("handoff") or {}).get("phase") == "Complete" else None

    status = _until("the hand-off to stable Complete", handed_off, 240, rel.node,
                    lambda: f"{json.dumps(_rollout_status(rel).get('handoff'))}\n"
                            f"{_pod_state(rel, 'serving.kserve.io/inferenceservice=iris-stable')}")  # fmt: skip
    rel.served_at_handoff = _serving_pods(rel, "iris-stable", "iris:v2")
    rel.old_at_handoff = _serving_pods(rel, "iris-stable", "iris:v1")
    rel.times["rollout promote -> hand-off Complete"] = time.monotonic() - mark
    assert status["phase"] == "Promoted", status
    _until("the VirtualService all on stable", lambda: _vs_weights(rel) == {"iris-stable": 100, "iris-candidate": 0},
           30, rel.node, lambda: f"{_vs_weights(rel)}")  # fmt: skip
    isvc = rel.custom.get_namespaced_custom_object(*KSERVE[:2], NAMESPACE, KSERVE[2], "iris-stable")
    (container,) = isvc["spec"]["predictor"]["containers"]
    assert {e["name"]: e.get("value") for e in container["env"]}["BENTO_MODEL_TAG"] == "iris:v2"
    svc = rel.core.read_namespaced_service("iris-stable-predictor", NAMESPACE)
    infer = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": IRIS_ROW}]}

    def answers_v2() -> bool:  # KServe's rolling update of the stable Deployment, old pod gone
        if _serving_pods(rel, "iris-stable", "iris:v1"):
            return False
        headers, answer = _post(rel.node, f"http://{svc.spec.cluster_ip}/v2/models/iris/infer", infer)
        return bool(answer["model_version"] == "v2" and headers["x-model-version"] == "v2")

    _until("the stable Service answering iris:v2", answers_v2, 180, rel.node,
           lambda: _pod_state(rel, "serving.kserve.io/inferenceservice=iris-stable"))  # fmt: skip
    rel.times["rollout promote -> stable Service answers iris:v2"] = time.monotonic() - mark
    # ... and `rollout status` from the host says so
    shown = subprocess.run([str(cli), "status", ROLLOUT, "-n", NAMESPACE, "--kubeconfig", kubeconfig, "-o", "json"],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "Promoted" in shown.stdout, shown.stdout


def test_the_hand_off_completes_only_once_stable_serves_the_candidates_model(release: Release) -> None:
    """KServe v0.20.0 keeps a Standard-mode InferenceService Ready through the rolling update (and
    writes there the Deployment's observedGeneration), so the controller asks the pods: Complete
    only once every Ready pod of iris-stable-predictor answers iris:v2 and its Deployment is
    rolled out (it said Complete 4.8 s after the promote, no iris:v2 pod Ready, before)."""
    assert release.served_at_handoff is not None, "the promote test runs first"
    assert release.served_at_handoff, "hand-off Complete with no Ready stable pod running iris:v2"
    assert release.old_at_handoff == [], f"hand-off Complete while {release.old_at_handoff} served iris:v1"


PIN_NOBODY_HAS = "sha256:" + "0" * 64  # no artifact has it: a server pinned to it refuses to start


def _set_candidate_isvc(rel: Release, tag: str, digest: str | None) -> None:
    """iris-candidate's predictor as `helm upgrade --set models.candidate=TAG,models.candidateDigest=...`
    renders it: its BENTO_MODEL_TAG, BENTO_MODEL_DIGEST and model annotation."""
    obj = rel.custom.get_namespaced_custom_object(*KSERVE[:2], NAMESPACE, KSERVE[2], "iris-candidate")
    (container,) = obj["spec"]["predictor"]["containers"]
    env = [e for e in container["env"] if e["name"] not in ("BENTO_MODEL_TAG", "BENTO_MODEL_DIGEST")]
    pinned = [{"name": "BENTO_MODEL_DIGEST", "value": digest}] if digest else []
    container["env"] = [{"name": "BENTO_MODEL_TAG", "value": tag}, *pinned, *env]
    obj["metadata"].setdefault("annotations", {})["bento-rollout.io/model"] = tag
    rel.custom.replace_namespaced_custom_object(*KSERVE[:2], NAMESPACE, KSERVE[2], "iris-candidate", obj)


def _candidate_ready_condition(rel: Release) -> dict[str, Any]:
    conds = {c["type"]: c for c in _rollout_status(rel).get("conditions") or []}
    return dict(conds.get("CandidateReady") or {})


def test_a_candidate_whose_pods_serve_another_model_gets_no_traffic(release: Release) -> None:
    """A new rollout iris:v2 -> iris:v1 pinned to a digest no artifact has: iris-candidate's new pod
    refuses it and never becomes Ready, its old pod goes on answering iris:v2, and KServe keeps the
    InferenceService Ready (its own readiness says "ready"). The controller asks the pods: no
    traffic to the candidate, CandidateReady False and a Warning Event naming both. With the pin
    gone the new pods serve iris:v1 and the first step sends 10 %, no iris:v2 candidate pod left."""
    from rollout.routers.kserve import candidate_readiness

    rel = release
    assert (_rollout_status(rel).get("handoff") or {}).get("phase") == "Complete", (
        "the promote test runs first"
    )
    mark = time.monotonic()
    _set_candidate_isvc(rel, "iris:v1", PIN_NOBODY_HAS)  # the chart's order: the objects, then the rollout
    patch = {
        "spec": {"stable": {"model": "iris:v2"}, "candidate": {"model": "iris:v1", "digest": PIN_NOBODY_HAS}}
    }
    rel.custom.patch_namespaced_custom_object(*MODELROLLOUT[:2], NAMESPACE, MODELROLLOUT[2], ROLLOUT, patch)

    def held() -> dict[str, Any] | None:
        assert _vs_weights(rel)["iris-candidate"] == 0, "traffic moved to a candidate serving iris:v2"
        cond = _candidate_ready_condition(rel)
        return cond if cond.get("reason") == "ServedModelMismatch" else None

    cond = _until("CandidateReady False: ServedModelMismatch", held, 90, rel.node,
                  lambda: f"{_rollout_status(rel)}\n{_pod_state(rel, 'serving.kserve.io/inferenceservice=iris-candidate')}")  # fmt: skip
    rel.times["new rollout -> candidate held (pods serve iris:v2)"] = time.monotonic() - mark
    assert cond["status"] == "False"
    assert "serve iris:v2" in cond["message"], cond
    assert f"the ModelRollout's candidate is iris:v1 pinned to {PIN_NOBODY_HAS}" in cond["message"], cond

    def warned() -> bool:  # the Event is posted after the condition is written
        events = rel.core.list_namespaced_event(
            NAMESPACE, field_selector=f"involvedObject.name={ROLLOUT}"
        ).items
        return any(e.reason == "ServedModelMismatch" and e.type == "Warning" and "iris:v2" in e.message
                   for e in events)  # fmt: skip

    _until("a Warning Event ServedModelMismatch naming iris:v2", warned, 30, rel.node,
           lambda: str([(e.reason, e.message) for e in rel.core.list_namespaced_event(
               NAMESPACE, field_selector=f"involvedObject.name={ROLLOUT}").items[-10:]]))  # fmt: skip
    # what the InferenceService says would have let traffic through: KServe still reports it ready
    isvc = rel.custom.get_namespaced_custom_object(*KSERVE[:2], NAMESPACE, KSERVE[2], "iris-candidate")
    assert candidate_readiness(isvc).ready, candidate_readiness(isvc)
    assert _serving_pods(rel, "iris-candidate", "iris:v2"), "the old pod serves on"
    time.sleep(6)  # three more reconciles: still nothing to the candidate
    assert _vs_weights(rel)["iris-candidate"] == 0
    assert _rollout_status(rel)["weights"]["candidate"] == 0

    # the pin goes (from the rollout, then from the InferenceService): KServe rolls iris:v1 out
    unpin = {"spec": {"candidate": {"model": "iris:v1", "digest": None}}}
    rel.custom.patch_namespaced_custom_object(*MODELROLLOUT[:2], NAMESPACE, MODELROLLOUT[2], ROLLOUT, unpin)
    _set_candidate_isvc(rel, "iris:v1", None)
    mark = time.monotonic()

    def stepped() -> dict[str, Any] | None:
        status = _rollout_status(rel)
        if not any(_is_step(e, 10) for e in status.get("history") or []):
            return None
        return {"status": status, "old": _serving_pods(rel, "iris-candidate", "iris:v2")}

    seen = _until("the first step (10 %) once the pods serve iris:v1", stepped, 180, rel.node,
                  lambda: f"{_candidate_ready_condition(rel)}\n"
                          f"{_pod_state(rel, 'serving.kserve.io/inferenceservice=iris-candidate')}")  # fmt: skip
    rel.times["pin removed -> candidate pods serve iris:v1, 10 %"] = time.monotonic() - mark
    assert seen["old"] == [], f"10 % to the candidate while {seen['old']} served iris:v2"
    assert _serving_pods(rel, "iris-candidate", "iris:v1")
    assert _candidate_ready_condition(rel)["status"] == "True"
    _until("the VirtualService's weights as the status says", lambda: _routes_agree(rel), 30, rel.node,
           lambda: f"{_rollout_status(rel).get('weights')} {_vs_weights(rel)}")  # fmt: skip
