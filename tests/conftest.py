"""Fixtures shared by every test tier. The Kubernetes ones live in tests/k8s/fixtures.py."""

from tests.k8s.fixtures import (
    K8sCluster,
    k8s_cluster,
    k8s_namespace,
    k8s_node,
    k8s_node_namespace,
    kserve_node,
)

__all__ = ["K8sCluster", "k8s_cluster", "k8s_namespace", "k8s_node", "k8s_node_namespace", "kserve_node"]
