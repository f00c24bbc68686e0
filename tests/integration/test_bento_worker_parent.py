"""A model server worker whose supervisor is pid 1 keeps running, as in a container; one whose
supervisor died before it asked to die with it exits.

In the Bento image the entrypoint execs ``bentoml serve``: the supervisor (circus' arbiter) is
pid 1 of the container's pid namespace and every worker's parent. ``_die_with_the_supervisor``
(bentos/service.py) took a parent pid of 1 for "the supervisor died", so every worker exited at
once (``os._exit(1)``, silently), circus said "No active process found for watcher" and the chart's
predictor pods never became Ready (tests/e2e/test_cluster_pods.py, tests/e2e/test_k8s_images.py).
Here the supervisor is a Python process that imported bentos.service (as ``bentoml serve`` does)
and forks the worker: pid 1 of a new pid namespace (``unshare --pid --fork``), or a process that
exits before its worker makes the call.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")

ROOT = Path(__file__).resolve().parents[2]

SUPERVISOR_AS_PID_1 = textwrap.dedent(
    """
    import os, sys
    import bentos.service as service  # the supervisor's import
    assert os.getpid() == 1, os.getpid()
    pid = os.fork()
    if pid == 0:  # the worker: its parent is pid 1, alive
        service._die_with_the_supervisor()
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status))
    """
)

SUPERVISOR_DIES_FIRST = textwrap.dedent(
    """
    import os, sys, time
    supervisor = os.fork()
    if supervisor == 0:
        import bentos.service as service
        if os.fork() == 0:  # the worker: makes the call once its supervisor is gone
            while os.getppid() != 1:  # re-parented to pid 1 of the namespace (this script)
                time.sleep(0.01)
            service._die_with_the_supervisor()
            os._exit(0)
        os._exit(0)  # the supervisor dies first
    codes = {}
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        codes[pid] = os.waitstatus_to_exitcode(status)
    (worker,) = [code for pid, code in codes.items() if pid != supervisor]
    sys.exit(worker)
    """
)


def _run(script: str) -> subprocess.CompletedProcess[str]:
    cmd = ["unshare", "--pid", "--fork", "--kill-child", "--", sys.executable, "-c", script]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_a_worker_whose_supervisor_is_pid_1_keeps_running() -> None:
    proc = _run(SUPERVISOR_AS_PID_1)
    assert proc.returncode == 0, f"the worker exited {proc.returncode}:\n{proc.stderr[-2000:]}"


def test_a_worker_whose_supervisor_died_before_the_call_exits() -> None:
    proc = _run(SUPERVISOR_DIES_FIRST)
    assert proc.returncode == 1, f"the orphaned worker answered {proc.returncode}:\n{proc.stderr[-2000:]}"
