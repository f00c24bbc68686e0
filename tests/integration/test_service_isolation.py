"""Model servers side by side, as in a rollout: each one's /metrics holds only its own model
version's series (BentoML would share one metrics directory per BENTOML_HOME), and a server refuses
to start on a tampered model artifact."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from rollout.errors import ProcessError
from rollout.local.bento import BentoServer, start_bento_server
from rollout.local.processes import free_port

pytestmark = pytest.mark.integration

ROW = {"instances": [[5.9, 3.0, 5.1, 1.8]]}


def test_two_servers_keep_their_metrics_apart(bento_server: Callable[..., BentoServer]) -> None:
    stable = bento_server("iris:v1")
    candidate = bento_server("iris:poisoned")
    for _ in range(3):
        assert httpx.post(stable.url + "/predict", json=ROW, timeout=30).headers["X-Model-Version"] == "v1"
    for _ in range(5):
        assert (
            httpx.post(candidate.url + "/predict", json=ROW, timeout=30).headers["X-Model-Version"]
            == "poisoned"
        )
    time.sleep(1.0)  # each worker writes its buffered series every 0.5 s; /metrics flushes its own
    stable_text = httpx.get(stable.url + "/metrics", timeout=30).text
    candidate_text = httpx.get(candidate.url + "/metrics", timeout=30).text
    assert 'version="poisoned"' not in stable_text
    assert 'version="v1"' not in candidate_text
    assert 'model_requests_total{code="200",endpoint="predict",model="iris",version="v1"} 3.0' in stable_text
    assert (
        'model_requests_total{code="200",endpoint="predict",model="iris",version="poisoned"} 5.0'
        in candidate_text
    )


def test_tampered_model_is_refused_at_start(bentoml_home: Path, tmp_path: Path) -> None:
    home = tmp_path / "bentoml"
    shutil.copytree(bentoml_home / "models" / "iris" / "v1", home / "models" / "iris" / "v1")
    artifact = home / "models" / "iris" / "v1" / "model.pkl"
    artifact.write_bytes(artifact.read_bytes()[:-1] + b"\x00")
    server = start_bento_server(
        "iris:v1", free_port(), bentoml_home=home, log_path=tmp_path / "serve.log", wait=False
    )
    try:
        with pytest.raises(ProcessError) as excinfo:
            server.wait_ready(timeout=120)
        assert "was modified" in str(excinfo.value)
    finally:
        server.stop()


def test_gate_on_the_trained_store(bentoml_home: Path) -> None:
    """The CI check on the real store: the good and the slow candidates pass, the poisoned one fails."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "BENTOML_HOME": str(bentoml_home)}
    rollout = [str(Path(sys.executable).with_name("rollout"))]  # the installed console script

    def gate(candidate: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*rollout, "gate", candidate, "--against", "iris:v1"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    runs = {tag: gate(tag) for tag in ("iris:v2", "iris:slow", "iris:poisoned")}  # in parallel
    results = {tag: (proc.wait(timeout=180), proc.communicate()[1]) for tag, proc in runs.items()}
    assert results["iris:v2"][0] == 0
    assert results["iris:slow"][0] == 0
    assert results["iris:poisoned"][0] == 3
    assert "holdout_accuracy" in results["iris:poisoned"][1]


def test_workers_exit_when_the_supervisor_is_killed(bentoml_home: Path, tmp_path: Path) -> None:
    """Circus gives workers their own process groups; a SIGKILLed supervisor must not leave them
    serving on the port."""
    import os
    import signal

    import psutil

    server = start_bento_server(
        "iris:v1", free_port(), 2, bentoml_home=bentoml_home, log_path=tmp_path / "serve.log", timeout=180
    )
    workers = psutil.Process(server.pid).children(recursive=True)
    assert len(workers) == 2
    try:
        os.killpg(server.pid, signal.SIGKILL)
        server.process.wait(timeout=30)
        gone, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, [p.pid for p in alive]
    finally:
        for worker in workers:
            with contextlib.suppress(psutil.Error):
                worker.kill()
