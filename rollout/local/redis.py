"""Redis for the shared join store (``bentos/redis_join.py``): config, start, readiness.

Debian's ``redis-server`` runs with a config and data directory of its own (never
/etc/redis or /var/lib/redis), on 127.0.0.1 and a free port, with a password. Durability is the
store's promise that a 200 for a label means counted: the append-only file is fsynced before Redis
answers a write (``appendfsync always``), so a killed and restarted Redis still has every
label it acknowledged. The chart's Redis uses the same settings (``render_config`` is the one
source: tests/k8s reads it). Who calls it: tests, the local stack.
"""

from __future__ import annotations

import os
from pathlib import Path

import redis

from bentos.redis_join import connect
from rollout.local.processes import LOOPBACK, ManagedProcess, Supervisor, secret_file

REDIS_BIN = os.environ.get("ROLLOUT_REDIS", "/usr/bin/redis-server")

# the settings that make a 200 durable, and nothing global: no RDB snapshots (the AOF is the
# record), no protected-mode surprises (a password is always set), no dangerous commands
DURABLE = {
    "appendonly": "yes",
    "appendfsync": "always",
    "save": '""',
    "maxmemory-policy": "noeviction",  # full is an error, never a silently evicted prediction
}


def render_config(port: int, data_dir: Path, password: str, bind: str = LOOPBACK) -> str:
    """redis.conf for one store: ``bind``, ``port``, data in ``data_dir``, ``requirepass``."""
    lines = {
        "bind": bind,
        "port": str(port),
        "dir": str(data_dir),
        "daemonize": "no",
        "logfile": '""',
        "requirepass": password,
        **DURABLE,
        "rename-command FLUSHALL": '""',
        "rename-command FLUSHDB": '""',
        "rename-command CONFIG": '""',
        "rename-command DEBUG": '""',
    }
    return "".join(f"{k} {v}\n" for k, v in lines.items())


class RedisServer:
    """One redis-server with its config and append-only file under ``home``."""

    def __init__(self, supervisor: Supervisor, home: Path, port: int, name: str = "redis") -> None:
        self.supervisor = supervisor
        self.home = home
        self.port = port
        self.name = name
        self.password = self._password()
        self.proc: ManagedProcess | None = None

    def _password(self) -> str:
        return secret_file(self.home / "password")

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self, timeout: float = 30.0) -> None:
        data = self.home / "data"
        data.mkdir(parents=True, exist_ok=True)
        conf = self.home / "redis.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the password
        with os.fdopen(fd, "w") as fh:
            fh.write(render_config(self.port, data, self.password))
        self.proc = self.supervisor.start(self.name, [REDIS_BIN, str(conf)], self.home / "redis.log")
        self.supervisor.wait_ready(self.proc, self._ping, timeout=timeout)

    def _ping(self) -> bool:
        """Redis answers PING to its password (it is up and has loaded its append-only file)."""
        client = connect(self.url, self.password, timeout=1.0)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def stop(self, sig: int | None = None) -> None:
        """Stop it (SIGTERM; ``sig=signal.SIGKILL`` for a crash: nothing flushed on the way out)."""
        if sig is None:
            self.supervisor.stop(self.name)
        else:
            self.supervisor.stop(self.name, timeout=5.0, sig=sig)
