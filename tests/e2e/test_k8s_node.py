"""Real pods on the single-node cluster (tests/k8s/node.py): a Deployment of busybox httpd pods
built here (tests/k8s/images.py) becomes Running and Ready through a real readiness probe, a
ClusterIP Service answers through kube-proxy's iptables rules inside the node's network namespace,
the ReplicaSet replaces a deleted pod, pods reach the API server through the ``kubernetes``
Service and the API server reaches pods, Services and the kubelet (logs, exec, proxy), and a node changes no kernel setting of the host's and leaves no process, mount, network
namespace, interface, iptables rule or cgroup behind."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from kubernetes import client
from kubernetes.stream import stream

from tests.k8s import footprint
from tests.k8s import node as nodekit
from tests.k8s.node_config import KUBELET_SYSCTLS

pytestmark = pytest.mark.k8s

T = TypeVar("T")
HTTPD = (
    "mkdir -p /tmp/www && echo $HOSTNAME > /tmp/www/index.html && "
    "sleep 3 && exec httpd -f -p 8080 -h /tmp/www"  # not ready for 3 s: the probe must wait
)


def _until(
    what: str, probe: Callable[[], T | None], timeout: float = 60.0, node: nodekit.Node | None = None
) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node is not None:
            node.check_alive()
        value = probe()
        if value:
            return value
        time.sleep(0.2)
    logs = "" if node is None else f"\n--- kubelet.log ---\n{node.log('kubelet')}"
    raise AssertionError(f"{what}: not within {timeout:.0f} s{logs}")


def _pod_spec(image: str, command: str, probe: bool = True) -> client.V1PodSpec:
    container = client.V1Container(
        name="httpd",
        image=image,
        image_pull_policy="Never",
        command=["sh", "-c", command],
        ports=[client.V1ContainerPort(container_port=8080, name="http")],
        readiness_probe=client.V1Probe(
            http_get=client.V1HTTPGetAction(path="/index.html", port=8080), period_seconds=1
        )
        if probe
        else None,
    )
    return client.V1PodSpec(containers=[container], termination_grace_period_seconds=1)


def _deployment(name: str, image: str, replicas: int) -> client.V1Deployment:
    labels = {"app": name}
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels), spec=_pod_spec(image, HTTPD)
            ),
        ),
    )


def _ready_pods(core: client.CoreV1Api, ns: str, app: str) -> list[Any]:
    pods = core.list_namespaced_pod(ns, label_selector=f"app={app}").items
    return [
        p
        for p in pods
        if p.metadata.deletion_timestamp is None
        and p.status.phase == "Running"
        and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
    ]


def _answers(node: nodekit.Node, url: str, expected: set[str], timeout: float = 30.0) -> set[str]:
    """Hostnames that answer ``url`` from inside the node netns, until all of ``expected`` have."""
    seen: set[str] = set()

    def probe() -> bool:
        proc = node.run("curl", "-sS", "-m", "2", url, timeout=10)
        if proc.returncode == 0:
            seen.add(proc.stdout.strip())
        return expected <= seen

    _until(f"{expected} answering {url} (seen {seen})", probe, timeout, node)
    return seen


def _connect(node: nodekit.Node, target: str) -> str:
    """GET / through the API server's egress proxy with ``CONNECT target``, as kube-apiserver does."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(node.rundir / "egress.sock"))
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        reply = sock.recv(4096)
        assert reply.startswith(b"HTTP/1.1 200"), reply
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data.split(b"\r\n\r\n", 1)[1].decode()


def test_the_node_runs_the_pinned_kubelet_on_containerd(k8s_node: nodekit.Node) -> None:
    core = client.CoreV1Api(k8s_node.control_plane.api_client())
    status = core.read_node(nodekit.NODE_NAME).status
    assert status.node_info.kubelet_version == "v1.34.4"
    assert status.node_info.container_runtime_version.startswith("containerd://1.")
    assert {a.type: a.address for a in status.addresses}["InternalIP"] == nodekit.NODE_IP
    assert {c.type: c.status for c in status.conditions}["Ready"] == "True"
    images = {name for i in status.images for name in i.names}
    assert {i.ref for i in k8s_node.images.values()} <= images  # imported, never pulled


def test_a_deployment_serves_through_a_cluster_ip_and_a_deleted_pod_is_replaced(
    k8s_node: nodekit.Node, k8s_node_namespace: str
) -> None:
    ns, api = k8s_node_namespace, k8s_node.control_plane.api_client()
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    _until("default ServiceAccount", lambda: core.list_namespaced_service_account(ns).items)
    apps.create_namespaced_deployment(ns, _deployment("web", k8s_node.images["busybox"].ref, 2))
    svc = core.create_namespaced_service(
        ns,
        client.V1Service(
            metadata=client.V1ObjectMeta(name="web"),
            spec=client.V1ServiceSpec(
                selector={"app": "web"}, ports=[client.V1ServicePort(port=80, target_port="http")]
            ),
        ),
    )

    # Given two pods Running and Ready
    pods = _until(
        "2 pods Ready", lambda: p if len(p := _ready_pods(core, ns, "web")) == 2 else None, 90, k8s_node
    )
    for pod in pods:
        started: datetime = pod.status.container_statuses[0].state.running.started_at
        ready_at: datetime = next(c.last_transition_time for c in pod.status.conditions if c.type == "Ready")
        assert (ready_at - started).total_seconds() >= 2, (
            "Ready before httpd listened: the probe was not real"
        )
        assert pod.status.pod_ip.startswith("10.244.0.")
    names = {p.metadata.name for p in pods}

    # When a client inside the node netns calls the ClusterIP, kube-proxy spreads it over both
    url = f"http://{svc.spec.cluster_ip}/"
    assert _answers(k8s_node, url, names) == names
    # ... and the same Service answers on a 127.0.0.1 port of the host (forward())
    port = k8s_node.forward(svc.spec.cluster_ip, 80)
    assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).text.strip() in names
    # ... and through the API server (its egress into the node netns, tests/k8s/egress.py)
    with k8s_node.control_plane.http() as http:
        assert http.get(f"/api/v1/namespaces/{ns}/services/web:80/proxy/").text.strip() in names
    assert _connect(k8s_node, f"web.{ns}.svc:80").strip() in names  # a webhook's way: by Service name
    out = stream(core.connect_get_namespaced_pod_exec, sorted(names)[0], ns,
                 command=["hostname"], stderr=True, stdin=False, stdout=True, tty=False)  # fmt: skip
    assert out.strip() == sorted(names)[0]

    # When a pod is deleted, the ReplicaSet creates another one, and the Service moves to it
    victim = sorted(names)[0]
    core.delete_namespaced_pod(victim, ns)

    def replaced() -> list[Any] | None:
        ready = _ready_pods(core, ns, "web")
        current = {p.metadata.name for p in ready}
        return ready if len(ready) == 2 and victim not in current else None

    now = {p.metadata.name for p in _until("a replacement pod Ready", replaced, 90, k8s_node)}
    assert len(now - names) == 1
    assert _answers(k8s_node, url, now) >= now
    slices = client.DiscoveryV1Api(api).list_namespaced_endpoint_slice(
        ns, label_selector="kubernetes.io/service-name=web"
    )
    addresses = {
        a for s in slices.items for e in s.endpoints or [] if e.conditions.ready for a in e.addresses
    }
    assert len(addresses) == 2
    api.close()


def test_a_pod_reaches_the_api_server_through_the_kubernetes_service(
    k8s_node: nodekit.Node, k8s_node_namespace: str
) -> None:
    ns, api = k8s_node_namespace, k8s_node.control_plane.api_client()
    core = client.CoreV1Api(api)
    _until("default ServiceAccount", lambda: core.list_namespaced_service_account(ns).items)
    token = "$(cat /var/run/secrets/kubernetes.io/serviceaccount/token)"
    command = (
        f'wget -q -O - --no-check-certificate --header "Authorization: Bearer {token}" '
        "https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/version"
    )
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="api-client"),
        spec=client.V1PodSpec(
            restart_policy="Never",
            containers=[
                client.V1Container(
                    name="c",
                    image=k8s_node.images["busybox"].ref,
                    image_pull_policy="Never",
                    command=["sh", "-c", command],
                )
            ],
        ),
    )
    core.create_namespaced_pod(ns, pod)
    phase = _until(
        "the api-client pod finished",
        lambda: (
            p
            if (p := core.read_namespaced_pod("api-client", ns).status.phase) in ("Succeeded", "Failed")
            else None
        ),
        60,
        k8s_node,
    )
    log = k8s_node.pod_log(ns, "api-client")
    assert phase == "Succeeded", log
    assert '"gitVersion": "v1.34.4"' in log
    assert '"gitVersion": "v1.34.4"' in core.read_namespaced_pod_log("api-client", ns)  # kubectl logs
    api.close()


def _host_state() -> dict[str, Any]:
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    nat = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True).stdout
    # Kernel settings are not per namespace (or, for net.*, these are the host's): the kubelet
    # would set KUBELET_SYSCTLS, kube-proxy the conntrack limits.
    keys = [
        *KUBELET_SYSCTLS,
        "net/ipv4/ip_forward",
        "net/bridge/bridge-nf-call-iptables",
        "net/netfilter/nf_conntrack_max",
    ]
    sysctls = {
        k: (Path("/proc/sys") / k).read_text().strip() for k in keys if (Path("/proc/sys") / k).exists()
    }
    return {
        "links": {line.split(":")[1].strip().split("@")[0] for line in links.splitlines()},
        "kube_rules": [r for r in nat.splitlines() if "KUBE" in r or "10.244." in r or "10.96." in r],
        "sysctls": sysctls,
    }


def test_stopping_a_node_leaves_nothing_behind(tmp_path: Path) -> None:
    before = _host_state()
    node = nodekit.start(logdir=tmp_path)
    try:
        core = client.CoreV1Api(node.control_plane.api_client())
        _until("default ServiceAccount", lambda: core.list_namespaced_service_account("default").items)
        pod = client.V1Pod(
            metadata=client.V1ObjectMeta(name="web"),
            spec=_pod_spec(node.images["busybox"].ref, HTTPD, probe=False),
        )
        core.create_namespaced_pod("default", pod)
        _until(
            "pod Running",
            lambda: core.read_namespaced_pod("web", "default").status.phase == "Running",
            60,
            node,
        )
        # What there is to clean up: shims, the pause and httpd processes, mounts in the node's mount
        # namespace (none in the host's), a pod netns, the node netns with cni0 and a veth, rules.
        pids = node.pids() | {p.pid for p in node.control_plane.procs.values()}
        assert len(cgroup_pids := footprint.cgroup_pids(node.name)) >= 4, (
            cgroup_pids
        )  # shims, pause, httpd, ...
        containerd = node.procs["containerd"].pid
        node_mounts = Path(f"/proc/{containerd}/mountinfo").read_text()
        assert str(node.rundir / "containerd") in node_mounts and "/kubelet/pods/" in node_mounts
        assert footprint.mounts_under(node.rundir) == []
        assert node.netns in footprint.netns_names()
        node_links = subprocess.run(
            ["ip", "-n", node.netns, "-o", "link"], capture_output=True, text=True
        ).stdout
        assert "cni0" in node_links and "veth" in node_links
        assert "KUBE-SERVICES" in node.run("iptables", "-t", "nat", "-S").stdout
        during = _host_state()
        assert during == before, "the host's network namespace or kernel settings changed while the node ran"
        rundir, name = node.rundir, node.name
    finally:
        node.stop()

    alive = {p for p in pids if Path(f"/proc/{p}").exists() and "State:\tZ" not in _status(p)}
    assert alive == set(), f"processes left: {alive}"
    assert footprint.cgroup_pids(name) == set()
    assert not any((m / name).exists() for m in footprint.cgroup_hierarchies().values())
    assert name not in footprint.netns_names()
    assert footprint.mounts_under(rundir) == [] and not rundir.exists()
    assert _host_state() == before


def _status(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return "State:\tZ"
