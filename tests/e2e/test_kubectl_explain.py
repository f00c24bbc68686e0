"""`kubectl explain` on the real kube-apiserver documents every ModelRollout field: the CRD from
k8s/crd (generated from rollout/spec.py) is installed, and for each object in its schema the
server's OpenAPI v3, as kubectl prints it, carries the description the spec gives each field -
never `<no description>`."""

from __future__ import annotations

import time
from typing import Any

import pytest
import yaml

from rollout.k8s import generate
from rollout.spec import ModelRollout
from tests.e2e.helmkit import kubectl
from tests.k8s.fixtures import K8sCluster

pytestmark = pytest.mark.k8s


def _schema() -> dict[str, Any]:
    doc = yaml.safe_load(generate.CRD_FILE.read_text(encoding="utf-8"))
    return doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _objects(node: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    """Every node with properties, by its `kubectl explain` path (arrays are looked through)."""
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node.get("items"), dict):
        return _objects(node["items"], path)
    if node.get("properties"):
        out.append((path, node))
        for key, sub in node["properties"].items():
            if key != "metadata":  # the server documents metadata as ObjectMeta
                out.extend(_objects(sub, f"{path}.{key}"))
    return out


def _words(text: str) -> str:
    return " ".join(text.split())


def _node(path: str) -> dict[str, Any]:
    node = _schema()
    for key in path.split(".")[1:]:
        node = node["properties"][key]
        while isinstance(node.get("items"), dict):
            node = node["items"]
    return node


@pytest.fixture(scope="module")
def explain(k8s_cluster: K8sCluster, modelrollout_crd: None):
    """The project's CRD installed (test_helm_install's fixture); returns ``explain(path) -> kubectl's output``."""

    def run(path: str) -> str:
        result = kubectl(k8s_cluster, "explain", path)
        return result.stdout if result.returncode == 0 else f"kubectl explain {path} failed: {result.stderr}"

    # the server publishes a new CRD's OpenAPI a moment after it is Established, and an older copy
    # of the CRD (another test module's) may still be the one published
    canary = _node("modelrollout.spec.strategy.canary")
    expected = _words(canary["properties"]["steps"].get("description", ""))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        output = run("modelrollout.spec.strategy.canary")
        if "failed:" not in output.split("\n", 1)[0] and (not expected or expected in _words(output)):
            break
        time.sleep(0.5)
    return run


def _assert_explained(output: str, path: str, node: dict[str, Any]) -> None:
    for marker in ("<no description>", "<empty>"):
        assert marker not in output, f"kubectl explain {path} says {marker}:\n{output}"
    text = _words(output)
    if node.get("description"):
        assert _words(node["description"]) in text, f"{path}'s own description missing:\n{output}"
    for key, sub in node["properties"].items():
        assert key in output, f"{path}.{key} not listed:\n{output}"
        description = _words(sub.get("description", ""))
        if path == "modelrollout" and key == "metadata":  # the CRD may not say; the server does
            description = _words(ModelRollout.model_fields["metadata"].description or "")
        assert description, f"{path}.{key} has no description in the CRD"
        assert description in text, f"{path}.{key}: {description!r} not in:\n{output}"


@pytest.mark.parametrize("path", ["modelrollout.spec.strategy.canary", "modelrollout.spec.analysis.metrics"])
def test_kubectl_explain_describes_each_field(explain, path: str) -> None:
    output = explain(path)
    _assert_explained(output, path, _node(path))


def test_kubectl_explain_describes_every_object_of_spec_and_status(explain) -> None:
    paths = _objects(_schema(), "modelrollout")
    assert {"modelrollout", "modelrollout.spec.strategy.abTest.match", "modelrollout.status"} <= {
        p for p, _ in paths
    }
    for path, node in paths:
        _assert_explained(explain(path), path, node)
