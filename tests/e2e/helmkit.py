"""Running the real ``helm`` binary (built from helm.sh/helm/v3 by tests/k8s/build-tools.sh into
.cache/bin) on the chart, with its state in a temporary HELM_* home. Used by tests/e2e/test_helm*.py.

When the binary is missing the helpers FAIL the test with the command that builds it; they never
skip, so a missing tool cannot pass for a green run.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "bento-rollout"
BIN = ROOT / ".cache" / "bin"
KUBECTL = BIN / "kubectl"  # built by tests/k8s/build-tools.sh at the cluster's version


def helm_binary() -> Path:
    path = BIN / "helm"
    if not os.access(path, os.X_OK):
        pytest.fail(f"helm is not built ({path} missing): run `make tools`", pytrace=False)
    return path


def kubectl_binary() -> Path:
    if not os.access(KUBECTL, os.X_OK):
        pytest.fail(f"kubectl is not built ({KUBECTL} missing): run `make tools`", pytrace=False)
    return KUBECTL


def kubectl(cluster: Any, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """The built kubectl against ``cluster`` (anything with a ``kubeconfig`` path)."""
    return subprocess.run(
        [str(kubectl_binary()), "--kubeconfig", str(cluster.kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def helm_env(home: Path, kubeconfig: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELM_")}
    for sub in ("cache", "config", "data"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    env.update(
        HELM_CACHE_HOME=str(home / "cache"),
        HELM_CONFIG_HOME=str(home / "config"),
        HELM_DATA_HOME=str(home / "data"),
        KUBECONFIG=str(kubeconfig) if kubeconfig else str(home / "no-kubeconfig"),
    )
    return env


def run_helm(
    args: list[str], home: Path, kubeconfig: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm_binary()), *args],
        env=helm_env(home, kubeconfig),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def set_args(values: dict[str, Any]) -> list[str]:
    """{"routing.mode": "istio"} -> ["--set-json", 'routing.mode="istio"'] (types kept exactly)."""
    import json

    out: list[str] = []
    for key, value in values.items():
        out += ["--set-json", f"{key}={json.dumps(value)}"]
    return out


def template(home: Path, values: dict[str, Any] | None = None, *extra: str) -> list[dict[str, Any]]:
    """``helm template`` -> the rendered objects; fails the test with helm's message on error."""
    result = run_helm(
        ["template", "br", str(CHART), "--namespace", "models", *set_args(values or {}), *extra], home
    )
    assert result.returncode == 0, f"helm template failed with {values}:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(docs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        out.setdefault(doc["kind"], []).append(doc)
    return out


def pod_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The pod specs inside a workload object (Deployment, Job, InferenceService predictor)."""
    kind = doc["kind"]
    if kind in ("Deployment", "Job"):
        return [doc["spec"]["template"]["spec"]]
    if kind == "InferenceService":
        return [doc["spec"]["predictor"]]
    return []
