"""A real Prometheus scrapes real pods of the single-node cluster (tests/k8s/pod_prometheus.py), its
scrape configs generated from the PodMonitors and ServiceMonitors in the cluster as the Prometheus
Operator generates them: the pod a PodMonitor selects is scraped with the operator's target labels
and the counter it serves, the pod it does not select is discovered and dropped, a port name no
container has yields no target, a deleted pod's target goes, finished pods are dropped and Pending
ones with an IP kept. The chart's own monitors (``helm template``) are then applied against pods
shaped as KServe shapes them in each mode (Standard: the predictor's container ports as written;
Knative: Knative renames the user container's port ``user-port`` and adds the queue-proxy's ports),
the controller's pod template, and, on a node running the real KServe v0.20.0 controller, the pod
KServe makes from the chart's InferenceService."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client

from tests.e2e import helmkit
from tests.k8s import crds, kserve, pod_prometheus
from tests.k8s import node as nodekit
from tests.kit import until

# the first run builds Prometheus (pod_prometheus.build: about 9 min here) inside the first test
pytestmark = pytest.mark.k8s

T = TypeVar("T")
OPERATOR_MODULE = "github.com/prometheus-operator/prometheus-operator"


def _until(what: str, probe: Callable[[], T | None], timeout: float, prom: pod_prometheus.PodPrometheus) -> T:
    def alive() -> None:
        prom.check_alive()
        prom.node.check_alive()

    return until(what, probe, timeout, alive, lambda: f"--- prometheus.log ---\n{prom.log_tail()}", every=0.1)


@pytest.fixture(scope="module")
def prom(
    k8s_node: nodekit.Node, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[pod_prometheus.PodPrometheus]:
    sources = [s for s in crds.load_sources() if s.module == OPERATOR_MODULE]
    with k8s_node.control_plane.http(timeout=60) as http:
        crds.install_pinned(http, sources)  # PodMonitor, ServiceMonitor, PrometheusRule (v0.85.0)
    server = pod_prometheus.start(k8s_node, tmp_path_factory.mktemp("pod-prometheus"))
    print(f"\nPrometheus in the node netns ready in {server.started_in:.2f} s")
    try:
        yield server
    finally:
        server.stop()


# A static Prometheus text file served over HTTP/1.0 by busybox (``nc -ll -e``: a shell per
# connection) with the text format's Content-Type: Prometheus 3 refuses busybox httpd's
# application/octet-stream for a file with no extension. /v2/health/* answers 200 (the chart's
# probes), any other path 404.
SERVE = r"""read -r method path proto
CR=$(printf '\r')
while read -r line; do case "$line" in "$CR"|"") break;; esac; done
case "$path" in
  /metrics)
    printf 'HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nConnection: close\r\n\r\n'
    cat /tmp/metrics;;
  /v2/health/*) printf 'HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{}';;
  *) printf 'HTTP/1.0 404 Not Found\r\nConnection: close\r\n\r\n';;
esac
"""


def _serving(value: float, port: int = 8080) -> list[str]:
    """A container command serving one counter, ``demo_requests_total{code="200"} value``, at /metrics."""
    text = f'# TYPE demo_requests_total counter\ndemo_requests_total{{code="200"}} {value}\n'
    script = f"cat > /tmp/serve <<'EOF'\n{SERVE}EOF\nprintf '{text}' > /tmp/metrics && exec nc -ll -p {port} -e sh /tmp/serve"
    return ["sh", "-c", script]


def _container(image: str, name: str, ports: dict[str, int], command: list[str]) -> client.V1Container:
    return client.V1Container(
        name=name, image=image, image_pull_policy="Never", command=command,
        ports=[client.V1ContainerPort(name=n, container_port=p) for n, p in ports.items()],
    )  # fmt: skip


def _pod(name: str, labels: dict[str, str], containers: list[client.V1Container]) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1PodSpec(containers=containers, termination_grace_period_seconds=1),
    )


def _podmonitor(name: str, selector: dict[str, Any], endpoint: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {"name": name},
        "spec": {"selector": selector, "podMetricsEndpoints": [endpoint]},
    }


def _create_monitor(api: Any, ns: str, monitor: dict[str, Any]) -> None:
    monitor = {**monitor, "metadata": {**monitor["metadata"], "namespace": ns}}
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        "monitoring.coreos.com", "v1", ns, "podmonitors", monitor
    )


def _running(core: client.CoreV1Api, ns: str, names: set[str]) -> Callable[[], list[Any] | None]:
    def probe() -> list[Any] | None:
        pods = [p for p in core.list_namespaced_pod(ns).items if p.metadata.name in names]
        ok = [p for p in pods if p.status.phase == "Running" and p.status.pod_ip]
        return ok if len(ok) == len(names) else None

    return probe


def _dropped_pods(prom: pod_prometheus.PodPrometheus, pool: str) -> dict[str, set[str]]:
    """Pod name -> the container port names that service discovery found and relabeling dropped."""
    out: dict[str, set[str]] = {}
    for labels in prom.dropped(pool):
        pod = labels.get("__meta_kubernetes_pod_name", "")
        out.setdefault(pod, set()).add(labels.get("__meta_kubernetes_pod_container_port_name", ""))
    return out


def test_the_selected_pod_is_scraped_with_the_operators_labels_and_a_deleted_pod_leaves(
    prom: pod_prometheus.PodPrometheus, k8s_node: nodekit.Node, k8s_node_namespace: str
) -> None:
    ns, api = k8s_node_namespace, k8s_node.control_plane.api_client()
    core, image = client.CoreV1Api(api), k8s_node.images["busybox"].ref
    # Given two pods serving a counter on a container port named http, only one of them labelled web
    for name, tier, value in (("picked", "web", 42), ("other", "batch", 7)):
        container = _container(image, "metrics", {"http": 8080}, _serving(value))
        core.create_namespaced_pod(ns, _pod(name, {"app": "demo", "tier": tier}, [container]))
    pods = _until("both pods Running", _running(core, ns, {"picked", "other"}), 90, prom)
    ip = {p.metadata.name: p.status.pod_ip for p in pods}

    # When a PodMonitor selects app=demo, tier in (web) on port http, and Prometheus syncs
    selector = {
        "matchLabels": {"app": "demo"},
        "matchExpressions": [{"key": "tier", "operator": "In", "values": ["web"]}],
    }
    _create_monitor(api, ns, _podmonitor("demo", selector, {"port": "http", "interval": "1s"}))
    synced = time.monotonic()
    assert prom.sync() is True
    value = _until(
        "the picked pod's counter", lambda: prom.query(f'demo_requests_total{{namespace="{ns}"}}'), 60, prom
    )
    first_sample = time.monotonic() - synced
    print(f"\nfirst sample {first_sample:.2f} s after sync() (interval 1s)")

    # Then its series carries the counter it serves and the operator's target labels
    assert value == 42
    [(labels, _)] = prom.vector(f'demo_requests_total{{namespace="{ns}"}}')
    assert labels == {
        "__name__": "demo_requests_total", "code": "200", "namespace": ns, "pod": "picked",
        "container": "metrics", "endpoint": "http", "job": f"{ns}/demo", "instance": f"{ip['picked']}:8080",
    }  # fmt: skip
    pool = f"podMonitor/{ns}/demo/0"
    [target] = prom.targets(pool)
    assert (target.labels["pod"], target.url) == ("picked", f"http://{ip['picked']}:8080/metrics")
    _until("the target up", lambda: prom.targets(pool)[0].health == "up", 30, prom)
    # ... and the other pod was discovered and dropped by the selector, never scraped
    assert "other" in _dropped_pods(prom, pool)
    assert prom.query(f'up{{namespace="{ns}", pod="other"}}') is None
    assert prom.sync() is False  # nothing changed: no reload

    # When the picked pod is deleted, its target goes (service discovery watches the pods)
    core.delete_namespaced_pod("picked", ns)
    deleted = time.monotonic()
    prom.sync()
    _until("the deleted pod's target gone", lambda: not prom.targets(pool), 60, prom)
    print(f"target gone {time.monotonic() - deleted:.2f} s after the delete")


def test_a_port_name_no_container_has_yields_no_target(
    prom: pod_prometheus.PodPrometheus, k8s_node: nodekit.Node, k8s_node_namespace: str
) -> None:
    ns, api = k8s_node_namespace, k8s_node.control_plane.api_client()
    core, image = client.CoreV1Api(api), k8s_node.images["busybox"].ref
    core.create_namespaced_pod(
        ns, _pod("web", {"app": "demo"}, [_container(image, "m", {"http": 8080}, _serving(1))])
    )
    _until("the pod Running", _running(core, ns, {"web"}), 90, prom)
    # a PodMonitor selecting the pod on a port name it does not have, and one on the name it has
    _create_monitor(
        api,
        ns,
        _podmonitor("wrong-port", {"matchLabels": {"app": "demo"}}, {"port": "http1", "interval": "1s"}),
    )
    _create_monitor(
        api,
        ns,
        _podmonitor("right-port", {"matchLabels": {"app": "demo"}}, {"port": "http", "interval": "1s"}),
    )
    assert prom.sync() is True
    right, wrong = f"podMonitor/{ns}/right-port/0", f"podMonitor/{ns}/wrong-port/0"
    _until("the right port's target", lambda: prom.targets(right), 60, prom)
    # Service discovery found the pod and its port http for the wrong-port job; relabeling dropped it
    _until(
        "the pod discovered for wrong-port",
        lambda: _dropped_pods(prom, wrong).get("web") == {"http"},
        60,
        prom,
    )
    assert prom.targets(wrong) == []


def test_the_phase_filter_drops_finished_pods_and_keeps_pending_ones_with_an_ip(
    prom: pod_prometheus.PodPrometheus, k8s_node: nodekit.Node, k8s_node_namespace: str
) -> None:
    """The operator drops pods in phase Failed or Succeeded (filterRunning); it does not keep "only
    Running" pods: a Pending pod that has an IP (its image cannot be had) is a target, and down."""
    ns, api = k8s_node_namespace, k8s_node.control_plane.api_client()
    core, image = client.CoreV1Api(api), k8s_node.images["busybox"].ref
    labels = {"app": "phase"}
    core.create_namespaced_pod(
        ns, _pod("serving", labels, [_container(image, "m", {"http": 8080}, _serving(3))])
    )
    done = _pod("done", labels, [_container(image, "m", {"http": 8080}, ["true"])])
    done.spec.restart_policy = "Never"
    core.create_namespaced_pod(ns, done)
    missing = "bento-rollout.test/missing:0"  # never imported; imagePullPolicy Never: ErrImageNeverPull
    core.create_namespaced_pod(
        ns, _pod("stuck", labels, [_container(missing, "m", {"http": 8080}, ["true"])])
    )

    def phases() -> dict[str, tuple[str, str]] | None:
        found = {
            p.metadata.name: (p.status.phase, p.status.pod_ip) for p in core.list_namespaced_pod(ns).items
        }
        ok = found.get("serving", ("",))[0] == "Running" and found.get("done", ("",))[0] == "Succeeded"
        return found if ok and found.get("stuck", ("", None))[1] else None

    seen = _until("serving Running, done Succeeded, stuck with an IP", phases, 90, prom)
    assert seen["stuck"][0] == "Pending", seen
    _create_monitor(
        api, ns, _podmonitor("phase", {"matchLabels": labels}, {"port": "http", "interval": "1s"})
    )
    assert prom.sync() is True
    pool = f"podMonitor/{ns}/phase/0"
    _until("serving and stuck as targets", lambda: len(prom.targets(pool)) == 2, 60, prom)
    health = _until(
        "both scraped once",
        lambda: (
            h
            if "unknown" not in (h := {t.labels["pod"]: t.health for t in prom.targets(pool)}).values()
            else None
        ),
        30,
        prom,
    )
    assert health == {"serving": "up", "stuck": "down"}
    # the finished pod: dropped by the phase rule when the API still shows its IP, else never discovered
    dropped = [d for d in prom.dropped(pool) if d.get("__meta_kubernetes_pod_name") == "done"]
    print(f"\nthe Succeeded pod: {'discovered, dropped by phase' if dropped else 'not discovered (no IP)'}")
    assert all(d["__meta_kubernetes_pod_phase"] == "Succeeded" for d in dropped)


def test_listening_on_the_node_address_pods_reach_it(
    k8s_node: nodekit.Node, k8s_node_namespace: str, tmp_path: Path
) -> None:
    """start(listen=NODE_IP): a pod reaches Prometheus at 10.200.0.2:PORT (what a controller in a
    pod needs to query it); the host reaches it only through the forward."""
    ns, api = k8s_node_namespace, k8s_node.control_plane.api_client()
    server = pod_prometheus.start(k8s_node, tmp_path / "prom", listen=nodekit.NODE_IP)
    try:
        url = f"http://{nodekit.NODE_IP}:{server.port}/api/v1/status/buildinfo"
        client.CoreV1Api(api).create_namespaced_pod(ns, client.V1Pod(
            metadata=client.V1ObjectMeta(name="asker"),
            spec=client.V1PodSpec(restart_policy="Never", containers=[_container(
                k8s_node.images["busybox"].ref, "wget", {}, ["wget", "-q", "-O", "-", url])]),
        ))  # fmt: skip
        _until("the pod's answer", lambda: '"version":"3.5.0"' in k8s_node.pod_log(ns, "asker"), 60, server)
        assert server.query("vector(1)") == 1
    finally:
        server.stop()


def _kserve_pod_labels(isvc: dict[str, Any]) -> dict[str, str]:
    """The labels KServe v0.16 gives a predictor's pods (components/predictor.go buildObjectMeta):
    the InferenceService's labels, the predictor's ``labels``, then its own two."""
    return {
        **isvc["metadata"].get("labels", {}),
        **isvc["spec"]["predictor"].get("labels", {}),
        "serving.kserve.io/inferenceservice": isvc["metadata"]["name"],
        "component": "predictor",
    }


def _chart(home: Path, mode: str, ns: str) -> dict[str, list[dict[str, Any]]]:
    docs = helmkit.by_kind(helmkit.template(home, {"routing.mode": mode, "models.candidate": "iris:v2"}))
    for monitor in docs["PodMonitor"]:
        monitor["metadata"]["namespace"] = ns
    return docs


# Knative's queue-proxy ports (knative.dev/serving pkg/reconciler/revision/resources/queue.go)
QUEUE_PROXY_PORTS = {"queue-port": 8012, "http-autometric": 9090, "http-usermetric": 9091}


def _model_pods(image: str, isvc: dict[str, Any]) -> dict[str, client.V1Pod]:
    """A predictor pod of ``isvc`` as KServe makes it in each of its modes, serving /metrics on the
    Bento port: Standard (RawDeployment) keeps the predictor's container and ports as written
    (reconcilers/deployment); Knative (Serverless) has Knative's revision Deployment rename the
    user container's port ``user-port`` (resources/deploy.go) and add the queue-proxy."""
    [kc] = isvc["spec"]["predictor"]["containers"]
    [port] = kc["ports"]
    labels, number = _kserve_pod_labels(isvc), port["containerPort"]
    queue = _container(image, "queue-proxy", QUEUE_PROXY_PORTS, ["sleep", "3600"])
    return {
        "standard": _pod("standard", labels, [_container(image, kc["name"], {port["name"]: number}, _serving(5, number))]),
        "knative": _pod("knative", labels, [_container(image, kc["name"], {"user-port": number}, _serving(6, number)), queue]),
    }  # fmt: skip


@pytest.mark.parametrize(("mode", "shape"), [("istio", "standard"), ("kserve", "knative")])
def test_the_charts_podmonitors_find_the_pods_kserve_makes_in_each_mode_and_the_controller(
    prom: pod_prometheus.PodPrometheus,
    k8s_node: nodekit.Node,
    k8s_node_namespace: str,
    tmp_path: Path,
    mode: str,
    shape: str,
) -> None:
    """routing.mode istio (and gateway-api) makes Standard-mode InferenceServices, kserve one
    Knative-mode InferenceService: the chart's model PodMonitor of that mode must scrape the pod of
    that mode's shape (both shapes carry the same labels; only their port names differ), and its
    controller PodMonitor the controller's pod (from its Deployment's pod template)."""
    ns, api = k8s_node_namespace, k8s_node.control_plane.api_client()
    core, image = client.CoreV1Api(api), k8s_node.images["busybox"].ref
    chart = _chart(tmp_path, mode, ns)
    isvc = chart["InferenceService"][0]  # istio: the stable one; kserve: the only one
    for pod in _model_pods(image, isvc).values():
        core.create_namespaced_pod(ns, pod)
    # the controller's and the join exporter's pods, from their Deployments' pod templates
    deployments = {d["metadata"]["name"].rsplit("-", 1)[-1]: d for d in chart["Deployment"]}
    for pod_name, value in (("controller", 8), ("exporter", 9)):
        template = deployments[pod_name]["spec"]["template"]
        [cc] = template["spec"]["containers"]
        cports = {p["name"]: p["containerPort"] for p in cc["ports"]}
        serving = [_container(image, cc["name"], cports, _serving(value, cports["metrics"]))]
        core.create_namespaced_pod(ns, _pod(pod_name, template["metadata"]["labels"], serving))
    pods = {"standard", "knative", "controller", "exporter"}
    _until("the four pods Running", _running(core, ns, pods), 90, prom)

    monitors = {m["metadata"]["name"].rsplit("-", 1)[-1]: m for m in chart["PodMonitor"]}
    model, ctl, exporter = monitors["model"], monitors["controller"], monitors["exporter"]
    [endpoint] = model["spec"]["podMetricsEndpoints"]
    for monitor in (model, ctl, exporter):
        _create_monitor(api, ns, monitor)
    synced = time.monotonic()
    assert prom.sync() is True
    model_pool, ctl_pool = (f"podMonitor/{ns}/{m['metadata']['name']}/0" for m in (model, ctl))

    # The model PodMonitor scrapes the pod shaped for this mode ...
    job = f"{ns}/{model['metadata']['name']}"
    value = _until(
        "the model pod's counter", lambda: prom.query(f'demo_requests_total{{job="{job}"}}'), 60, prom
    )
    print(
        f"\n{mode}: port {endpoint['port']!r}, first sample {time.monotonic() - synced:.2f} s after sync() (interval {endpoint['interval']})"
    )
    assert value == {"standard": 5, "knative": 6}[shape]
    assert [(t.labels["pod"], t.labels["endpoint"]) for t in prom.targets(model_pool)] == [
        (shape, endpoint["port"])
    ]
    # ... and not the other: same labels, the port name it looks for is not on it
    other = {"standard": "knative", "knative": "standard"}[shape]
    _until(
        f"the {other} pod discovered and dropped",
        lambda: _dropped_pods(prom, model_pool).get(other),
        60,
        prom,
    )
    # The controller PodMonitor (port metrics) scrapes the controller's pod, and only it
    _until("the controller's target", lambda: prom.targets(ctl_pool), 60, prom)
    assert [(t.labels["pod"], t.labels["endpoint"]) for t in prom.targets(ctl_pool)] == [
        ("controller", "metrics")
    ]
    ctl_job = f"{ns}/{ctl['metadata']['name']}"
    assert (
        _until(
            "the controller's counter",
            lambda: prom.query(f'demo_requests_total{{job="{ctl_job}"}}'),
            60,
            prom,
        )
        == 8
    )
    # The join exporter's PodMonitor (port metrics) scrapes the exporter's pod, and only it
    exporter_pool = f"podMonitor/{ns}/{exporter['metadata']['name']}/0"
    _until("the join exporter's target", lambda: prom.targets(exporter_pool), 60, prom)
    assert [(t.labels["pod"], t.labels["endpoint"]) for t in prom.targets(exporter_pool)] == [
        ("exporter", "metrics")
    ]
    exporter_job = f"{ns}/{exporter['metadata']['name']}"
    assert (
        _until(
            "the join exporter's counter",
            lambda: prom.query(f'demo_requests_total{{job="{exporter_job}"}}'),
            60,
            prom,
        )
        == 9
    )


def test_the_charts_servicemonitor_finds_the_predictor_services_kserve_makes_in_standard_mode(
    prom: pod_prometheus.PodPrometheus, k8s_node: nodekit.Node, k8s_node_namespace: str, tmp_path: Path
) -> None:
    """monitoring.kind ServiceMonitor (istio / gateway-api routing: Standard mode): KServe makes a
    Deployment and a Service ``<isvc>-predictor`` per InferenceService (reconcilers/deployment,
    reconcilers/service: the predictor's labels, ``serving.kserve.io/inferenceservice``, the pods
    selected by ``app: isvc.<isvc>-predictor``, port 80 named as the container's first port, to its
    number). The chart's ServiceMonitor (targetPort = the Bento port) scrapes the pods behind both."""
    ns, api = k8s_node_namespace, k8s_node.control_plane.api_client()
    core, image = client.CoreV1Api(api), k8s_node.images["busybox"].ref
    values = {"routing.mode": "istio", "models.candidate": "iris:v2", "monitoring.kind": "ServiceMonitor"}
    chart = helmkit.by_kind(helmkit.template(tmp_path / "helm", values))
    [monitor] = chart["ServiceMonitor"]
    served = {}
    for value, isvc in enumerate(chart["InferenceService"], start=1):
        component = f"{isvc['metadata']['name']}-predictor"
        labels = _kserve_pod_labels(isvc)
        [kc] = isvc["spec"]["predictor"]["containers"]
        [port] = kc["ports"]
        pod_labels = {**labels, "app": f"isvc.{component}"}
        containers = [
            _container(
                image,
                kc["name"],
                {port["name"]: port["containerPort"]},
                _serving(value, port["containerPort"]),
            )
        ]
        core.create_namespaced_pod(ns, _pod(f"{component}-0", pod_labels, containers))
        svc_port = client.V1ServicePort(
            name=port["name"], port=80, target_port=port["containerPort"], protocol="TCP"
        )
        service = client.V1Service(
            metadata=client.V1ObjectMeta(name=component, labels=labels),
            spec=client.V1ServiceSpec(selector={"app": f"isvc.{component}"}, ports=[svc_port]),
        )
        core.create_namespaced_service(ns, service)
        served[component] = value
    _until("the predictor pods Running", _running(core, ns, {f"{c}-0" for c in served}), 90, prom)
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        "monitoring.coreos.com",
        "v1",
        ns,
        "servicemonitors",
        {**monitor, "metadata": {**monitor["metadata"], "namespace": ns}},
    )
    synced = time.monotonic()
    assert prom.sync() is True
    pool = f"serviceMonitor/{ns}/{monitor['metadata']['name']}/0"

    def scraped() -> dict[str, float] | None:
        found = {labels["job"]: v for labels, v in prom.vector(f'demo_requests_total{{namespace="{ns}"}}')}
        return found if len(found) == len(served) else None

    found = _until("both predictors' counters", scraped, 60, prom)
    print(f"\nServiceMonitor: both predictors scraped {time.monotonic() - synced:.2f} s after sync()")
    assert found == served  # job = the Service's name
    [endpoint] = monitor["spec"]["endpoints"]
    labels = {(t.labels["service"], t.labels["pod"], t.labels["endpoint"]) for t in prom.targets(pool)}
    assert labels == {(c, f"{c}-0", str(endpoint["targetPort"])) for c in served}


@pytest.fixture(scope="module")
def kserve_prom(
    kserve_node: kserve.KServe, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[pod_prometheus.PodPrometheus]:
    sources = [s for s in crds.load_sources() if s.module == OPERATOR_MODULE]
    with kserve_node.node.control_plane.http(timeout=60) as http:
        crds.install_pinned(http, sources)
    server = pod_prometheus.start(kserve_node.node, tmp_path_factory.mktemp("kserve-prometheus"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def kserve_namespace(kserve_node: kserve.KServe) -> Iterator[str]:
    core = client.CoreV1Api(kserve_node.node.control_plane.api_client())
    name = f"kserve-prom-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    with contextlib.suppress(client.ApiException):
        core.delete_namespace(name)


def test_the_charts_monitors_scrape_the_pods_the_real_kserve_makes_in_standard_mode(
    kserve_prom: pod_prometheus.PodPrometheus,
    kserve_node: kserve.KServe,
    kserve_namespace: str,
    tmp_path: Path,
) -> None:
    """The chart's stable InferenceService (istio routing: Standard mode), its Bento image swapped
    for busybox serving /metrics and /v2/health/* on the Bento port (labels, ports, probes,
    securityContext, volumes as the chart writes them), handed to the real KServe v0.20.0
    controller: its PodMonitor and its ServiceMonitor both scrape the pod KServe makes."""
    prom, node = kserve_prom, kserve_node.node
    api = node.control_plane.api_client()
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    ns = kserve_namespace
    values = {"routing.mode": "istio", "models.candidate": "iris:v2"}
    pod_chart = helmkit.by_kind(helmkit.template(tmp_path / "helm", values))
    svc_chart = helmkit.by_kind(
        helmkit.template(tmp_path / "helm", {**values, "monitoring.kind": "ServiceMonitor"})
    )
    isvc = next(i for i in pod_chart["InferenceService"] if i["metadata"]["name"].endswith("-stable"))
    isvc["metadata"]["namespace"] = ns
    [kc] = isvc["spec"]["predictor"]["containers"]
    port = kc["ports"][0]["containerPort"]
    kc.update(image=node.images["busybox"].ref, imagePullPolicy="Never", command=_serving(11, port)[:2],
              args=_serving(11, port)[2:])  # fmt: skip
    for secret in pod_chart.get("Secret", []):  # the feedback token the predictor's env refers to
        core.create_namespaced_secret(ns, {**secret, "metadata": {**secret["metadata"], "namespace": ns}})
    custom.create_namespaced_custom_object("serving.kserve.io", "v1beta1", ns, "inferenceservices", isvc)
    [model] = [m for m in pod_chart["PodMonitor"] if m["metadata"]["name"].endswith("-model")]
    [service_monitor] = svc_chart["ServiceMonitor"]
    _create_monitor(api, ns, model)
    custom.create_namespaced_custom_object(
        "monitoring.coreos.com",
        "v1",
        ns,
        "servicemonitors",
        {**service_monitor, "metadata": {**service_monitor["metadata"], "namespace": ns}},
    )

    def kserve_pod() -> Any:
        pods = core.list_namespaced_pod(
            ns, label_selector=f"serving.kserve.io/inferenceservice={isvc['metadata']['name']}"
        ).items
        return next((p for p in pods if p.status.phase == "Running" and p.status.pod_ip), None)

    pod = _until("KServe's predictor pod Running", kserve_pod, 120, prom)
    ports = {p.name: p.container_port for c in pod.spec.containers for p in c.ports or []}
    print(
        f"\nKServe's pod {pod.metadata.name}: containers {[c.name for c in pod.spec.containers]}, ports {ports}"
    )
    synced = time.monotonic()
    assert prom.sync() is True
    model_job, service = f"{ns}/{model['metadata']['name']}", f"{isvc['metadata']['name']}-predictor"

    def both() -> dict[str, float] | None:
        found = {labels["job"]: v for labels, v in prom.vector(f'demo_requests_total{{namespace="{ns}"}}')}
        return found if len(found) == 2 else None

    found = _until("the pod scraped by the PodMonitor and the ServiceMonitor", both, 60, prom)
    print(f"both monitors' first samples {time.monotonic() - synced:.2f} s after sync()")
    assert found == {model_job: 11, service: 11}
    pod_targets = prom.targets(f"podMonitor/{ns}/")
    assert [(t.labels["pod"], t.labels["endpoint"]) for t in pod_targets] == [(pod.metadata.name, "http1")]
    svc_targets = prom.targets(f"serviceMonitor/{ns}/")
    assert [(t.labels["service"], t.labels["pod"]) for t in svc_targets] == [(service, pod.metadata.name)]
