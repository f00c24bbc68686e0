"""Without the built control plane, k8s tests fail (never skip) and say to run `make tools`."""

from __future__ import annotations

from pathlib import Path

import pytest

from rollout.errors import ProcessError
from tests.k8s import harness

pytest_plugins = ["pytester"]


def test_missing_binary_error_says_how_to_build_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(harness, "BIN_DIR", tmp_path)
    assert harness.missing_binaries() == ["etcd", "kube-apiserver", "kube-controller-manager"]
    with pytest.raises(ProcessError, match="run `make tools`"):
        harness.binary("kube-apiserver")


def test_k8s_test_fails_instead_of_skipping_when_binaries_are_missing(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(harness, "BIN_DIR", tmp_path / "empty")
    pytester.makeconftest("from tests.k8s.fixtures import k8s_cluster, k8s_namespace  # noqa: F401\n")
    pytester.makepyfile(
        test_needs_cluster="""
        def test_uses_a_namespace(k8s_namespace):
            assert k8s_namespace
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*not built*run `make tools`*"])
