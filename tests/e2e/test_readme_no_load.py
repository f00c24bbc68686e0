"""The README's "Using it" steps, run as a user would with no load at all, reach an outcome.

``rollout up --model iris:v1``, then ``rollout run rollout/demo/specs/canary-good.yaml`` with no
client sending a request: every measurement is Inconclusive (no requests in the window) and the
rollout holds at 10 %, then its ``progressDeadline`` rolls it back - exit 1, one clear line, no
traceback (it used to die of an IndexError at the first analysis). Then ``rollout abort`` says it
has ended, ``rollout status`` shows it, ``rollout down`` stops everything, the join store's Redis
and exporter included. The spec is the README's
file with only ``progressDeadline`` shortened from 2m to 20s to keep the test short.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rollout.local.processes import is_running
from rollout.local.stackfile import COMPONENTS
from tests.e2e import test_faults as faults

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
ROLLOUT = str(Path(sys.executable).with_name("rollout"))
home = faults.home  # trains the models (a module fixture of test_faults)


def cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ROLLOUT, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def test_the_readme_steps_with_no_load_end_at_the_progress_deadline(home: Path, tmp_path: Path) -> None:
    env = {**os.environ, "ROLLOUT_HOME": str(tmp_path / "state")}
    doc = yaml.safe_load((REPO / "rollout/demo/specs/canary-good.yaml").read_text())
    assert doc["spec"]["progressDeadline"] == "2m", "the README's spec changed: update this test"
    doc["spec"]["progressDeadline"] = "20s"
    spec = tmp_path / "canary-good.yaml"
    spec.write_text(yaml.safe_dump(doc))
    up = cli(env, "up", "--model", "iris:v1")
    assert up.returncode == 0, up.stderr
    try:
        run = cli(env, "run", str(spec))
        assert "Traceback" not in run.stderr, run.stderr
        assert run.returncode == 1, (run.stdout, run.stderr)
        last = run.stdout.strip().splitlines()[-1]
        assert "RolledBack (ProgressDeadlineExceeded" in last and "progressDeadline 20s" in last, last
        assert "Inconclusive" in run.stdout and "no requests" in run.stdout, run.stdout
        abort = cli(env, "abort", "iris-canary-good")
        assert abort.returncode != 0 and "already ended (RolledBack)" in abort.stderr, abort
        status = cli(env, "status")
        assert "RolledBack" in status.stdout and "candidate   0%" in status.stdout, status.stdout
        assert "Authorization: Bearer <token>" in up.stdout and "feedback-token" in up.stdout, up.stdout
    finally:
        state = json.loads((tmp_path / "state" / "stack" / "stack.json").read_text())
        down = cli(env, "down")
    assert "stopped the local stack" in down.stdout
    pids = {c: state[c]["pid"] for c in (*COMPONENTS, "watchdog")}
    pids |= {name: backend["pid"] for name, backend in state["backends"].items()}
    assert not [c for c, pid in pids.items() if is_running(pid)], f"`rollout down` left {pids} running"
