"""Start a real ``bentoml serve`` of the model service on 127.0.0.1, and stop it again.

    server = start_bento_server("iris:v2", port, workers=2)   # returns once /readyz answers
    server.url  # http://127.0.0.1:<port>
    server.stop()

:func:`bento_server_command` gives the argv and environment alone, for callers that supervise the
process themselves (``LocalStack.start_backend``). The server runs in its own session (process
group), so ``stop()`` reaches the supervisor and its workers. BENTOML_HOME is inherited (the
Makefile exports ``.cache/bentoml``) unless given. Who calls it: the local stack and runner,
integration tests (tests/integration/conftest.py), bench/serving.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from rollout.errors import ProcessError
from rollout.registry import MODEL_DIGEST_ENV, MODEL_TAG_ENV, check_digest

LOOPBACK = "127.0.0.1"
SERVICE = "bentos.service:ModelService"
REPO_ROOT = Path(__file__).resolve().parents[2]


KEEP_ALIVE_SECONDS = 75


def repo_pythonpath() -> str:
    """$PYTHONPATH with the repository first: a child process imports bentos/ and rollout/ from here."""
    return os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)


def bento_server_command(
    model_tag: str,
    port: int,
    workers: int = 1,
    extra_env: dict[str, str] | None = None,
    bentoml_home: Path | str | None = None,
    digest: str | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The argv and full environment of ``bentoml serve`` for ``model_tag`` on 127.0.0.1:``port``.

    ``digest`` (``sha256:<hex>``, a ModelRollout's ``stable.digest`` / ``candidate.digest``) pins
    the artifact: the server refuses to start on any other (BENTO_MODEL_DIGEST). Without it no pin
    is set, not even one inherited from this process's environment (the variable is empty)."""
    bentoml = Path(sys.executable).with_name("bentoml")
    argv = [
        str(bentoml) if bentoml.exists() else "bentoml",
        "serve",
        SERVICE,
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        # idle keep-alive connections live 75 s, longer than any client of ours keeps one idle
        # (nginx's upstream pool: 60 s), so the server never closes a connection under a request
        # the client is sending on it (uvicorn's default is 5 s)
        "--timeout-keep-alive",
        str(KEEP_ALIVE_SECONDS),
    ]
    env = dict(os.environ)
    env.update(
        {
            MODEL_TAG_ENV: model_tag,
            "BENTO_WORKERS": str(workers),
            "BENTOML_DO_NOT_TRACK": "True",
            "PYTHONPATH": repo_pythonpath(),
        }
    )
    # set even when empty (no pin): supervisors merge this over their own environment
    env[MODEL_DIGEST_ENV] = check_digest(digest) or ""
    if bentoml_home is not None:
        env["BENTOML_HOME"] = str(bentoml_home)
    env.setdefault("BENTOML_HOME", str(REPO_ROOT / ".cache" / "bentoml"))
    env.update(extra_env or {})
    return argv, env


@dataclass
class BentoServer:
    """A running ``bentoml serve``; ``stop()`` ends its whole process group."""

    model_tag: str
    port: int
    workers: int
    process: subprocess.Popen[bytes]
    log_path: Path
    started: float = field(default_factory=time.monotonic)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Block until the server answers ``/v2/health/ready`` with 2xx; returns the seconds it took.

        A worker only accepts connections once its model is loaded, so 2xx means requests work.
        """
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if not self.alive():
                    raise ProcessError(
                        f"bentoml serve for {self.model_tag} exited with {self.process.returncode}:\n{self.log_tail()}",
                        delay=0,
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.url}/v2/health/ready").is_success:
                        return time.monotonic() - self.started
                time.sleep(0.25)
        self.stop()
        raise ProcessError(
            f"bentoml serve for {self.model_tag} on port {self.port} was not ready after {timeout:.0f} s:\n"
            f"{self.log_tail()}"
        )

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the supervisor's group (circus then stops its workers), SIGKILL what is left.

        Circus starts each worker in a process group of its own, so the workers are looked up
        first and killed one by one if they outlive the supervisor.
        """
        if not self.alive():
            return
        workers = _descendants(self.process.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)
        for worker in workers:
            with contextlib.suppress(psutil.Error):
                if worker.is_running():
                    worker.kill()


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def start_bento_server(
    model_tag: str,
    port: int,
    workers: int = 1,
    *,
    extra_env: dict[str, str] | None = None,
    bentoml_home: Path | str | None = None,
    log_path: Path | None = None,
    wait: bool = True,
    timeout: float = 120.0,
    digest: str | None = None,
) -> BentoServer:
    """Start ``bentoml serve`` for ``model_tag`` on 127.0.0.1:``port``; waits until ready unless told.
    ``digest``: the pinned artifact digest (see :func:`bento_server_command`)."""
    argv, env = bento_server_command(model_tag, port, workers, extra_env, bentoml_home, digest)
    if log_path is None:
        log_dir = Path(env["BENTOML_HOME"]).parent / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"bento-{model_tag.replace(':', '-')}-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = BentoServer(model_tag, port, workers, process, log_path)
    if wait:
        server.wait_ready(timeout)
    return server


def pin_problem(address: str, model_tag: str, started_with: dict[str, str], pinned: str | None) -> str | None:
    """Why a model server already running at ``address`` may not serve a rollout that pins
    ``pinned`` (a ModelRollout's ``stable.digest`` / ``candidate.digest``), or None when it may.

    It may when it was started with that pin (``started_with``: the environment it was started
    with; the server then refused any other artifact and refuses one at each restart too), or,
    started without it, when it says it serves exactly that artifact (``GET /v2/models/<name>``,
    ``parameters.digest``: what it loaded). Anything else is named: a server started by `rollout up`
    without ``--digest`` that serves another artifact would pass for the pinned model."""
    if pinned is None or started_with.get(MODEL_DIGEST_ENV) == pinned:
        return None
    name = model_tag.partition(":")[0]
    try:
        meta = httpx.get(f"http://{address}/v2/models/{name}", timeout=5.0).json()
        served = meta["parameters"]["digest"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        return f"{model_tag} at {address} was started without the pin and does not say what it serves ({exc})"
    if served == pinned:
        return None
    return f"{model_tag} at {address} serves artifact {served}, not the pinned {pinned}"
