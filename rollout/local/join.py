"""The local stack's join store: one Redis, its exporter and the feedback token (LocalStack's part).

Every model server the stack starts (``LocalStack.start_bento``) records its predictions in one
Redis (``BENTO_JOIN_STORE=redis://...``, bentos/redis_join.py), as every pod does on a cluster: a
label POSTed to ``/feedback`` on any server of any version is joined there and counted for the
version that answered, and a mirrored request answered by two versions under one ``X-Request-ID``
is compared there (the shadow-agreement gate). The servers count neither in their own ``/metrics``:
one exporter process (``python -m bentos.join_exporter``) serves the counters to the stack's
Prometheus (target ``join``, label ``component="join"``). So the gates read one path, locally and
on a cluster.

Labels are authenticated: the servers want ``Authorization: Bearer <token>``, the token kept in
``<stack>/join/feedback-token`` (mode 0600, created with the stack; ``LocalStack.feedback_token``).
Redis' password is in ``<stack>/join/redis/password`` (0600, rollout/local/redis.py). Neither is
written into a log, an argv or the stack's state file: a server's recorded environment names the
token's file, and a restart adds the password from its file again (``secret_env``). A version's
series exist at 0 from its server's start (bentos/redis_join.py RedisJoin.declare), as a
server's own /metrics has them.
Files: ``<stack>/join/redis/`` (config, password, append-only file), ``feedback-token``,
``exporter.log``. Who calls it: rollout/local/stack.py.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from bentos.join import JOIN_STORE_ENV, MIN_TOKEN_LENGTH, TOKEN_ENV, TOKEN_FILE_ENV
from rollout.errors import ProcessError
from rollout.local.bento import REPO_ROOT, repo_pythonpath
from rollout.local.processes import LOOPBACK, ManagedProcess, Supervisor, http_ok, secret_file
from rollout.local.redis import RedisServer

log = logging.getLogger("rollout.local.join")
PASSWORD_ENV = "BENTO_JOIN_PASSWORD"  # bentos/join.py and bentos/join_exporter.py read it
# what is never recorded in the stack's state file (a restart adds it again from its file)
SECRET_ENV = (PASSWORD_ENV, TOKEN_ENV)
TOKEN_NAME = "feedback-token"


def load_feedback_token(directory: Path) -> str:
    """The feedback token kept in ``<directory>/feedback-token`` (mode 0600), created on first use."""
    path = directory / TOKEN_NAME
    token = secret_file(path)
    if len(token) < MIN_TOKEN_LENGTH:
        raise ProcessError(
            f"{path} does not hold a valid feedback token: delete it to get a new one", delay=0
        )
    return token


class JoinExporter:
    """``python -m bentos.join_exporter`` for one Redis, on 127.0.0.1:``port``."""

    def __init__(self, supervisor: Supervisor, home: Path, port: int, redis: RedisServer) -> None:
        self.supervisor = supervisor
        self.home = home
        self.port = port
        self.redis = redis
        self.name = "joinExporter"
        self.proc: ManagedProcess | None = None

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        argv = [
            sys.executable,
            "-m",
            "bentos.join_exporter",
            "--store",
            self.redis.url,
            "--listen",
            self.address,
        ]
        env = {PASSWORD_ENV: self.redis.password, "PYTHONPATH": repo_pythonpath()}
        self.proc = self.supervisor.start(self.name, argv, self.home / "exporter.log", env=env, cwd=REPO_ROOT)
        self.supervisor.wait_ready(self.proc, http_ok(f"http://{self.address}/healthz"), timeout=timeout)


class JoinStore:
    """The Redis, exporter and token of one stack, under ``home`` (``<stack>/join``)."""

    def __init__(self, supervisor: Supervisor, home: Path, redis_port: int, exporter_port: int) -> None:
        self.home = home
        self.redis = RedisServer(supervisor, home / "redis", redis_port)
        self.exporter = JoinExporter(supervisor, home, exporter_port, self.redis)
        self.token = load_feedback_token(home)

    @property
    def url(self) -> str:
        return self.redis.url

    @property
    def token_file(self) -> Path:
        return self.home / TOKEN_NAME

    def server_env(self) -> dict[str, str]:
        """What a model server needs to use this store: its URL, the password, the token's file."""
        return {JOIN_STORE_ENV: self.url, TOKEN_FILE_ENV: str(self.token_file), **self.secret_env()}

    def secret_env(self, recorded: dict[str, str] | None = None) -> dict[str, str]:
        """The secrets of ``server_env`` (the password), for a server whose ``recorded`` environment
        names this store (all of it when None); nothing for a server of another store."""
        if recorded is not None and recorded.get(JOIN_STORE_ENV) != self.url:
            return {}
        return {PASSWORD_ENV: self.redis.password}
