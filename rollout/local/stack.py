"""LocalStack: the embedded data plane (nginx router, Prometheus, join store, model servers) as one object.

Usage (the runner and the CLI build on this)::

    stack = LocalStack.up(services=["iris"])          # nginx + Prometheus on free 127.0.0.1 ports
    stable = stack.start_bento("iris", "iris:v1")      # bentoml serve on a free port, ready, scraped
    other = stack.start_backend("iris", "echo", "v0", ["python", "server.py", "--port", "{port}"])
    router = stack.router("iris")                      # a TrafficRouter (rollout/routers/nginx.py)
    router.ensure(RouteTarget("iris", stable))
    stack.service_url("iris")                          # where clients send requests
    stack.metrics()                                    # a PrometheusProvider on the stack's Prometheus
    stack.stop_backend("iris-v1"); stack.stop()

Every process binds 127.0.0.1 on a free port and leads its own process group. The stack's state
(pids with start times, ports, paths, backends) is kept in ``<home>/stack/stack.json`` (stackfile.py) so another
process can ``LocalStack.attach()`` (``rollout run``, ``rollout status``) or ``LocalStack.down()``
(``rollout down``). With ``detach=False`` (tests, ``rollout demo``) everything stops when the
Python process exits or gets Ctrl-C/SIGTERM; with ``detach=True`` (``rollout up``) and in attached
stacks, processes outlive the Python process until ``down()``. Routes survive an nginx restart
(nginx keeps them in ``routes.json`` too; ``restart("nginx")``). For fault drills: ``stop_prometheus``,
``start_prometheus``, ``stop_backend``. ``home`` defaults to $ROLLOUT_HOME or ``.state``.
Prometheus scrapes every backend (labels service, backend), nginx's router counters
(label component="router") and the join store's exporter (component="join") every second.
The join store (rollout/local/join.py: Redis + exporter + feedback token) is where every model
server ``start_bento`` starts joins labels and mirrored answers; clients send labels with
``Authorization: Bearer <stack.feedback_token>``.
Who calls it: rollout/local/runner.py, the CLI (up/down/run/status), tests, the demo.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rollout.errors import NotFoundError, ProcessError
from rollout.local.join import SECRET_ENV, JoinExporter, JoinStore
from rollout.local.nginx import NginxConfig, NginxServer
from rollout.local.processes import (
    LOOPBACK,
    ManagedProcess,
    Supervisor,
    free_port,
    http_ok,
    stop_pid,
)
from rollout.local.prometheus import PrometheusServer
from rollout.local.redis import RedisServer
from rollout.local.stackfile import (
    COMPONENTS,
    DOWN_NAME,
    STATE_NAME,
    alive,
    bring_down,
    flock,
    foreign,
    kill_group,
    read_state,
    record,
    write_state,
)
from rollout.metrics.prometheus import PrometheusProvider
from rollout.routers.base import Backend
from rollout.routers.nginx import NginxRouter

if TYPE_CHECKING:
    from rollout.local.watchdog import Watchdog


def default_home() -> Path:
    return Path(os.environ.get("ROLLOUT_HOME", ".state")).resolve()


class LocalStack:
    """nginx + Prometheus + join store + model servers under ``home/stack``; see the module docstring."""

    def __init__(self, home: Path, supervisor: Supervisor, state: dict[str, Any]) -> None:
        self.home = home
        self.dir = home / "stack"
        self.supervisor = supervisor
        self.state = state
        self._thread_lock = threading.RLock()  # the runner starts backends from a thread
        self.watchdog: Watchdog | None = None
        ng = state["nginx"]
        self.nginx = NginxServer(
            supervisor,
            NginxConfig(prefix=Path(ng["prefix"]), admin_port=ng["adminPort"], services=ng["services"]),
        )
        pr = state["prometheus"]
        self.prometheus = PrometheusServer(
            supervisor, Path(pr["home"]), pr["port"], data_dir=Path(pr["data"])
        )
        if "redis" not in state:  # brought up by an older bento-rollout
            raise ProcessError(
                f"the stack under {home} has no join store: `rollout down`, then `rollout up`", delay=0
            )
        self.join = JoinStore(
            supervisor, self.dir / "join", state["redis"]["port"], state["joinExporter"]["port"]
        )

    # --- life cycle ------------------------------------------------------------------------------

    @classmethod
    def up(
        cls,
        home: Path | None = None,
        services: Sequence[str] = ("iris",),
        detach: bool = False,
        supervise: bool = False,
    ) -> LocalStack:
        """Start nginx, Prometheus and the join store (Redis and its exporter), no model server;
        ProcessError if a stack already runs here.

        ``supervise``: restart whatever of the stack dies (rollout/local/watchdog.py): a thread of
        this process, or with ``detach`` a daemon that outlives it (``rollout up``)."""
        home = (home or default_home()).resolve()
        existing = read_state(home)
        if existing and alive(existing.get("nginx", {})):
            raise ProcessError(
                f"a local stack is already running (nginx pid {existing['nginx']['pid']}); "
                f"run `rollout down` first (state: {home / 'stack' / STATE_NAME})",
                delay=0,
            )
        if existing or (home / "stack" / DOWN_NAME).exists():
            cls.down(home)  # leftovers of a stack whose nginx died, or of a `down` cut short
        stack_dir = home / "stack"
        if stack_dir.exists():
            shutil.rmtree(stack_dir)
        stack_dir.mkdir(parents=True)
        state: dict[str, Any] = {
            "nginx": {
                "prefix": str(stack_dir / "nginx"),
                "adminPort": free_port(),
                "services": {s: free_port() for s in services},
            },
            "prometheus": {
                "home": str(stack_dir / "prometheus"),
                "port": free_port(),
                "data": tempfile.mkdtemp(prefix="rollout-prometheus-"),
            },
            "redis": {"port": free_port()},
            "joinExporter": {"port": free_port()},
            "backends": {},
        }
        stack = cls(home, Supervisor(cleanup_on_exit=not detach), state)
        try:
            for server in stack._servers():  # Redis before its exporter
                server.start()
                record(state[server.name], server.proc)
            router = f"{LOOPBACK}:{state['nginx']['adminPort']}"
            stack.prometheus.add_target("router", router, {"component": "router"})
            stack.prometheus.add_target("join", stack.join.exporter.address, {"component": "join"})
            stack._save()
            if supervise:
                stack.supervise(daemon=detach)
        except BaseException:
            stack.supervisor.stop_all()
            raise
        return stack

    def supervise(self, daemon: bool = False) -> None:
        """Restart what dies: a watchdog thread here, or (``daemon``) a detached watchdog process,
        recorded in the state as ``watchdog`` so that ``down()`` stops it before anything else."""
        from rollout.local.watchdog import Watchdog

        if not daemon:
            self.watchdog = Watchdog(self).start()
            return
        argv = [sys.executable, "-m", "rollout.local.watchdog", str(self.home)]
        proc = self.supervisor.start("watchdog", argv, self.dir / "watchdog.log")
        info: dict[str, Any] = {}
        record(info, proc)
        with self._locked():
            self.state["watchdog"] = info

    @classmethod
    def attach(cls, home: Path | None = None) -> LocalStack:
        """The stack another process brought up; NotFoundError when none is running (its nginx
        is gone and no watchdog is there to bring it back)."""
        home = (home or default_home()).resolve()
        state = read_state(home)
        if not state or not (alive(state.get("nginx", {})) or alive(state.get("watchdog", {}))):
            raise NotFoundError(f"no local stack is running under {home}; start one with `rollout up`")
        stack = cls(home, Supervisor(cleanup_on_exit=False), state)
        for server in stack._servers():
            server.proc = foreign(server.name, state[server.name])
        return stack

    @classmethod
    def down(cls, home: Path | None = None) -> bool:
        """Stop every process recorded in the state file (stackfile.bring_down: a live ``rollout
        run`` sees the stack gone first); False when nothing was running."""
        return bring_down((home or default_home()).resolve())

    def stop(self) -> None:
        """Stop the backends, the join store, Prometheus and nginx of this stack and forget its state."""
        if self.watchdog is not None:
            self.watchdog.stop()
            self.watchdog = None
        for name in list(self.state["backends"]):
            self.stop_backend(name)
        for server in (self.join.exporter, self.join.redis):
            _stop_component(server.name, server.proc, self.supervisor, timeout=10)
            server.proc = None
        self.prometheus.stop()
        self.nginx.stop()
        LocalStack.down(self.home)  # anything recorded but not started by this process

    def stop_prometheus(self) -> None:
        """Stop Prometheus only (fault drills: the rollout must not promote while it is away)."""
        with self._locked():
            self.state["prometheus"]["stopped"] = True  # on purpose: the watchdog leaves it
        _stop_component(self.prometheus.name, self.prometheus.proc, self.supervisor, timeout=15)
        self.prometheus.proc = None

    def start_prometheus(self) -> None:
        """Start Prometheus again on the same port, data and targets (after ``stop_prometheus``)."""
        self.restart("prometheus")

    def restart(self, component: str) -> None:
        """Stop (if it runs) and start ``component`` (stackfile.COMPONENTS) on its port, and record
        its new pid: nginx's routes come back from its routes file, Prometheus' series from its
        TSDB, every label Redis acknowledged from its append-only file, the exporter's counters
        from Redis. The watchdog calls it for what died."""
        server = next(s for s in self._servers() if s.name == component)
        _stop_component(server.name, server.proc, self.supervisor, timeout=10)
        kill_group(self.state[component])  # workers of a killed leader would keep its port
        self.supervisor.processes.pop(server.name, None)
        server.proc = None
        server.start()
        with self._locked():
            record(self.state[component], server.proc)
            self.state[component].pop("stopped", None)

    def restart_backend(self, name: str, timeout: float = 180.0) -> Backend:
        """Start a model server that died again, on its address with its command (the watchdog)."""
        info = self.state["backends"].get(name)
        if info is None or not info.get("argv"):
            raise NotFoundError(f"backend {name!r} was not started by this stack; cannot restart it")
        kill_group(info)
        self.supervisor.processes.pop(f"backend:{name}", None)
        env = {**info.get("env", {}), **self.join.secret_env(info.get("env", {}))}
        proc = self.supervisor.start(f"backend:{name}", info["argv"], Path(info["log"]), env=env)
        with self._locked():
            record(self.state["backends"][name], proc)
        self.supervisor.wait_ready(proc, http_ok(f"http://{info['address']}{info['readyPath']}"), timeout)
        return Backend(name=name, version=info["version"], address=info["address"])

    def reload(self) -> dict[str, Any] | None:
        """Read the state file again (another process, the watchdog, may have restarted something):
        pids of nginx, Prometheus, the join store and the backends as recorded now. Returns the
        state, or None when the state file is gone: the stack was brought down (``rollout down``)."""
        disk = read_state(self.home)
        if disk is None:
            return None
        with self._thread_lock:
            for component in (*COMPONENTS, "watchdog"):
                if component in disk:
                    self.state.setdefault(component, {}).update(disk[component])
                    if "stopped" not in disk[component]:
                        self.state[component].pop("stopped", None)
            if "backends" in disk:
                self.state["backends"] = disk["backends"]
            for server in self._servers():
                info = self.state[server.name]
                proc = server.proc
                if proc is not None and proc.popen is None and info.get("pid") != proc.pid:
                    server.proc = foreign(server.name, info)
            return self.state

    def detach(self) -> None:
        """Leave every process running after this Python process exits (``rollout up``)."""
        self.supervisor.detach()

    # --- services and backends -------------------------------------------------------------------

    def service_url(self, service: str) -> str:
        try:
            return f"http://{LOOPBACK}:{self.state['nginx']['services'][service]}"
        except KeyError:
            raise NotFoundError(
                f"service {service!r} is not routed by this stack; add_service() it"
            ) from None

    def add_service(self, service: str) -> str:
        """Give ``service`` a client port on nginx (a graceful reload); returns its URL."""
        self.nginx.add_service(service)
        self._save()
        return self.service_url(service)

    def start_backend(
        self,
        service: str,
        name: str,
        version: str,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        ready_path: str = "/readyz",
        metrics_path: str = "/metrics",
        timeout: float = 120.0,
    ) -> Backend:
        """Start one model server; ``{port}`` in ``argv``/``env`` is replaced by a free port.

        Waits until GET ``ready_path`` answers 2xx, registers it with Prometheus (labels
        ``service``, ``backend``=name) and returns the Backend to route to.
        """
        port = free_port()
        argv = [a.replace("{port}", str(port)) for a in argv]
        env = {k: v.replace("{port}", str(port)) for k, v in (env or {}).items()}
        return self._start(service, name, version, port, argv, env, ready_path, metrics_path, timeout)

    def start_bento(
        self,
        service: str,
        model_tag: str,
        name: str | None = None,
        workers: int = 1,
        timeout: float = 180.0,
        digest: str | None = None,
        env: dict[str, str] | None = None,
    ) -> Backend:
        """Start ``bentoml serve`` of the model service for ``model_tag`` (rollout/local/bento.py),
        joining labels in the stack's join store; ``env``: more of its settings (a fault rate).

        The backend is named ``name`` (default ``<service>-<version>``), its version is the tag's
        version; ready when ``/v2/health/ready`` answers, scraped at ``/metrics``. ``digest`` (a
        ModelRollout's ``stable.digest`` / ``candidate.digest``) pins the artifact: a server whose
        artifact has another digest exits before it is ready (ProcessError naming both digests),
        and a watchdog restart keeps the pin.
        """
        from rollout.local.bento import bento_server_command

        version = model_tag.partition(":")[2] or model_tag
        port = free_port()
        extra = {**self.join.server_env(), **(env or {})}
        argv, full = bento_server_command(model_tag, port, workers, extra_env=extra, digest=digest)
        name = name or f"{service}-{version}"
        backend = self._start(
            service, name, version, port, argv, full, "/v2/health/ready", "/metrics", timeout
        )
        return backend

    def _start(
        self,
        service: str,
        name: str,
        version: str,
        port: int,
        argv: list[str],
        env: dict[str, str],
        ready_path: str,
        metrics_path: str,
        timeout: float,
    ) -> Backend:
        if name in self.state["backends"]:
            raise ProcessError(f"backend {name!r} already exists; stop_backend() it first", delay=0)
        log = self.dir / "backends" / f"{name}.log"
        proc = self.supervisor.start(f"backend:{name}", argv, log, env=env)
        address = f"{LOOPBACK}:{port}"
        # what a restart needs: the command and the environment it adds (not the whole environment,
        # nor a secret: restart_backend adds the join store's password again)
        added = {k: v for k, v in env.items() if os.environ.get(k) != v and k not in SECRET_ENV}
        info: dict[str, Any] = {
            "service": service,
            "version": version,
            "address": address,
            "log": str(log),
            "argv": list(argv),
            "env": added,
            "readyPath": ready_path,
        }
        record(info, proc)
        with self._locked():
            self.state["backends"][name] = info
        try:
            self.supervisor.wait_ready(proc, http_ok(f"http://{address}{ready_path}"), timeout=timeout)
        except ProcessError:
            with self._locked():
                self.state["backends"].pop(name, None)
            raise
        self.prometheus.add_target(name, address, {"service": service, "backend": name}, metrics_path)
        return Backend(name=name, version=version, address=address)

    def add_backend(
        self, service: str, name: str, version: str, address: str, metrics_path: str = "/metrics"
    ) -> Backend:
        """Register a model server started elsewhere (no process management, scraped by Prometheus)."""
        with self._locked():
            self.state["backends"][name] = {"service": service, "version": version, "address": address}
        self.prometheus.add_target(name, address, {"service": service, "backend": name}, metrics_path)
        return Backend(name=name, version=version, address=address)

    def backends(self, service: str | None = None) -> dict[str, Backend]:
        """The model servers this stack knows of (for ``service``, or all), by backend name."""
        with self._thread_lock:
            return {
                n: Backend(name=n, version=b["version"], address=b["address"])
                for n, b in self.state["backends"].items()
                if service is None or b["service"] == service
            }

    def stop_backend(self, name: str, timeout: float = 15.0) -> None:
        """Stop a model server (SIGTERM: in-flight requests finish) and stop scraping it."""
        info = self.state["backends"].get(name)
        if info is None:
            return
        with self._locked():
            if name in self.state["backends"]:
                self.state["backends"][name]["stopping"] = True  # on purpose: the watchdog leaves it
        self.prometheus.remove_target(name)
        if f"backend:{name}" in self.supervisor.processes:
            self.supervisor.stop(f"backend:{name}", timeout=timeout)
        elif info.get("pid"):
            stop_pid(info["pid"], info.get("startTime"), timeout=timeout)
        with self._locked():
            self.state["backends"].pop(name, None)

    # --- clients ---------------------------------------------------------------------------------

    def router(self, service: str) -> NginxRouter:
        self.service_url(service)  # NotFoundError for an unknown service
        return NginxRouter(self.nginx.admin_url, service, token=self.nginx.admin_token)

    def metrics(self) -> PrometheusProvider:
        return PrometheusProvider(self.prometheus.url)

    @property
    def prometheus_url(self) -> str:
        return self.prometheus.url

    @property
    def feedback_token(self) -> str:
        """The bearer token the stack's model servers want for labels (``/feedback``); a server
        started elsewhere joins this stack's store with ``stack.join.server_env()``."""
        return self.join.token

    def status(self) -> dict[str, Any]:
        """Ports, pids and liveness of every process, for ``rollout status``."""
        with self._thread_lock:
            out = json.loads(json.dumps(self.state))
        for info in [*(out[c] for c in COMPONENTS), *out["backends"].values()]:
            if info.get("pid"):
                info["running"] = alive(info)
        return out

    # --- state file ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Read-modify-write of the state file under an flock; other processes may share the stack."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with self._thread_lock, flock(self.dir):
            if (self.dir / DOWN_NAME).exists():  # written now, it would bring the stack back to life
                raise NotFoundError(
                    f"the local stack under {self.home} is being brought down (`rollout down`)"
                )
            disk = read_state(self.home) or {}
            for name, info in disk.get("backends", {}).items():
                self.state["backends"].setdefault(name, info)
            services = self.state["nginx"]["services"]  # shared with NginxConfig: update in place
            for name, port in disk.get("nginx", {}).get("services", {}).items():
                services.setdefault(name, port)
            yield
            write_state(self.dir, self.state)

    def _save(self) -> None:
        with self._locked():
            pass

    def _servers(self) -> tuple[NginxServer | PrometheusServer | RedisServer | JoinExporter, ...]:
        """The processes besides the model servers, in COMPONENTS order (``.name`` is the key)."""
        return (self.nginx, self.prometheus, self.join.redis, self.join.exporter)


def _stop_component(name: str, proc: ManagedProcess | None, supervisor: Supervisor, timeout: float) -> None:
    if name in supervisor.processes:
        supervisor.stop(name, timeout=timeout)
    elif proc is not None:  # started by another process (attached stack)
        stop_pid(proc.pid, proc.start_time, timeout=timeout)
