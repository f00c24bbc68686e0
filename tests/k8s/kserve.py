"""The real KServe controller on the single-node cluster (fixture ``kserve_node`` in fixtures.py).

``install(node)`` deploys KServe as KServe's own manifests do, in Standard (RawDeployment) mode:

- the KServe CRDs of tests/k8s/crd-sources.yaml (crds.py), whose KServe version is also the one
  of the controller binary (tests/k8s/build-tools.sh reads it there and builds ``cmd/manager``
  from that module into ``.cache/bin/kserve-manager``);
- an image holding only that static binary (``/manager``; a layer of ours, ``images.oci_archive``),
  imported into the node's containerd;
- KServe's own manifests, read from the module in the Go module cache (nothing of them is copied
  into this repository) and rendered here as their kustomize bases would be: ``config/base``'s
  Namespace, ``config/rbac`` (ServiceAccount, ClusterRole, bindings, leader-election Role),
  ``config/manager`` (the Deployment ``kserve-controller-manager``), ``config/configmap``
  (``inferenceservice-config``) and ``config/webhook`` (the webhook Service and configurations),
  all in namespace ``kserve``. What cert-manager and ``config/default`` would add is done here:
  a CA and a serving certificate made with openssl go into the Secret the manager mounts
  (``kserve-webhook-server-cert``) and into the webhooks' ``caBundle``.

What differs from an upstream install, and why (``RENDER_CHANGES``): the Deployment runs our image
with ``imagePullPolicy: Never`` (no registry here) and ``runAsUser/runAsGroup: 65532`` (what the
upstream distroless ``nonroot`` image sets as its USER; ``images.oci_archive`` writes no user and
the manifest says ``runAsNonRoot``); the manager's readiness probe looks first after 1 s, then
every 2 s (``READINESS_CHANGES``; upstream 30 s and 5 s, about half of a node + KServe start here;
the liveness probe keeps upstream's 30 s); the ConfigMap says ``defaultDeploymentMode: Standard``
and ``disableIngressCreation`` / ``disableIstioVirtualHost`` (no Istio, no ingress controller); the
kube-rbac-proxy sidecar of ``config/default`` is not added (its image cannot be pulled), so the
manager serves metrics on its own ``:8080`` as ``config/manager`` says.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from rollout.errors import InvalidObjectError, ProcessError
from tests.k8s import crds, harness
from tests.k8s.images import CACHE_DIR, REGISTRY, Image, oci_archive
from tests.k8s.node import Node

NAMESPACE = "kserve"
MANAGER = "kserve-controller-manager"
WEBHOOK_SERVICE = "kserve-webhook-server-service"
CERT_SECRET = "kserve-webhook-server-cert"
CONFIG_MAP = "inferenceservice-config"
NONROOT = 65532  # the USER of gcr.io/distroless/static:nonroot, KServe's base image
FIELD_MANAGER = "bento-rollout-tests"
# The bases read from the module's config/ dir, in the order they are applied.
BASES = ("base/namespace.yaml", "rbac", "configmap", "manager", "webhook")
# The manager's readiness probe: upstream waits initialDelaySeconds 30 before its first look
# (periodSeconds 5), half of a node + KServe start here, while the manager serves /readyz within
# about a second of its start; install() also waits for the webhooks themselves (a dry run).
# Its livenessProbe keeps upstream's 30 s, so a slow start is never killed for it.
READINESS_CHANGES = {"initialDelaySeconds": 1, "periodSeconds": 2}
RENDER_CHANGES = {
    "deploy": {"defaultDeploymentMode": "Standard"},
    "ingress": {"disableIngressCreation": True, "disableIstioVirtualHost": True},
}

# kind -> (API path prefix, plural, namespaced) for what KServe's manifests hold.
_RESOURCES = {
    "Namespace": ("/api/v1", "namespaces", False),
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "ConfigMap": ("/api/v1", "configmaps", True),
    "Secret": ("/api/v1", "secrets", True),
    "Service": ("/api/v1", "services", True),
    "Deployment": ("/apis/apps/v1", "deployments", True),
    "ClusterRole": ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles", True),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
    "MutatingWebhookConfiguration": (
        "/apis/admissionregistration.k8s.io/v1", "mutatingwebhookconfigurations", False,
    ),
    "ValidatingWebhookConfiguration": (
        "/apis/admissionregistration.k8s.io/v1", "validatingwebhookconfigurations", False,
    ),
    # what gateway.py applies with the same apply()
    "GatewayClass": ("/apis/gateway.networking.k8s.io/v1", "gatewayclasses", False),
    "Gateway": ("/apis/gateway.networking.k8s.io/v1", "gateways", True),
}  # fmt: skip


@dataclass(frozen=True)
class KServe:
    """KServe as installed on a node: its version, the manager's image and the webhooks' CA."""

    node: Node
    version: str
    image: Image
    ca_bundle: bytes  # PEM of the CA that signed the webhook server's certificate
    seconds: float  # from ``since`` (default: install's start) to the webhooks answering
    install_seconds: float  # install() alone: image, CRDs, manifests, the manager Ready


def source() -> crds.CrdSource:
    """The KServe entry of crd-sources.yaml: the one place its version is written."""
    version = crds.pinned(crds.KSERVE_MODULE)
    return next(s for s in crds.load_sources() if s.module == crds.KSERVE_MODULE and s.version == version)


def manager_binary(version: str) -> Path:
    """``.cache/bin/kserve-manager-VERSION``, built by ``make tools`` (build-tools.sh)."""
    path = harness.BIN_DIR / f"kserve-manager-{version}"
    if not os.access(path, os.X_OK):
        raise ProcessError(f"{path} is missing: run `make tools` (tests/k8s/build-tools.sh builds it)")
    return path


def _layer(binary: bytes) -> bytes:
    """A reproducible tar: ``/manager``, ``/tmp`` and ``/etc/passwd`` naming the nonroot user."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def add(name: str, kind: bytes, mode: int, data: bytes = b"") -> None:
            info = tarfile.TarInfo(name)  # mtime 0, owner root: the same bytes for the same binary
            info.type, info.mode, info.size = kind, mode, len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)

        add("etc", tarfile.DIRTYPE, 0o755)
        passwd = f"nonroot:x:{NONROOT}:{NONROOT}:nonroot:/tmp:/sbin/nologin\n"
        add("etc/passwd", tarfile.REGTYPE, 0o644, passwd.encode())
        add("tmp", tarfile.DIRTYPE, 0o1777)
        add("manager", tarfile.REGTYPE, 0o755, binary)
    return buf.getvalue()


def manager_image(version: str, cache_dir: Path = CACHE_DIR) -> Image:
    """The manager's image (an OCI archive, cached by a hash of the binary)."""
    binary = manager_binary(version).read_bytes()
    key = hashlib.sha256(binary).hexdigest()[:12]
    ref = f"{REGISTRY}/kserve-controller:{version}-{key}"
    archive = cache_dir / f"kserve-controller-{version}-{key}.oci.tar"
    if not archive.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = archive.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(oci_archive(ref, [_layer(binary)], ["/manager"]))
        tmp.replace(archive)
    return Image(ref=ref, archive=archive)


def webhook_certificates(workdir: Path) -> dict[str, bytes]:
    """A CA and the webhook server's certificate for ``kserve-webhook-server-service.kserve.svc``
    (what cert-manager's ``serving-cert`` Certificate would issue): tls.crt, tls.key, ca.crt."""
    workdir.mkdir(parents=True, exist_ok=True)
    harness._openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "ca.key", "-out", "ca.crt", "-days", "7", "-subj", "/CN=kserve-webhook-test-ca",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=workdir,
    )  # fmt: skip
    svc = f"{WEBHOOK_SERVICE}.{NAMESPACE}.svc"
    harness._issue_cert(
        workdir,
        "webhook",
        f"/CN={svc}",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage=serverAuth\nsubjectAltName=DNS:{svc},DNS:{svc}.cluster.local\n",
    )
    return {
        "tls.crt": (workdir / "webhook.crt").read_bytes(),
        "tls.key": (workdir / "webhook.key").read_bytes(),
        "ca.crt": (workdir / "ca.crt").read_bytes(),
    }


def _documents(path: Path) -> Iterator[dict[str, Any]]:
    """The objects of a manifest file, or of a kustomize base (its ``resources`` that are files)."""
    if path.is_dir():
        kustomization = yaml.safe_load((path / "kustomization.yaml").read_text())
        for rel in kustomization.get("resources", []):
            if (path / rel).is_file():  # sub-bases (llmisvc, localmodel, ...) are other components
                yield from _documents(path / rel)
        return
    for doc in yaml.safe_load_all(path.read_text()):
        if doc:
            yield doc


def render(config: Path, image: str, certs: dict[str, bytes]) -> list[dict[str, Any]]:
    """KServe's manifests from ``config`` (the module's config/ dir) for this cluster."""
    import base64

    docs: list[dict[str, Any]] = []
    for base in BASES:
        for doc in _documents(config / base):
            kind = doc["kind"]
            if kind not in _RESOURCES:
                raise InvalidObjectError(
                    f"{config / base}: {kind} is not a kind kserve.py knows how to apply"
                )
            meta = doc.setdefault("metadata", {})
            meta.pop("creationTimestamp", None)
            if _RESOURCES[kind][2]:
                meta["namespace"] = NAMESPACE  # kustomize's `namespace: kserve` (config/default)
            for subject in doc.get("subjects", []):
                if subject.get("kind") == "ServiceAccount":
                    subject["namespace"] = NAMESPACE
            if kind.endswith("WebhookConfiguration"):
                for hook in doc["webhooks"]:
                    hook["clientConfig"]["service"].update(name=WEBHOOK_SERVICE, namespace=NAMESPACE)
                    hook["clientConfig"]["caBundle"] = base64.b64encode(certs["ca.crt"]).decode()
            if kind == "ConfigMap" and meta["name"] == CONFIG_MAP:
                for key, changes in RENDER_CHANGES.items():
                    doc["data"][key] = json.dumps({**json.loads(doc["data"][key]), **changes}, indent=2)
            if kind == "Deployment" and meta["name"] == MANAGER:
                pod = doc["spec"]["template"]["spec"]
                pod["securityContext"].update(runAsUser=NONROOT, runAsGroup=NONROOT)
                for c in pod["containers"]:
                    if c["name"] == "manager":
                        c.update(image=image, imagePullPolicy="Never")
                        c["readinessProbe"].update(READINESS_CHANGES)
            docs.append(doc)
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": CERT_SECRET, "namespace": NAMESPACE},
        "data": {k: base64.b64encode(v).decode() for k, v in certs.items()},
    }
    docs.insert(1, secret)  # after the Namespace, before the Deployment mounts it
    return docs


def _path(doc: dict[str, Any]) -> str:
    prefix, plural, namespaced = _RESOURCES[doc["kind"]]
    ns = f"/namespaces/{doc['metadata']['namespace']}" if namespaced else ""
    return f"{prefix}{ns}/{plural}/{doc['metadata']['name']}"


def apply(http: httpx.Client, docs: list[dict[str, Any]]) -> None:
    """Server-side apply, in order."""
    for doc in docs:
        resp = http.patch(
            _path(doc),
            params={"fieldManager": FIELD_MANAGER, "force": "true"},
            content=json.dumps(doc),
            headers={"Content-Type": "application/apply-patch+yaml"},
        )
        if not resp.is_success:
            raise InvalidObjectError(
                f"the API server refused {doc['kind']} {doc['metadata']['name']} ({resp.status_code}): "
                f"{resp.text[:2000]}"
            )


def probe_isvc(namespace: str = "default") -> dict[str, Any]:
    """A valid InferenceService for a dry run: it passes KServe's defaulting and validating
    webhooks once they answer (``install`` waits on it)."""
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "kserve-ready-probe", "namespace": namespace},
        "spec": {"predictor": {"containers": [{"name": "kserve-container", "image": "probe"}]}},
    }


def _wait_ready(node: Node, http: httpx.Client, timeout: float) -> None:
    """Until the manager's pod is Ready and a dry-run InferenceService passes its webhooks
    (the API server reaches them through egress.py and kube-proxy, as any webhook by Service)."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    deployment = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{MANAGER}"
    isvcs = "/apis/serving.kserve.io/v1beta1/namespaces/default/inferenceservices"
    while time.monotonic() < deadline:
        node.check_alive()
        resp = http.get(deployment)
        status = resp.json().get("status", {}) if resp.is_success else {"error": resp.status_code}
        if status.get("readyReplicas", 0) >= 1:
            resp = http.post(isvcs, params={"dryRun": "All"}, json=probe_isvc())
            if resp.is_success:
                return
            last = f"dry-run InferenceService: {resp.status_code} {resp.text[:500]}"
        else:
            last = f"Deployment {MANAGER} status {status}"
        time.sleep(0.5)
    pods = http.get(f"/api/v1/namespaces/{NAMESPACE}/pods").json().get("items", [])
    logs = "\n".join(
        f"--- {p['metadata']['name']} ---\n{node.pod_log(NAMESPACE, p['metadata']['name'])[-3000:]}"
        for p in pods
    )
    raise ProcessError(f"KServe not ready after {timeout:.0f} s ({last})\n{logs}\n{node.log('kubelet')}")


def missing() -> list[str]:
    """What install() needs and is not built (``make tools``)."""
    path = harness.BIN_DIR / f"kserve-manager-{source().version}"
    return [] if os.access(path, os.X_OK) else [str(path)]


def install(node: Node, timeout: float = 240.0, since: float | None = None) -> KServe:
    """Install KServe (CRDs, RBAC, ConfigMap, webhooks, the manager's Deployment) on ``node`` and
    return once the manager is Ready and its webhooks answer (``since``: a ``time.monotonic()``
    the returned ``seconds`` count from, e.g. the node's start)."""
    began = time.monotonic()
    started = began if since is None else since
    src = source()
    image = manager_image(src.version)
    node.ctr("images", "import", str(image.archive))
    config = crds.module_dir(src.module, src.version) / "config"
    with tempfile.TemporaryDirectory(prefix="kserve-certs-") as tmp:
        certs = webhook_certificates(Path(tmp))
    docs = render(config, image.ref, certs)
    with node.control_plane.http(timeout=60) as http:
        crds.install_pinned(http, [src])
        apply(http, docs)
        _wait_ready(node, http, timeout)
    now = time.monotonic()
    return KServe(node, src.version, image, certs["ca.crt"], now - started, now - began)
