"""Cluster DNS for the single-node cluster: CoreDNS, so that pods resolve ``<svc>.<ns>.svc.cluster.local``
as on any cluster (the chart's model pods find its join store's Redis that way).

CoreDNS (``COREDNS_VERSION``, built from its Go module by tests/k8s/build-tools.sh into
.cache/coredns: no image can be pulled here) runs as a node component next to kube-proxy, inside
the node's network namespace, listening on the node's address (``NODE_IP:53``, where every pod's
resolv.conf points: node_config's ``clusterDNS``). Its ``kubernetes`` plugin watches Services,
EndpointSlices and Namespaces with a client certificate of its own (``system:coredns``) bound to
the ClusterRole CoreDNS's own deployment manifests give it (``RBAC``). It answers only
``cluster.local`` (and reverse lookups of cluster addresses); every other name is NXDOMAIN: pods here
reach nothing outside the cluster. ``ready`` (HTTP 200 on ``NODE_IP:8181/ready`` once the plugin has
synced with the API server) is what node.py waits for.

What differs from a cluster's CoreDNS: a process of the node, not a Deployment behind a Service
(kube-dns); the name the pods resolve and the answers are the same. Called by tests/k8s/node.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# tests/k8s/build-tools.sh reads these two lines (the one place the version is written); v1.14's
# go.mod says go 1.25, which the harness's Go builds
COREDNS_VERSION = "v1.14.7"
COREDNS_MODULE = "github.com/coredns/coredns"
ROOT = Path(__file__).resolve().parents[2]
COREDNS = ROOT / ".cache" / "coredns" / f"coredns-{COREDNS_VERSION}"
USER = "system:coredns"
DOMAIN = "cluster.local"
READY_PORT = 8181

# the ClusterRole of CoreDNS's deployment manifests (github.com/coredns/deployment,
# kubernetes/coredns.yaml.sed: system:coredns), bound to the user of its client certificate
RBAC: list[dict[str, Any]] = [
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": USER},
        "rules": [
            {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
             "verbs": ["list", "watch"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
        ],
    },
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": USER},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": USER},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}],
    },
]  # fmt: skip


def missing() -> str:
    """Why CoreDNS cannot run here ('' when it can)."""
    if not COREDNS.is_file():
        return (
            f"CoreDNS {COREDNS_VERSION} is not built ({COREDNS}); run `make tools` (tests/k8s/build-tools.sh)"
        )
    return ""


def corefile(listen: str, kubeconfig: Path) -> str:
    """The Corefile: ``cluster.local`` from the API server, nothing else resolves."""
    return f"""{DOMAIN}:53 in-addr.arpa:53 ip6.arpa:53 {{
    bind {listen}
    errors
    ready {listen}:{READY_PORT}
    kubernetes {DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    cache 5
}}
.:53 {{
    bind {listen}
    errors
    template ANY ANY {{
        rcode NXDOMAIN
    }}
}}
"""


def apply_rbac(http: Any) -> None:
    """Create (or leave) the ClusterRole and its binding through ``http`` (the harness's admin)."""
    for obj in RBAC:
        path = f"/apis/rbac.authorization.k8s.io/v1/{obj['kind'].lower()}s"
        resp = http.post(path, json=obj)
        if resp.status_code not in (200, 201, 409):
            raise RuntimeError(f"cannot create {obj['kind']} {USER}: {resp.status_code} {resp.text[:300]}")
