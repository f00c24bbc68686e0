"""nginx as the local router: render its config, start it, reload it gracefully, stop it.

The rendered config is static per set of services: one client port per service (127.0.0.1), one
admin port. Everything that changes during a rollout — weights, header/cookie matches, sticky key,
mirror percent and even the backend addresses — lives in a Lua shared dict that the admin server
changes without a reload (see lua/rollout_router.lua and rollout/routers/nginx.py). A graceful
reload (SIGHUP, after ``nginx -t``) is only needed when the set of services changes; it drains
keep-alive connections first (for half a second every request runs in a twin location with
``keepalive_timeout 0``, so nginx answers ``Connection: close`` and closes), because a plain reload
under load cuts idle keep-alive connections under clients' next requests (bench/router.py).
Admin server (127.0.0.1 only; /routes and /drain want ``Authorization: Bearer <token>``, the token
in ``<prefix>/admin-token``): GET/POST /routes/<service>, POST/DELETE /drain, GET /metrics
(rollout_router_requests_total{service,routed_to,code}, rollout_router_mirrored_total,
rollout_router_retries_total, rollout_router_failovers_total, rollout_router_mirror_copies_total),
GET /healthz. Shadowing sends the candidate a copy of the request under the same X-Request-ID
after the client has its answer; the model servers' join store compares the two answers.

nginx runs as a non-daemon child with its own prefix (config, pid, logs, temp dirs in one
directory), never the system's /etc/nginx. Who calls it: rollout/local/stack.py, tests, bench.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from rollout.errors import ProcessError, RouterError
from rollout.local.processes import LOOPBACK, ManagedProcess, Supervisor, free_port, http_ok, secret_file

NGINX_BIN = os.environ.get("ROLLOUT_NGINX", "/usr/sbin/nginx")
LUA_MODULE = "/usr/lib/nginx/modules/ngx_http_lua_module.so"
NDK_MODULE = "/usr/lib/nginx/modules/ndk_http_module.so"
LUA_DIR = Path(__file__).parent / "lua"
SERVICE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9_]{0,61}[a-z0-9])?$")


@dataclass
class NginxConfig:
    """What the static nginx.conf depends on."""

    prefix: Path
    admin_port: int
    services: dict[str, int] = field(default_factory=dict)  # service name -> client port
    worker_processes: int = 2
    upstream_keepalive: int = 64
    access_log: bool = False
    client_max_body_size: str = "1m"
    # seconds a model server may take to answer (nginx's proxy_read_timeout); a try that times out
    # goes to the other version when there is one, as a refused connection does
    read_timeout: int = 10
    # bearer token of the admin API; None: read from (or first written to) <prefix>/admin-token
    admin_token: str | None = None


def render_config(cfg: NginxConfig) -> str:
    """The nginx.conf text for ``cfg``. Pure: tests render and ``nginx -t`` it."""
    for name in cfg.services:
        if not SERVICE_NAME.match(name):
            raise RouterError(f"service name {name!r} must be a DNS label (a-z, 0-9, '-')", delay=0)
    p = cfg.prefix
    # Workers run as the user who started nginx. (As root, nginx would switch them to "nobody", who
    # cannot reach a prefix under a 0700 directory such as pytest's or /root; everything binds
    # 127.0.0.1 only.)
    user = "user root root;" if os.geteuid() == 0 else ""
    access = (
        f"access_log {p}/logs/access.log routed buffer=64k flush=1s;" if cfg.access_log else "access_log off;"
    )
    servers = "\n".join(_service_server(name, port) for name, port in sorted(cfg.services.items()))
    return f"""# rendered by rollout/local/nginx.py; routes live in the Lua shared dict, not here
load_module {NDK_MODULE};
load_module {LUA_MODULE};
worker_processes {cfg.worker_processes};
{user}
daemon off;
pid {p}/nginx.pid;
error_log {p}/logs/error.log warn;
events {{ worker_connections 4096; }}

http {{
    client_body_temp_path {p}/tmp/body;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;
    log_format routed '$remote_addr [$time_local] "$request" $status $body_bytes_sent '
                      'rid=$rollout_rid to=$rollout_to retried=$rollout_retried '
                      'mirror=$rollout_mirror rt=$request_time urt=$upstream_response_time';
    {access}
    keepalive_timeout 65s;
    keepalive_requests 100000;
    client_max_body_size {cfg.client_max_body_size};
    proxy_read_timeout {cfg.read_timeout}s;
    server_tokens off;

    lua_package_path "{LUA_DIR}/?.lua;/usr/share/lua/5.1/?.lua;;";
    lua_package_cpath "/usr/lib/x86_64-linux-gnu/lua/5.1/?.so;;";
    lua_shared_dict rollout 4m;
    init_by_lua_block {{ require("rollout_router").init("{p}/state/routes.json") }}
    init_worker_by_lua_block {{ require("rollout_router").init_worker("{p}/state/routes.json") }}

    map $http_x_request_id $rollout_rid {{
        ""      $request_id;
        default $http_x_request_id;
    }}

    upstream rollout_backend {{
        server 0.0.0.1:1;  # placeholder; balancer_by_lua picks the real peer per request
        balancer_by_lua_block {{ require("rollout_router").balance() }}
        keepalive {cfg.upstream_keepalive};
        keepalive_timeout 60s;  # below the model server's 75 s (rollout/local/bento.py): never reuses a connection being closed
        keepalive_requests 100000;
    }}

    server {{
        listen {LOOPBACK}:{cfg.admin_port};
        set $rollout_admin_token "{cfg.admin_token or ""}";
        location = /healthz {{ return 200 "ok\\n"; }}
        location = /metrics {{ content_by_lua_block {{ require("rollout_router").metrics() }} }}
        location = /drain {{ content_by_lua_block {{ require("rollout_router").admin_drain() }} }}
        location /routes/ {{
            client_max_body_size 64k;
            client_body_buffer_size 64k;
            content_by_lua_block {{ require("rollout_router").admin() }}
        }}
    }}
{servers}
}}
"""


_PROXY_TEMPLATE = """
            proxy_pass http://rollout_backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Request-ID $rollout_rid;
            proxy_set_header X-Routed-To $rollout_to;
            # a connection error (a server killed, a stale keep-alive) or a time-out (a server hung:
            # proxy_read_timeout) retries once, on the other version (rollout_router.balance);
            # predictions are side-effect free, so this holds for POST too
            proxy_next_upstream error timeout{retry_5xx} non_idempotent;
            proxy_next_upstream_tries 2;
            proxy_connect_timeout 2s;
            proxy_hide_header X-Request-ID;  # the backend echoes it; the client gets exactly one
            proxy_hide_header X-Routed-To;
            add_header X-Request-ID $rollout_rid always;
            add_header X-Routed-To $rollout_to always;
            log_by_lua_block {{ require("rollout_router").log() }}"""
_PROXY = _PROXY_TEMPLATE.format(retry_5xx="")
# requests the split sends to the candidate: its 5xx answers are retried once on stable too
_PROXY_SHIELDED = _PROXY_TEMPLATE.format(retry_5xx=" http_500 http_502 http_503 http_504")


_MIRRORED = """
            # the copy for the candidate is sent from a timer once the client has its answer (not
            # nginx's `mirror`, which holds a keep-alive client's next request until the copy is
            # answered), under the request's X-Request-ID: the join store compares the two answers
            client_body_buffer_size 64k;
            rewrite_by_lua_block { require("rollout_router").read_for_mirror() }"""


def _service_server(name: str, port: int) -> str:
    # Requests the Lua router picks for shadowing jump to @rollout_mirrored, the only location that
    # keeps the body for the copy: the others pay nothing for shadowing.
    return f"""
    server {{
        listen {LOOPBACK}:{port} reuseport;
        set $rollout_service "{name}";
        # errors the router answers itself are JSON (the OIP shape on /v2), never nginx's HTML
        error_page 500 502 503 504 = @rollout_error;
        location / {{
            set $rollout_to "";
            set $rollout_mirror "";
            set $rollout_retried "";
            set $rollout_pinned "";
            set $rollout_error "";
            access_by_lua_block {{ require("rollout_router").route() }}{_PROXY}
        }}
        location @rollout_error {{
            content_by_lua_block {{ require("rollout_router").error_page() }}
            log_by_lua_block {{ require("rollout_router").log() }}
        }}
        location @rollout_mirrored {{{_MIRRORED}{_PROXY}
        }}
        # the drain twins (see NginxServer.reload): same proxying, but nginx closes the client
        # connection after the response ("Connection: close", r->keepalive off)
        location @rollout_drain {{
            keepalive_timeout 0;{_PROXY}
        }}
        location @rollout_mirrored_drain {{
            keepalive_timeout 0;{_MIRRORED}{_PROXY}
        }}
        location @rollout_candidate {{{_PROXY_SHIELDED}
        }}
        location @rollout_candidate_drain {{
            keepalive_timeout 0;{_PROXY_SHIELDED}
        }}
    }}"""


TOKEN = re.compile(r"[A-Za-z0-9_-]{16,128}")


def load_admin_token(prefix: Path) -> str:
    """The admin token kept in ``<prefix>/admin-token`` (mode 0600), created on first use."""
    path = prefix / "admin-token"
    token = secret_file(path)
    if not TOKEN.fullmatch(token):
        raise RouterError(f"{path} does not hold a valid admin token: delete it to get a new one", delay=0)
    return token


class NginxServer:
    """One nginx master with its own prefix directory; started and stopped by a Supervisor."""

    def __init__(self, supervisor: Supervisor, cfg: NginxConfig, name: str = "nginx") -> None:
        self.supervisor = supervisor
        self.cfg = cfg
        self.name = name
        self.proc: ManagedProcess | None = None
        if cfg.admin_token is None:
            cfg.admin_token = load_admin_token(cfg.prefix)
        elif not TOKEN.fullmatch(cfg.admin_token):
            raise RouterError("the nginx admin token must be 16-128 characters of A-Z a-z 0-9 _ -", delay=0)

    @property
    def admin_token(self) -> str:
        """The admin API's bearer token (NginxRouter and ``reload`` send it)."""
        assert self.cfg.admin_token is not None
        return self.cfg.admin_token

    @property
    def conf_path(self) -> Path:
        return self.cfg.prefix / "nginx.conf"

    @property
    def admin_url(self) -> str:
        return f"http://{LOOPBACK}:{self.cfg.admin_port}"

    def service_url(self, service: str) -> str:
        return f"http://{LOOPBACK}:{self.cfg.services[service]}"

    def write_config(self) -> None:
        p = self.cfg.prefix
        for d in ("logs", "tmp", "state"):
            (p / d).mkdir(parents=True, exist_ok=True)
        tmp = self.conf_path.with_suffix(".conf.tmp")
        tmp.write_text(render_config(self.cfg))
        tmp.chmod(0o600)  # it holds the admin token
        self.test_config(tmp)
        tmp.replace(self.conf_path)

    def test_config(self, path: Path) -> None:
        res = subprocess.run(
            [NGINX_BIN, "-t", "-q", "-p", str(self.cfg.prefix), "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if res.returncode != 0:
            raise RouterError(f"nginx rejected the rendered config {path}:\n{res.stderr.strip()}", delay=0)

    def start(self, timeout: float = 30.0) -> float:
        """Write the config, start nginx, wait until the admin port answers; seconds to ready."""
        self.write_config()
        argv = [NGINX_BIN, "-p", str(self.cfg.prefix), "-c", str(self.conf_path)]
        self.proc = self.supervisor.start(self.name, argv, self.cfg.prefix / "logs" / "master.log")
        return self.supervisor.wait_ready(self.proc, http_ok(self.admin_url + "/healthz"), timeout=timeout)

    def master_pid(self) -> int:
        if self.proc is None:
            raise ProcessError("nginx is not running")
        return self.proc.pid

    def worker_pids(self) -> set[int]:
        pid = self.master_pid()
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return set()
        return {int(c) for c in children}

    def reload(self, timeout: float = 30.0, drain: float = 0.5) -> float:
        """Re-render, test and apply the config with SIGHUP; seconds until new workers serve.

        In-flight requests finish on the old workers, but idle keep-alive connections of the old
        workers are closed when they exit, and a client that sends its next request on one at that
        moment gets a connection error. So for ``drain`` seconds first, the Lua router sends every
        request to the ``@rollout_drain`` twin of its location, where ``keepalive_timeout 0`` makes
        nginx itself answer ``Connection: close`` and close the connection after the response
        (adding the header from Lua is not enough: nginx would still write its own
        ``Connection: keep-alive`` first, and python-requests obeys the first one). Clients
        reconnect cleanly, to the new workers after the reload.
        Routing changes never come here: they go through the Lua admin API.
        """
        self.write_config()
        if drain > 0:
            self._admin("POST", f"/drain?seconds={drain + timeout}")
            time.sleep(drain)
        old = self.worker_pids()
        started = time.monotonic()
        applied: float | None = None
        try:
            os.kill(self.master_pid(), signal.SIGHUP)
            while time.monotonic() - started < timeout:
                now = self.worker_pids()
                if applied is None and len(now - old) >= self.cfg.worker_processes:
                    if all(self._port_open(p) for p in self.cfg.services.values()):
                        applied = time.monotonic() - started
                if applied is not None and not (now & old):
                    break  # old workers have finished their requests and exited
                time.sleep(0.01)
        finally:
            if drain > 0:
                self._admin("DELETE", "/drain")
        if applied is None:
            raise RouterError(f"nginx did not start new workers within {timeout:.0f} s of a reload", delay=1)
        return applied

    def _admin(self, method: str, path: str) -> None:
        try:
            httpx.request(
                method,
                self.admin_url + path,
                headers={"Authorization": f"Bearer {self.admin_token}"},
                timeout=5,
            ).raise_for_status()
        except httpx.HTTPError as exc:
            raise RouterError(f"nginx admin API {method} {path} failed: {exc}") from exc

    @staticmethod
    def _port_open(port: int) -> bool:
        try:
            with httpx.Client(timeout=1.0) as c:
                c.get(f"http://{LOOPBACK}:{port}/_rollout_probe")
            return True
        except httpx.HTTPError:
            return False

    def add_service(self, name: str, port: int | None = None) -> int:
        """Give ``name`` a client port (graceful reload when nginx runs); returns the port."""
        if name in self.cfg.services:
            return self.cfg.services[name]
        self.cfg.services[name] = port or free_port()
        if self.proc is not None and self.proc.alive():
            self.reload()
        return self.cfg.services[name]

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGQUIT: finish in-flight requests), SIGKILL after ``timeout`` s."""
        self.supervisor.stop(self.name, timeout=timeout, sig=signal.SIGQUIT)
        self.proc = None
