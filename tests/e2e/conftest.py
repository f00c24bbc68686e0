"""Fixtures of the e2e tier (the shared ones live in tests/conftest.py and tests/k8s/fixtures.py)."""

from __future__ import annotations

import pytest

from rollout.k8s import generate
from tests.e2e.helmkit import kubectl
from tests.k8s.fixtures import K8sCluster


@pytest.fixture(scope="module")
def modelrollout_crd(k8s_cluster: K8sCluster) -> None:
    """The project's CRD from k8s/crd (the chart installs the same file on first install), Established."""
    applied = kubectl(
        k8s_cluster, "apply", "--server-side", "--force-conflicts", "--field-manager=tests", "-f",
        str(generate.CRD_FILE),
    )  # fmt: skip
    assert applied.returncode == 0, f"the API server rejected the ModelRollout CRD:\n{applied.stderr}"
    waited = kubectl(
        k8s_cluster,
        "wait",
        "--for=condition=Established",
        "--timeout=120s",
        "crd/modelrollouts.bento-rollout.io",
    )
    assert waited.returncode == 0, waited.stderr
