"""Fixtures that start real ``bentoml serve`` processes of the model service on 127.0.0.1.

- ``bentoml_home``: the model store the servers read. $BENTOML_HOME when set (the Makefile exports
  ``.cache/bentoml``), else ``<repo>/.cache/bentoml``; never ``~/bentoml``. The iris variants are
  trained into it once per session (idempotent: skipped when already there).
- ``bento_server``: a factory ``bento_server(tag, workers=1, **kw) -> BentoServer`` on a free port;
  every server it started is stopped (whole process group) at the end of the test module.

Other test modules start model servers through these fixtures, or call
``rollout.local.bento.start_bento_server`` directly.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rollout.local.bento import REPO_ROOT, BentoServer, start_bento_server
from rollout.local.processes import Supervisor, free_port
from rollout.local.redis import RedisServer

READY_TIMEOUT = 180.0  # the machine is shared and slow; start-up is ~6 s when idle


@pytest.fixture(scope="session")
def bentoml_home() -> Path:
    home = Path(os.environ.get("BENTOML_HOME") or REPO_ROOT / ".cache" / "bentoml")
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
    subprocess.run(
        [sys.executable, "-m", "bentos.train", "--all"], cwd=REPO_ROOT, env=env, check=True, timeout=900
    )
    return home


@pytest.fixture(scope="module")
def bento_server(
    bentoml_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., BentoServer]]:
    started: list[BentoServer] = []
    logs = tmp_path_factory.mktemp("bento-logs")

    def start(tag: str, workers: int = 1, **kwargs: Any) -> BentoServer:
        kwargs.setdefault("bentoml_home", bentoml_home)
        kwargs.setdefault("timeout", READY_TIMEOUT)
        port = free_port()
        kwargs.setdefault("log_path", logs / f"{tag.replace(':', '-')}-{port}.log")
        server = start_bento_server(
            tag, port, workers, wait=False, **{k: v for k, v in kwargs.items() if k != "timeout"}
        )
        started.append(server)
        server.wait_ready(kwargs["timeout"])
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server on 127.0.0.1 with the durable settings of rollout/local/redis.py, for the
    join-store tests (stopped by pid at the module's end)."""
    sup = Supervisor()
    server = RedisServer(sup, tmp_path_factory.mktemp("redis"), free_port())
    server.start()
    try:
        yield server
    finally:
        sup.stop_all()
