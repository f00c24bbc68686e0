"""``make tools`` on a machine whose Go is too old (or missing) says so in one line, before any build:
with GOTOOLCHAIN=local nothing fetches a newer toolchain, and KServe v0.20.0 (go 1.25.8) failed
deep inside its build."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "tests" / "k8s" / "build-tools.sh"


def _run_with_go(tmp_path: Path, version: str | None) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if version is not None:  # a `go` that only answers `go env GOVERSION`; a build would fail loudly
        (bin_dir / "go").write_text(
            f'#!/bin/sh\n[ "$1 $2" = "env GOVERSION" ] && echo go{version} && exit 0\nexit 99\n'
        )
        (bin_dir / "go").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"}
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)


def test_an_old_go_is_named_with_the_version_needed(tmp_path: Path) -> None:
    r = _run_with_go(tmp_path, "1.24.3")
    assert r.returncode == 1
    assert r.stderr.strip() == (
        "build-tools: Go 1.24.3 is older than 1.25.8, which KServe v0.20.0 needs; "
        "install Go >= 1.25.8 (https://go.dev/dl/)"
    )


def test_no_go_at_all_is_named_too(tmp_path: Path) -> None:
    r = _run_with_go(tmp_path, None)
    assert r.returncode == 1 and "'go' is not on PATH; install Go >= 1.25.8" in r.stderr
