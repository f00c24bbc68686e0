"""A pinned artifact digest against someone who can write the model store, on real ``bentoml serve``.

The store records each artifact's digest beside it, so whoever rewrites the artifact can rewrite
that digest too, and the store's own check then passes. A pin (BENTO_MODEL_DIGEST: a ModelRollout's
``stable.digest`` / ``candidate.digest``, the chart's ``models.*Digest``) comes from outside the
store: the server refuses to start on any other artifact, never becomes ready, and says both
digests. A correct pin serves; no pin behaves as before.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from rollout.errors import ProcessError
from rollout.local.bento import BentoServer, start_bento_server
from rollout.local.processes import free_port
from rollout.local.stack import LocalStack

pytestmark = pytest.mark.integration

ROW = {"instances": [[5.9, 3.0, 5.1, 1.8]]}


def digest_of(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class Rewritten:
    home: Path  # a BENTOML_HOME whose iris:v1 is poisoned's artifact, with a matching recorded digest
    pinned: str  # iris:v1's real digest, as pinned before the rewrite
    now: str  # the digest of what the store holds under iris:v1 now


@pytest.fixture
def rewritten(bentoml_home: Path, tmp_path: Path) -> Rewritten:
    """iris:v1's artifact swapped for another model's AND its recorded digest rewritten to match."""
    home = tmp_path / "bentoml"
    model_dir = home / "models" / "iris" / "v1"
    shutil.copytree(bentoml_home / "models" / "iris" / "v1", model_dir)
    pinned = digest_of(model_dir / "model.pkl")
    shutil.copyfile(bentoml_home / "models" / "iris" / "poisoned" / "model.pkl", model_dir / "model.pkl")
    now = digest_of(model_dir / "model.pkl")
    info = yaml.safe_load((model_dir / "model.yaml").read_text())
    info["metadata"]["artifact_sha256"] = now.removeprefix("sha256:")
    (model_dir / "model.yaml").write_text(yaml.safe_dump(info))
    assert now != pinned
    return Rewritten(home, pinned, now)


def served_digest(server: BentoServer) -> str:
    meta = httpx.get(f"{server.url}/v2/models/iris", timeout=30).json()
    return str(meta["parameters"]["digest"])


def test_a_rewritten_store_passes_its_own_check_but_the_pin_refuses_it(
    rewritten: Rewritten, tmp_path: Path
) -> None:
    start = {
        pin: start_bento_server(
            "iris:v1",
            free_port(),
            bentoml_home=rewritten.home,
            log_path=tmp_path / f"{'pinned' if pin else 'unpinned'}.log",
            wait=False,
            digest=pin,
        )
        for pin in (rewritten.pinned, None)
    }
    pinned, unpinned = start[rewritten.pinned], start[None]
    try:
        # no pin: as before, the store agrees with itself, so the swapped model is served under v1
        unpinned.wait_ready(timeout=180)
        assert served_digest(unpinned) == rewritten.now
        assert httpx.post(unpinned.url + "/predict", json=ROW, timeout=30).status_code == 200
        # the pin: never ready, and the error names both digests
        with pytest.raises(ProcessError) as refused:
            pinned.wait_ready(timeout=180)
        message = str(refused.value)
        assert rewritten.pinned in message and rewritten.now in message, message
        assert "pinned" in message
        assert not pinned.alive()
    finally:
        pinned.stop()
        unpinned.stop()


def test_a_correct_pin_serves_and_says_what_it_serves(
    bento_server: Callable[..., BentoServer], bentoml_home: Path
) -> None:
    pin = digest_of(bentoml_home / "models" / "iris" / "v2" / "model.pkl")
    server = bento_server("iris:v2", digest=pin)
    assert served_digest(server) == pin
    response = httpx.post(server.url + "/predict", json=ROW, timeout=30)
    assert response.status_code == 200 and response.headers["X-Model-Version"] == "v2"


def test_the_local_stack_passes_the_pin_and_keeps_it_for_a_restart(
    bentoml_home: Path, tmp_path: Path
) -> None:
    """LocalStack.start_bento(digest=) is how a rollout's stable.digest / candidate.digest reach the
    server locally: a wrong pin fails the start at once (not after the ready timeout), a right
    one is recorded in the backend's environment, which a watchdog restart reuses."""
    right = digest_of(bentoml_home / "models" / "iris" / "v1" / "model.pkl")
    wrong = digest_of(bentoml_home / "models" / "iris" / "v2" / "model.pkl")  # another model's
    stack = LocalStack.up(tmp_path / "home", services=["iris"])
    try:
        with pytest.raises(ProcessError) as refused:
            stack.start_bento("iris", "iris:v1", name="iris-wrong", timeout=180, digest=wrong)
        assert right in str(refused.value) and wrong in str(refused.value)
        assert "iris-wrong" not in stack.backends()
        backend = stack.start_bento("iris", "iris:v1", timeout=180, digest=right)
        assert stack.state["backends"][backend.name]["env"]["BENTO_MODEL_DIGEST"] == right
        assert (
            httpx.get(f"http://{backend.address}/v2/models/iris", timeout=30).json()["parameters"]["digest"]
            == right
        )
    finally:
        stack.stop()


def test_a_rollout_that_pins_stable_checks_a_stable_started_without_the_pin(
    bentoml_home: Path, tmp_path: Path
) -> None:
    """`rollout up` without --digest, then `rollout run` of a spec that pins stable.digest: the
    runner reused the running stable without looking, so a pin of another artifact passed. Now a
    wrong pin ends the run at once (exit 1, one line naming both digests and the command to
    restart it pinned); the right pin - what that server says it serves - goes on."""
    import os
    import subprocess
    import sys

    rollout_cli = str(Path(sys.executable).with_name("rollout"))
    env = {**os.environ, "ROLLOUT_HOME": str(tmp_path / "home"), "BENTOML_HOME": str(bentoml_home)}

    def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        return subprocess.run([rollout_cli, *args], env=env, capture_output=True, text=True, timeout=timeout)

    right = digest_of(bentoml_home / "models" / "iris" / "v1" / "model.pkl")
    wrong = digest_of(bentoml_home / "models" / "iris" / "poisoned" / "model.pkl")

    def spec(name: str, pin: str) -> Path:
        path = tmp_path / f"{name}.yaml"
        body = {
            "apiVersion": "bento-rollout.io/v1alpha1",
            "kind": "ModelRollout",
            "metadata": {"name": name},
            "spec": {
                "service": "iris",
                "stable": {"model": "iris:v1", "digest": pin},
                "candidate": {"model": "iris:v2"},
                "strategy": {"canary": {"steps": [{"pause": {"duration": "1h"}}]}},
            },
        }
        path.write_text(yaml.safe_dump(body))
        return path

    up = cli("up", "--model", "iris:v1")
    assert up.returncode == 0, up.stderr
    try:
        r = cli("run", str(spec("wrong-pin", wrong)), "--timeout", "60")
        assert r.returncode == 1, r.stdout + r.stderr
        assert right in r.stderr and wrong in r.stderr, r.stderr
        assert f"rollout up --model iris:v1 --digest {wrong}" in r.stderr, r.stderr
        r = cli("run", str(spec("right-pin", right)), "--timeout", "10")
        assert r.returncode == 5 and "pins stable.digest" not in r.stdout + r.stderr, r.stdout + r.stderr
        assert "still Progressing" in r.stderr, r.stderr
    finally:
        cli("down")
