"""A real Kubernetes control plane for tests: etcd + kube-apiserver (+ kube-controller-manager).

Called by the session fixture ``k8s_cluster`` in tests/conftest.py (and usable by hand:
``python -m tests.k8s.harness`` starts one and prints its kubeconfig until Ctrl-C). It

- generates, with ``openssl``, a CA, the API server's serving certificate (127.0.0.1), the
  service-account signing keys and an admin client certificate (group ``system:masters``);
- starts etcd on free 127.0.0.1 ports with a temporary data directory;
- starts kube-apiserver on a free 127.0.0.1 port with client-certificate authentication, RBAC
  (``--authorization-mode=Node,RBAC``) and service-account tokens, and waits for ``/readyz``;
- starts kube-controller-manager with only the controllers a test needs (namespace deletion,
  garbage collection, the ``default`` ServiceAccount and the ``kube-root-ca.crt`` ConfigMap):
  no scheduler, no kubelet, so Pods never run (node.py adds them, and calls ``start()`` with
  ``advertise_address`` and ``controllers=("*",)``);
- writes a kubeconfig for the admin, and stops everything (process groups) and removes the
  temporary directory on ``stop()`` (also at interpreter exit; and the processes get SIGKILL if the
  thread that started them dies, so a killed test run leaves nothing behind).

The binaries come from .cache/bin, built by ``make tools`` (tests/k8s/build-tools.sh).
"""

from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from rollout.errors import ProcessError

ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = ROOT / ".cache" / "bin"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager")
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"  # the first address of SERVICE_CIDR
KCM_CONTROLLERS = (
    "namespace-controller",
    "garbage-collector-controller",
    "serviceaccount-controller",
    "root-ca-certificate-publisher-controller",
)


def binary(name: str) -> Path:
    """The path of a tool built by ``make tools``; a ProcessError saying how to build it if absent."""
    path = BIN_DIR / name
    if not (path.exists() and os.access(path, os.X_OK)):
        raise ProcessError(
            f"{name} is not built ({path} is missing): run `make tools` "
            "(tests/k8s/build-tools.sh builds the Kubernetes binaries, etcd and helm)"
        )
    return path


def missing_binaries() -> list[str]:
    """Names of the control-plane binaries not yet in .cache/bin."""
    return [n for n in BINARIES if not os.access(BIN_DIR / n, os.X_OK)]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ProcessError(f"openssl {' '.join(args[:2])} failed: {proc.stderr.strip()}")


def _issue_cert(pki: Path, name: str, subject: str, ext: str) -> None:
    """An EC P-256 key ``name.key`` and a certificate ``name.crt`` signed by the CA in ``pki``."""
    (pki / f"{name}.ext").write_text(ext)
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key", cwd=pki)
    _openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr", cwd=pki)
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "7", "-sha256", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=pki,
    )  # fmt: skip


def generate_pki(pki: Path, server_ips: Sequence[str] = ()) -> None:
    """CA, API server serving cert, admin client cert and service-account key pair, in ``pki``.

    The serving certificate names 127.0.0.1, the ``kubernetes`` Service's ClusterIP and
    ``server_ips`` (where pods reach the API server, tests/k8s/node.py)."""
    pki.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "ca.key", "-out", "ca.crt", "-days", "7", "-subj", "/CN=bento-rollout-test-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature", cwd=pki,
    )  # fmt: skip
    _issue_cert(
        pki,
        "apiserver",
        "/CN=kube-apiserver",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,IP:{KUBERNETES_SERVICE_IP},"
        + "".join(f"IP:{ip}," for ip in server_ips)
        + "DNS:localhost,DNS:kubernetes,"
        "DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n",
    )
    _issue_cert(
        pki,
        "admin",
        "/O=system:masters/CN=bento-rollout-admin",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=clientAuth\n",
    )
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "sa.key", cwd=pki)
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def write_kubeconfig(path: Path, server: str, pki: Path) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "harness", "cluster": {"server": server, "certificate-authority": str(pki / "ca.crt")}}
        ],
        "users": [
            {
                "name": "admin",
                "user": {"client-certificate": str(pki / "admin.crt"), "client-key": str(pki / "admin.key")},
            }
        ],
        "contexts": [{"name": "harness", "context": {"cluster": "harness", "user": "admin"}}],
        "current-context": "harness",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)


@dataclass
class ControlPlane:
    """A running etcd + kube-apiserver + kube-controller-manager. Stop it with ``stop()``."""

    workdir: Path
    server: str
    kubeconfig: Path
    pki: Path
    etcd_url: str
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _owns_workdir: bool = True
    advertise_address: str = "127.0.0.1"  # the ``kubernetes`` Service's endpoint
    controllers: tuple[str, ...] = KCM_CONTROLLERS
    apiserver_args: tuple[str, ...] = ()  # more flags for kube-apiserver (node.py: its egress)

    def api_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` authenticated as the admin (system:masters)."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def http(self, timeout: float = 30.0) -> httpx.Client:
        """An httpx client speaking to the API server as the admin (for raw paths like /readyz)."""
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return httpx.Client(base_url=self.server, verify=ctx, timeout=timeout)

    def log(self, name: str) -> str:
        """The tail of a component's log (for failure messages)."""
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise ProcessError(f"{name} exited with {proc.returncode}:\n{self.log(name)}")

    def restart_apiserver(self, down: float = 0.0, timeout: float = 240.0) -> None:
        """Kill kube-apiserver (SIGKILL, no graceful shutdown), keep it down ``down`` seconds, start it
        again on the same port with the same etcd, and return once /readyz answers: an API outage
        as clients see it (connections reset, then refused, then back with the same data)."""
        _kill_group(self.procs["kube-apiserver"], grace=0.0)
        time.sleep(down)
        port = int(self.server.rsplit(":", 1)[1])
        self.procs["kube-apiserver"] = _spawn("kube-apiserver", _apiserver_args(self, port), self.workdir)
        with self.http(timeout=10) as http:
            _wait(
                self,
                "kube-apiserver /readyz after a restart",
                lambda: http.get("/readyz").status_code == 200,
                timeout,
            )

    def stop(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL to the group) and remove the work directory
        (only etcd's data when the caller gave the directory, so that the logs stay for debugging)."""
        for name in reversed(list(self.procs)):
            _kill_group(self.procs[name])
        self.procs.clear()
        # etcd preallocates 64 MB WAL segments: drop its data even where the logs are kept.
        shutil.rmtree(self.workdir / "etcd", ignore_errors=True)
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _kill_group(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds (``grace`` 0: SIGKILL at once)."""
    if proc.poll() is not None:
        return
    try:
        if grace > 0:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
                return
            except subprocess.TimeoutExpired:
                pass
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    except ProcessLookupError:
        pass


def _die_with_parent() -> None:
    """In the child: be killed if the test process dies without running its teardown (Linux)."""
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _spawn(name: str, args: list[str], workdir: Path) -> subprocess.Popen[bytes]:
    log = open(
        workdir / f"{name}.log", "ab"
    )  # the child keeps its own copy of the fd; "ab": a restart appends
    try:
        return subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    finally:
        log.close()


def _wait(cp: ControlPlane, what: str, probe: Any, timeout: float) -> None:
    """Poll ``probe()`` until it returns true; fail with the logs if a process dies or time runs out."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        cp.check_alive()
        try:
            if probe():
                return
        except (httpx.HTTPError, OSError) as exc:
            last = exc
        time.sleep(0.25)
    logs = "\n".join(f"--- {n}.log ---\n{cp.log(n)}" for n in cp.procs)
    raise ProcessError(f"{what} not ready after {timeout:.0f} s (last error: {last}):\n{logs}")


def _start_etcd(cp: ControlPlane, client_port: int, peer_port: int) -> None:
    peer = f"http://127.0.0.1:{peer_port}"
    cp.procs["etcd"] = _spawn(
        "etcd",
        [
            str(binary("etcd")), "--name=harness", f"--data-dir={cp.workdir / 'etcd'}",
            f"--listen-client-urls={cp.etcd_url}", f"--advertise-client-urls={cp.etcd_url}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=harness={peer}", "--initial-cluster-state=new",
            "--unsafe-no-fsync", "--quota-backend-bytes=2147483648", "--log-level=warn",
        ],
        cp.workdir,
    )  # fmt: skip


def _apiserver_args(cp: ControlPlane, port: int) -> list[str]:
    pki = cp.pki
    return [
        str(binary("kube-apiserver")),
        f"--etcd-servers={cp.etcd_url}",
        "--bind-address=127.0.0.1",
        f"--advertise-address={cp.advertise_address}",
        f"--secure-port={port}",
        f"--cert-dir={cp.workdir / 'certs'}",
        f"--tls-cert-file={pki / 'apiserver.crt'}",
        f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={pki / 'ca.crt'}",
        "--authorization-mode=Node,RBAC",
        "--anonymous-auth=false",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--allow-privileged=false",
        "--profiling=false",
        "--v=1",
        *cp.apiserver_args,
    ]


def _start_controller_manager(cp: ControlPlane) -> None:
    cp.procs["kube-controller-manager"] = _spawn(
        "kube-controller-manager",
        [
            str(binary("kube-controller-manager")),
            f"--kubeconfig={cp.kubeconfig}",
            f"--controllers={','.join(cp.controllers)}",
            f"--root-ca-file={cp.pki / 'ca.crt'}",
            f"--service-account-private-key-file={cp.pki / 'sa.key'}",
            "--use-service-account-credentials=false",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--secure-port=0",
            "--concurrent-namespace-syncs=4",
            "--v=1",
        ],
        cp.workdir,
    )


def start(
    workdir: Path | None = None,
    timeout: float = 240.0,
    *,
    advertise_address: str = "127.0.0.1",
    controllers: Sequence[str] = KCM_CONTROLLERS,
    apiserver_args: Sequence[str] = (),
) -> ControlPlane:
    """Start etcd, kube-apiserver and kube-controller-manager; return when the API answers /readyz.

    ``timeout`` is generous on purpose: the machine is shared and a cold start takes 10-30 s.
    ``advertise_address`` is the ``kubernetes`` Service's endpoint (the API server still listens
    on 127.0.0.1 only; tests/k8s/node.py forwards that address to it) and ``controllers`` the
    kube-controller-manager's ``--controllers`` (``("*",)``: all of its default ones);
    ``apiserver_args`` are appended to kube-apiserver's flags (the PKI is in ``workdir/pki``).
    """
    for name in ("openssl", *BINARIES):
        if name == "openssl":
            if shutil.which("openssl") is None:
                raise ProcessError("openssl is not installed: run `make system` (.ci/install-system.sh)")
        else:
            binary(name)
    owns = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="k8s-harness-")) if workdir is None else workdir
    workdir.mkdir(parents=True, exist_ok=True)
    pki = workdir / "pki"
    generate_pki(pki, server_ips=() if advertise_address == "127.0.0.1" else (advertise_address,))
    etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
    server = f"https://127.0.0.1:{api_port}"
    cp = ControlPlane(
        workdir=workdir,
        server=server,
        kubeconfig=workdir / "kubeconfig",
        pki=pki,
        etcd_url=f"http://127.0.0.1:{etcd_port}",
        _owns_workdir=owns,
        advertise_address=advertise_address,
        controllers=tuple(controllers),
        apiserver_args=tuple(apiserver_args),
    )
    write_kubeconfig(cp.kubeconfig, server, pki)
    atexit.register(cp.stop)
    try:
        _start_etcd(cp, etcd_port, peer_port)
        _wait(cp, "etcd", lambda: httpx.get(f"{cp.etcd_url}/health", timeout=5).status_code == 200, timeout)
        cp.procs["kube-apiserver"] = _spawn("kube-apiserver", _apiserver_args(cp, api_port), workdir)
        with cp.http(timeout=10) as http:
            _wait(cp, "kube-apiserver /readyz", lambda: http.get("/readyz").status_code == 200, timeout)
            _wait(cp, "namespace default", lambda: http.get("/api/v1/namespaces/default").is_success, timeout)
        _start_controller_manager(cp)
        with cp.http(timeout=10) as http:
            # The ServiceAccount controller creates "default" in each namespace once it is syncing.
            sa = "/api/v1/namespaces/default/serviceaccounts/default"
            _wait(
                cp,
                "kube-controller-manager (default ServiceAccount)",
                lambda: http.get(sa).is_success,
                timeout,
            )
    except BaseException:
        cp.stop()
        raise
    return cp


def main() -> None:
    cp = start()
    print(f"server: {cp.server}\nkubeconfig: {cp.kubeconfig}\nexport KUBECONFIG={cp.kubeconfig}")
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cp.stop()


if __name__ == "__main__":
    main()
