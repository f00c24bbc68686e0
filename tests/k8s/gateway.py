"""A real Gateway API data plane on the single-node cluster: Traefik, its Kubernetes Gateway provider
watching the cluster's Gateways and HTTPRoutes and proxying requests to the pods they name, and its
Kubernetes CRD provider watching its own IngressRoutes and TraefikServices (the chart's traefik
routing mode: weights and a mirror, which the Gateway provider lacks).

``start(node, workdir)`` runs Traefik (``TRAEFIK_VERSION``, built from its Go module by
tests/k8s/build-tools.sh into .cache/traefik: no image can be pulled here) inside the node's network
namespace, as the test's own child, stopped by its pid. As a Traefik install on a cluster would:

- it authenticates as its own ServiceAccount (``traefik/traefik``, a TokenRequest token in a
  kubeconfig, not the harness's admin) bound to the ClusterRoles of Traefik's own documentation
  (``docs/content/reference/dynamic-configuration/kubernetes-gateway-rbac.yml`` and
  ``kubernetes-crd-rbac.yml``, read from the module in Go's module cache, nothing copied here);
  both providers use that one kubeconfig and watch every namespace;
- the GatewayClass ``traefik`` names its controller (``traefik.io/gateway-controller``); a
  ``Gateway`` (``gateway()``) whose HTTP listener has the port of Traefik's ``web`` entry point
  (8000) gets Traefik's status (Accepted, Programmed) and its address (the node's, 10.200.0.2);
- it routes by the HTTPRoutes attached to that Gateway: weights, header matches, to the
  ``EndpointSlice`` addresses of the backend Services (pod IPs, so no kube-proxy hop);
- and by the IngressRoutes on its ``web`` entry point (Traefik's CRDs are installed from the same
  module, tests/k8s/crd-sources.yaml): a TraefikService ``weighted`` or ``mirroring`` (the copy goes
  after the main service answered, with the request's headers, X-Request-ID included).

Its Prometheus metrics (``requests()``: requests by HTTP code per backend service, from
``traefik_service_requests_total``) are what users of the route saw, failed ones included.

What differs from Traefik in a pod: it is a process in the node netns (the data plane is the same
binary and configuration; the test does not need its pod), and it listens on the node address, so
pods and anything run in the netns (Locust) reach it at ``http://10.200.0.2:8000``; the host has no
route there but ``url``, a 127.0.0.1 port forwarded by ``Node.forward``.

Gateway API features Traefik v3.6 does not implement (checked in its provider's code,
pkg/provider/kubernetes/gateway): the ``RequestMirror`` filter (a route using it is refused,
"unsupported filter") and ``sessionPersistence`` (experimental channel). Called by
tests/k8s/cluster_rollouts.py (tests/e2e/test_cluster_gateway.py, test_cluster_shadow.py, ...).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from rollout.errors import ProcessError
from tests.k8s import crds, kserve
from tests.k8s.harness import _die_with_parent
from tests.k8s.node import NODE_IP, Node

__all__ = ["Traefik", "binary", "gateway", "missing", "start"]

# tests/k8s/build-tools.sh reads these two lines (the one place the version is written). v3.6 is
# the newest line whose go.mod says go 1.25 (v3.7 needs Go 1.26) and whose Gateway API client is
# v1.4.0, the CRDs tests/k8s/crd-sources.yaml installs (its provider lists BackendTLSPolicy v1).
TRAEFIK_VERSION = "v3.6.12"
TRAEFIK_MODULE = "github.com/traefik/traefik/v3"
ROOT = Path(__file__).resolve().parents[2]
TRAEFIK = ROOT / ".cache" / "traefik" / f"traefik-{TRAEFIK_VERSION}"
RBAC_DOCS = (
    "docs/content/reference/dynamic-configuration/kubernetes-gateway-rbac.yml",
    "docs/content/reference/dynamic-configuration/kubernetes-crd-rbac.yml",
)

NAMESPACE = "traefik"
ACCOUNT = "traefik"
GATEWAY_CLASS = "traefik"
CONTROLLER_NAME = "traefik.io/gateway-controller"
WEB_PORT = 8000  # the `web` entry point: a Gateway listener on this port is served by it
PING_PORT = 8080  # the `traefik` entry point: /ping (readiness) and /metrics
GATEWAY_API = "gateway.networking.k8s.io/v1"


def missing() -> list[str]:
    """What start() needs and is not built (``make tools``)."""
    return [] if os.access(TRAEFIK, os.X_OK) else [str(TRAEFIK)]


def binary() -> Path:
    if missing():
        raise ProcessError(f"{TRAEFIK} is not built ({TRAEFIK_MODULE}@{TRAEFIK_VERSION}): run `make tools`")
    return TRAEFIK


def apply(http: httpx.Client, docs: list[dict[str, Any]]) -> None:
    """Server-side apply of ``docs``, in order: kserve.apply (one apply for the harness's manifests)."""
    kserve.apply(http, docs)


def rbac_documents() -> list[dict[str, Any]]:
    """Traefik's documented ClusterRole and binding of each provider (Gateway API, CRD), bound to
    our account. The two documents name their objects alike; each pair gets the provider's name."""
    out: list[dict[str, Any]] = []
    for rel in RBAC_DOCS:
        path = crds.module_dir(TRAEFIK_MODULE, TRAEFIK_VERSION) / rel
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        provider = Path(rel).stem.removesuffix("-rbac")  # kubernetes-gateway, kubernetes-crd
        for doc in docs:
            doc["metadata"]["name"] = f"traefik-{provider}"
            if doc["kind"] == "ClusterRoleBinding":
                doc["roleRef"]["name"] = f"traefik-{provider}"
                doc["subjects"] = [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": NAMESPACE}]
        out += docs
    return out


def check_crds_pinned() -> None:
    """tests/k8s/crd-sources.yaml installs Traefik's CRDs at the binary's version, or start() refuses."""
    pinned = crds.pinned(TRAEFIK_MODULE)
    if pinned != TRAEFIK_VERSION:
        raise ProcessError(
            f"tests/k8s/crd-sources.yaml pins Traefik's CRDs at {pinned} but the binary is {TRAEFIK_VERSION} "
            "(gateway.TRAEFIK_VERSION): write the same version in both"
        )


def gateway(namespace: str, name: str = "inference-gateway") -> dict[str, Any]:
    """A Gateway of class ``traefik`` with one HTTP listener on the ``web`` entry point's port,
    accepting the HTTPRoutes of its own namespace (Gateway API's default)."""
    return {
        "apiVersion": GATEWAY_API,
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "gatewayClassName": GATEWAY_CLASS,
            "listeners": [{"name": "http", "protocol": "HTTP", "port": WEB_PORT}],
        },
    }


def _token(http: httpx.Client) -> str:
    resp = http.post(
        f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{ACCOUNT}/token",
        json={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
              "spec": {"expirationSeconds": 7200}},
    )  # fmt: skip
    if not resp.is_success:
        raise ProcessError(f"TokenRequest for {NAMESPACE}/{ACCOUNT}: {resp.status_code} {resp.text[:500]}")
    return str(resp.json()["status"]["token"])


def _kubeconfig(path: Path, server: str, ca: Path, token: str) -> None:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "traefik",
                "clusters": [
                    {"name": "node", "cluster": {"server": server, "certificate-authority": str(ca)}}
                ],
                "users": [{"name": ACCOUNT, "user": {"token": token}}],
                "contexts": [{"name": "traefik", "context": {"cluster": "node", "user": ACCOUNT}}],
            }
        )  # fmt: skip
    )
    path.chmod(0o600)


def static_config(log_file: Path) -> dict[str, Any]:
    """Traefik's static configuration: two entry points, the Gateway and CRD providers, Prometheus metrics."""
    return {
        "entryPoints": {
            "web": {"address": f"{NODE_IP}:{WEB_PORT}"},
            "traefik": {"address": f"{NODE_IP}:{PING_PORT}"},
        },
        "providers": {
            "kubernetesGateway": {"statusAddress": {"ip": NODE_IP}},
            # a Service without a ready endpoint (a version's pods restarting) fails its own share,
            # not the whole TraefikService (which Traefik's CRD provider drops otherwise)
            "kubernetesCRD": {"allowEmptyServices": True},
        },
        "ping": {"entryPoint": "traefik"},
        "metrics": {"prometheus": {"entryPoint": "traefik", "addServicesLabels": True}},
        "log": {"level": "INFO", "filePath": str(log_file), "noColor": True},
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
    }


@dataclass
class Traefik:
    """A running Traefik in ``node``'s netns; ``url`` (the ``web`` entry point) and ``metrics_url``
    are 127.0.0.1 addresses on the host, ``address`` its address inside the netns."""

    node: Node
    workdir: Path
    proc: subprocess.Popen[bytes]
    url: str
    metrics_url: str
    address: str = f"http://{NODE_IP}:{WEB_PORT}"
    started_in: float = 0.0
    _http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10))

    @property
    def log(self) -> Path:
        return self.workdir / "traefik.log"

    def log_tail(self, chars: int = 4000) -> str:
        out = self.workdir / "stdout.log"
        text = "".join(p.read_text(errors="replace") for p in (out, self.log) if p.exists())
        return text[-chars:]

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise ProcessError(f"traefik exited with {self.proc.returncode}:\n{self.log_tail()}")

    def requests(self) -> dict[tuple[str, str], float]:
        """``traefik_service_requests_total`` now: (service, code) -> requests. Traefik names a
        Gateway API backend service ``<namespace>-<service>-<port>``, a weighted one
        ``httproute-<namespace>-<route>-...-wrr``."""
        self.check_alive()
        text = self._http.get(self.metrics_url).text
        out: dict[tuple[str, str], float] = {}
        for line in text.splitlines():
            if not line.startswith("traefik_service_requests_total{"):
                continue
            labels_text, value = line[len("traefik_service_requests_total{") :].rsplit("} ", 1)
            labels = dict(
                (k, v.strip('"')) for k, v in (kv.split("=", 1) for kv in _split_labels(labels_text))
            )
            key = (labels.get("service", ""), labels.get("code", ""))
            out[key] = out.get(key, 0.0) + float(value)
        return out

    def stop(self) -> None:
        """SIGTERM to the pid this started (SIGKILL after 10 s); the workdir stays."""
        self._http.close()
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def _split_labels(text: str) -> list[str]:
    parts, cur, quoted = [], "", False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [p for p in [*parts, cur] if p]


def start(node: Node, workdir: Path, timeout: float = 60.0) -> Traefik:
    """Install Traefik's account, RBAC and GatewayClass, start it in ``node``'s netns and return
    once it answers /ping and has accepted the GatewayClass. Stop it with ``stop()``."""
    exe = binary()
    check_crds_pinned()
    workdir.mkdir(parents=True, exist_ok=True)
    pki = node.control_plane.pki
    api_port = int(node.control_plane.server.rsplit(":", 1)[1])
    gateway_class = {
        "apiVersion": GATEWAY_API, "kind": "GatewayClass", "metadata": {"name": GATEWAY_CLASS},
        "spec": {"controllerName": CONTROLLER_NAME},
    }  # fmt: skip
    with node.control_plane.http(timeout=30) as http:
        apply(http, [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": ACCOUNT, "namespace": NAMESPACE}},
            *rbac_documents(), gateway_class,
        ])  # fmt: skip
        token = _token(http)
    kubeconfig = workdir / "kubeconfig"
    _kubeconfig(kubeconfig, f"https://{NODE_IP}:{api_port}", pki / "ca.crt", token)
    config = workdir / "traefik.yml"
    config.write_text(yaml.safe_dump(static_config(workdir / "traefik.log"), sort_keys=False))
    url = f"http://127.0.0.1:{node.forward(NODE_IP, WEB_PORT)}"
    metrics_url = f"http://127.0.0.1:{node.forward(NODE_IP, PING_PORT)}/metrics"
    ping = metrics_url.removesuffix("/metrics") + "/ping"
    begun = time.monotonic()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "KUBECONFIG": str(kubeconfig)}
    with (workdir / "stdout.log").open("ab") as out:
        proc = subprocess.Popen(
            node.nsenter(str(exe), f"--configFile={config}"), stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=env, start_new_session=True, preexec_fn=_die_with_parent,
        )  # fmt: skip
    traefik = Traefik(node, workdir, proc, url, metrics_url)
    try:
        deadline = time.monotonic() + timeout
        accepted = ""
        while time.monotonic() < deadline:
            traefik.check_alive()
            try:
                if traefik._http.get(ping).status_code == 200:
                    accepted = _condition(
                        node, f"/apis/{GATEWAY_API}/gatewayclasses/{GATEWAY_CLASS}", "Accepted"
                    )
                    if accepted == "True":
                        break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            raise ProcessError(
                f"Traefik not ready within {timeout:.0f} s (GatewayClass Accepted={accepted or '?'}):\n"
                f"{traefik.log_tail()}"
            )
    except BaseException:
        traefik.stop()
        raise
    traefik.started_in = time.monotonic() - begun
    return traefik


def _condition(node: Node, path: str, kind: str) -> str:
    with node.control_plane.http(timeout=10) as http:
        resp = http.get(path)
    if not resp.is_success:
        return ""
    for cond in resp.json().get("status", {}).get("conditions", []):
        if cond.get("type") == kind:
            return str(cond.get("status"))
    return ""


def wait_programmed(node: Node, traefik: Traefik, namespace: str, name: str, timeout: float = 30.0) -> float:
    """Seconds until Traefik says the Gateway ``namespace/name`` is Programmed."""
    began = time.monotonic()
    path = f"/apis/{GATEWAY_API}/namespaces/{namespace}/gateways/{name}"
    state = ""
    while time.monotonic() - began < timeout:
        traefik.check_alive()
        state = _condition(node, path, "Programmed")
        if state == "True":
            return time.monotonic() - began
        time.sleep(0.2)
    raise ProcessError(
        f"Gateway {namespace}/{name} not Programmed within {timeout:.0f} s ({state}):\n{traefik.log_tail()}"
    )
