"""Pytest fixtures for the real Kubernetes control plane (imported by tests/conftest.py).

- ``k8s_cluster`` (session): starts etcd + kube-apiserver + kube-controller-manager once per test
  session (tests/k8s/harness.py), installs the pinned third-party CRDs (tests/k8s/crds.py) and
  yields a ``K8sCluster``: ``kubeconfig`` path, ``server`` URL, ``api_client`` (an admin
  ``kubernetes.client.ApiClient``), ``crds`` by name and ``crd(kind, group=None)``, ``http()`` for
  raw requests.
- ``k8s_namespace`` (function): a fresh namespace for one test, deleted afterwards (the namespace
  controller then removes everything in it).
- ``k8s_node`` (module): a single-node cluster that runs real pods (tests/k8s/node.py: its own
  control plane, kube-scheduler, containerd, kubelet, kube-proxy, in a network namespace of its
  own), yielding the ``node.Node``; one per test module, as it boots in seconds and so does not
  idle through the other modules' tests; ``k8s_node_namespace`` (function): a fresh namespace on it.
- ``kserve_node`` (module): such a node with the real KServe controller installed and Ready
  (tests/k8s/kserve.py, Standard mode), yielding the ``kserve.KServe`` (``.node`` is the Node).

Tests that use them are marked ``@pytest.mark.k8s``. When the binaries are missing these fixtures
FAIL (not skip) with the command that builds them: ``make tools``.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.k8s import crds, harness, kserve, node


@dataclass
class K8sCluster:
    control_plane: harness.ControlPlane
    api_client: Any
    crds: dict[str, crds.InstalledCrd] = field(
        default_factory=dict
    )  # by CRD name, e.g. "httproutes.gateway.networking.k8s.io"

    @property
    def kubeconfig(self) -> Path:
        return self.control_plane.kubeconfig

    @property
    def server(self) -> str:
        return self.control_plane.server

    def crd(self, kind: str, group: str | None = None) -> crds.InstalledCrd:
        """The installed CRD of ``kind`` (give ``group`` where two groups share a kind, e.g. Gateway)."""
        found = [c for c in self.crds.values() if c.kind == kind and group in (None, c.group)]
        if len(found) != 1:
            groups = sorted(c.group for c in found)
            raise LookupError(f"{len(found)} installed CRDs of kind {kind!r} (groups {groups}): pass group=")
        return found[0]

    def http(self, timeout: float = 30.0) -> httpx.Client:
        """An httpx client authenticated as the admin, for raw API paths."""
        return self.control_plane.http(timeout)


@pytest.fixture(scope="session")
def k8s_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[K8sCluster]:
    missing = harness.missing_binaries()
    if missing:
        pytest.fail(
            f"the Kubernetes test control plane is not built ({', '.join(missing)} missing in "
            f"{harness.BIN_DIR}): run `make tools`",
            pytrace=False,
        )
    cp = harness.start(workdir=tmp_path_factory.mktemp("k8s-harness"))
    try:
        with cp.http(timeout=60) as http:
            installed = crds.install_pinned(http)
        client = cp.api_client()
        yield K8sCluster(control_plane=cp, api_client=client, crds={c.name: c for c in installed})
        client.close()
    finally:
        cp.stop()


@pytest.fixture
def k8s_namespace(k8s_cluster: K8sCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    from kubernetes import client

    core = client.CoreV1Api(k8s_cluster.api_client)
    stem = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t-{stem}-{uuid.uuid4().hex[:6]}"
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"bento-rollout.dev/test": "true"}))
    )
    yield name
    try:
        core.delete_namespace(name)
    except client.ApiException as exc:
        if exc.status != 404:
            raise


@pytest.fixture(scope="module")
def k8s_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[node.Node]:
    missing = harness.missing_binaries() + node.missing_tools()
    if missing:
        pytest.fail(
            f"the single-node cluster cannot start ({', '.join(missing)} missing): run `make setup`",
            pytrace=False,
        )
    n = node.start(logdir=tmp_path_factory.mktemp("k8s-node"))
    try:
        yield n
    finally:
        n.stop()


@pytest.fixture(scope="module")
def kserve_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kserve.KServe]:
    missing = harness.missing_binaries() + node.missing_tools() + kserve.missing()
    if missing:
        pytest.fail(
            f"KServe cannot be installed ({', '.join(missing)} missing): run `make setup`", pytrace=False
        )
    started = time.monotonic()
    n = node.start(logdir=tmp_path_factory.mktemp("kserve-node"))
    try:
        yield kserve.install(n, since=started)
    finally:
        n.stop()


@pytest.fixture
def k8s_node_namespace(k8s_node: node.Node, request: pytest.FixtureRequest) -> Iterator[str]:
    from kubernetes import client

    api = k8s_node.control_plane.api_client()
    core = client.CoreV1Api(api)
    stem = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"n-{stem}-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    with contextlib.suppress(client.ApiException):
        core.delete_namespace(name)
    api.close()
