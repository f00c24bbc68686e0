"""A single-node Kubernetes cluster that runs real pods, for tests (fixtures.py ``k8s_node``).

On top of a control plane from harness.py (its own etcd + kube-apiserver + kube-controller-manager
with all its default controllers, started by ``start()`` unless given) it runs kube-scheduler and,
on the node, containerd + runc (Debian's), the kubelet, kube-proxy (iptables mode) and CoreDNS (the
cluster DNS on the node's address, dns.py); pods are
networked by the CNI ``bridge`` and ``host-local`` plugins (Debian's containernetworking-plugins).
Images come from images.py (no registry): imported with ``ctr images import`` before the kubelet
starts, containerd's ``sandbox_image`` being images.py's ``pause``. By hand: ``python -m
tests.k8s.node`` starts one and prints its KUBECONFIG until Ctrl-C.

All cluster networking is in a network namespace the harness creates, never in the host's::

    host netns (nothing added)              node netns brnode-<id>
    kube-apiserver  127.0.0.1:P  <-socat--  <rundir>/apiserver.sock  <-socat--  0.0.0.0:P
      its "cluster" egress  --CONNECT-->    <rundir>/egress.sock  egress.py --> kubelet, pods, Services
    kube-scheduler  (talks to 127.0.0.1:P)  eth0 10.200.0.2/24 (a veth whose peer stays here),
                                              default route via 10.200.0.1 on it
                                            cni0 10.244.0.1/24 --veth-- pod netns 10.244.0.x
                                            containerd, kubelet, kube-proxy (its iptables rules),
                                            CoreDNS on 10.200.0.2:53

- No interface reaches the host: the node reaches the API server through a unix socket in the run
  directory (one socat on each side); the API server reaches the kubelet, pods and Services (logs,
  exec, port-forward, ``.../proxy``, webhooks) through its egress selector, an HTTP CONNECT proxy
  (egress.py) on another unix socket, running in the node netns; ``forward()`` gives a test a
  127.0.0.1 port of the host leading to an address inside the node netns.
- The API server advertises ``10.200.0.2:P``, so the pods' ``kubernetes`` Service (10.96.0.1:443)
  leads through kube-proxy to that forward (the serving certificate names both addresses).
- containerd, the kubelet and kube-proxy share one private mount namespace (``unshare
  --propagation slave``, joined with ``nsenter``): every mount they make (overlay rootfs, shm,
  pod netns, volumes) exists only there and vanishes with them; ``/run``, ``/var/lib`` and
  ``/var/log`` are fresh tmpfs there, so shim sockets, libcni's cache and ``/var/log/containers``
  never reach the host; the kernel settings the kubelet would set (not per namespace) are files
  bind-mounted over /proc/sys there, already holding its values. All else is under the run
  directory ``/tmp/brnode-<id>`` (containerd's root, state and socket, runc's state, the
  kubelet's root dir and pod logs, CNI config and IPAM).
- Every process of the node (shims and containers too) is in the cgroup ``/brnode-<id>``;
  ``stop()`` ends them by those pids, deletes the netns (the bridge, veths and iptables rules go
  with it), the cgroups and the run directory (footprint.py, which also reaps the leftovers of a
  test run killed before its teardown).

A pod or Service is reached with ``run()``/``http_get()`` inside the node netns, ``forward()``
from the host, or the API server (``kubectl logs/exec/port-forward``, ``.../proxy``); a container's
output also with ``pod_log()`` (the kubelet's log files).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from rollout.errors import ProcessError
from tests.k8s import dns, footprint, harness
from tests.k8s.images import BUSYBOX, Image, busybox_images
from tests.k8s.node_config import (
    CNI_BIN,
    CNI_PLUGINS,
    KUBELET_SYSCTLS,
    NODE_GATEWAY,
    NODE_IP,
    NODE_NAME,
    client_cert,
    cni_config,
    containerd_config,
    kube_proxy_config,
    kubeconfig,
    kubelet_config,
)

__all__ = ["NODE_IP", "NODE_NAME", "Node", "missing_tools", "start"]

NODE_BINARIES = ("kube-scheduler", "kubelet", "kube-proxy")
HOST_TOOLS = ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "ip", "iptables", "conntrack",
              "nsenter", "unshare", "mount", "socat", "curl")  # fmt: skip


def missing_tools() -> list[str]:
    """What the node needs and this machine lacks (binaries of `make tools` and Debian packages)."""
    missing = [n for n in NODE_BINARIES if not os.access(harness.BIN_DIR / n, os.X_OK)]
    missing += [t for t in HOST_TOOLS if shutil.which(t) is None]
    missing += [str(CNI_BIN / p) for p in CNI_PLUGINS if not (CNI_BIN / p).exists()]
    missing += [] if BUSYBOX.exists() else [str(BUSYBOX)]
    return missing


def _join_cgroup_and_die_with_parent(procs_file: Path) -> Callable[[], None]:
    def preexec() -> None:  # in the child, before exec
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        procs_file.write_text("0")

    return preexec


def _kill(proc: subprocess.Popen[bytes], grace: float) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def _wait_for(probe: Callable[[], object], what: str, timeout: float, check: Callable[[], None]) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        check()
        try:
            if probe():
                return
        except (OSError, ProcessError, subprocess.SubprocessError) as exc:
            last = exc
        time.sleep(0.25)
    raise ProcessError(f"{what} not ready after {timeout:.0f} s (last error: {last})")


@dataclass
class Node:
    """A running single-node cluster. Stop it with ``stop()``."""

    name: str  # brnode-<id>: the run directory's name, the netns and the cgroup
    rundir: Path
    logdir: Path
    control_plane: harness.ControlPlane
    images: dict[str, Image]  # "busybox", "pause"
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _owns_control_plane: bool = True
    _forwards: int = 0

    @property
    def netns(self) -> str:
        return self.name

    def nsenter(self, *cmd: str, mount: bool = False) -> list[str]:
        """``cmd`` run in the node netns (and with ``mount`` in the node's mount namespace)."""
        ns = [f"--net=/run/netns/{self.netns}"]
        if mount:
            ns.append(f"--mount=/proc/{self.procs['containerd'].pid}/ns/mnt")
        return ["nsenter", *ns, "--", *cmd]

    def run(self, *cmd: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in the node netns and return the completed process (not checked)."""
        return subprocess.run(self.nsenter(*cmd), capture_output=True, text=True, timeout=timeout)

    def http_get(self, url: str, timeout: float = 5.0) -> str:
        """GET ``url`` from inside the node netns (curl); the body, or a ProcessError."""
        proc = self.run("curl", "-sS", "--fail", "-m", str(timeout), url, timeout=timeout + 5)
        if proc.returncode != 0:
            raise ProcessError(f"GET {url} in {self.netns} failed: {proc.stderr.strip() or proc.returncode}")
        return proc.stdout

    def forward(self, host: str, port: int) -> int:
        """A port on the host's 127.0.0.1 that leads to ``host:port`` inside the node netns (two socats
        and a unix socket in the run directory, like the API server's way in); returns the port."""
        self._forwards += 1
        sock = self.rundir / f"forward-{self._forwards}.sock"
        local = harness.free_port()
        self._spawn(f"forward-{self._forwards}-node", self.nsenter(
            "socat", f"UNIX-LISTEN:{sock},fork,mode=600,unlink-early", f"TCP:{host}:{port}", mount=True,
        ))  # fmt: skip
        _wait_for(sock.exists, f"forward {host}:{port}", 30, self.check_alive)
        self._spawn(f"forward-{self._forwards}-host", [
            "socat", f"TCP-LISTEN:{local},bind=127.0.0.1,fork,reuseaddr", f"UNIX-CONNECT:{sock}",
        ])  # fmt: skip
        return local

    def pod_log(self, namespace: str, pod: str, container: str | None = None) -> str:
        """The output of a pod's container(s), read from the kubelet's log files in the run directory
        (the same text as ``kubectl logs``, which goes through the API server and egress.py)."""
        out = []
        for d in sorted((self.rundir / "pod-logs").glob(f"{namespace}_{pod}_*")):
            for f in sorted(d.glob(f"{container or '*'}/*.log")):
                out.append(f.read_text(errors="replace"))
        return "".join(out)

    def log(self, name: str) -> str:
        """The tail of a component's log (containerd, kubelet, kube-proxy, kube-scheduler...)."""
        path = self.logdir / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def pids(self) -> set[int]:
        """Every process of the node: the harness's own and all that they started (shims, containers)."""
        return footprint.cgroup_pids(self.name) | {p.pid for p in self.procs.values() if p.poll() is None}

    def check_alive(self) -> None:
        self.control_plane.check_alive()
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise ProcessError(f"{name} exited with {proc.returncode}:\n{self.log(name)}")

    def ctr(self, *args: str, timeout: float = 120.0) -> str:
        """``ctr`` against the node's containerd (namespace k8s.io); its output, or a ProcessError."""
        cmd = ["ctr", "--address", str(self.rundir / "containerd.sock"), "--namespace", "k8s.io", *args]
        proc = subprocess.run(self.nsenter(*cmd, mount=True), capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise ProcessError(f"ctr {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    def import_image(self, image: Image, timeout: float = 600.0) -> str:
        """Import an image built elsewhere (e.g. tests/k8s/buildah_images.py) into the node's
        containerd, for a pod to run with ``imagePullPolicy: Never``; its reference."""
        self.ctr("images", "import", str(image.archive), timeout=timeout)
        return image.ref

    def stop(self) -> None:
        """Stop every process (the control plane's too if this node started it), then remove the
        netns, the cgroups and the run directory (footprint.cleanup). ``logdir`` stays if given."""
        for name in reversed(list(self.procs)):
            _kill(self.procs[name], grace=0 if name.startswith("forward") else 5)
        self.procs.clear()
        try:
            if self._owns_control_plane:
                self.control_plane.stop()
        finally:
            footprint.cleanup(self.rundir)

    def _spawn(
        self, name: str, args: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        procs_file = footprint.cgroup_hierarchies()["pids"] / self.name / "harness" / "cgroup.procs"
        with open(self.logdir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                env=env, cwd=harness.ROOT, preexec_fn=_join_cgroup_and_die_with_parent(procs_file),
            )  # fmt: skip
        self.procs[name] = proc
        return proc


def start(
    control_plane: harness.ControlPlane | None = None, logdir: Path | None = None, timeout: float = 240.0
) -> Node:
    """Start the node (and a control plane advertising ``NODE_IP`` unless one is given; one that is
    given must have been started with ``advertise_address=NODE_IP``); return once the Node is Ready.
    ``logdir`` keeps the components' logs after ``stop()`` (default: in the run directory)."""
    missing = missing_tools()
    if missing:
        raise ProcessError(f"the node harness needs {', '.join(missing)}: run `make setup`")
    footprint.reap_stale()
    built = busybox_images()
    owns_cp = control_plane is None
    rundir = Path(tempfile.mkdtemp(prefix=footprint.PREFIX, dir=footprint.RUN_BASE))
    footprint.claim(rundir)
    logdir = logdir or rundir / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    node: Node | None = None
    try:
        footprint.make_cgroup(rundir.name)
        footprint.make_netns(rundir.name, f"{NODE_IP}/24", NODE_GATEWAY)
        if control_plane is None:
            workdir = logdir / "control-plane"
            control_plane = harness.start(
                workdir=workdir,
                timeout=timeout,
                advertise_address=NODE_IP,
                controllers=("*",),
                apiserver_args=_egress_args(rundir, workdir / "pki"),
            )
        node = Node(rundir.name, rundir, logdir, control_plane, built, _owns_control_plane=owns_cp)
        atexit.register(node.stop)
        _start_components(node, timeout)
    except BaseException:
        if node is not None:
            node.stop()
        else:
            if owns_cp and control_plane is not None:
                control_plane.stop()
            footprint.cleanup(rundir)
        raise
    return node


def _egress_args(rundir: Path, pki: Path) -> list[str]:
    """kube-apiserver's flags to reach kubelets, pods and Services through egress.py's proxy (the
    "cluster" egress selector, HTTP CONNECT on a unix socket), as the admin towards the kubelet."""
    config = rundir / "egress-selector.yaml"
    uds = {"uds": {"udsName": str(rundir / "egress.sock")}}
    selection = {"name": "cluster", "connection": {"proxyProtocol": "HTTPConnect", "transport": uds}}
    kind = {"apiVersion": "apiserver.k8s.io/v1beta1", "kind": "EgressSelectorConfiguration"}
    config.write_text(yaml.safe_dump({**kind, "egressSelections": [selection]}))
    return [
        f"--egress-selector-config-file={config}",
        f"--kubelet-client-certificate={pki / 'admin.crt'}",
        f"--kubelet-client-key={pki / 'admin.key'}",
        "--kubelet-preferred-address-types=InternalIP",
    ]


def _start_components(node: Node, timeout: float) -> None:
    cp, r = node.control_plane, node.rundir
    pki = cp.pki
    api_port = int(cp.server.rsplit(":", 1)[1])
    server = f"https://127.0.0.1:{api_port}"  # in the node netns: the forward below
    for d in ("containerd", "runc", "cni/net.d", "cni/ipam", "kubelet", "pod-logs", "tmp"):
        (r / d).mkdir(parents=True, exist_ok=True)
    client_cert(pki, "kubelet", f"/O=system:nodes/CN=system:node:{NODE_NAME}")
    client_cert(pki, "kube-scheduler", "/CN=system:kube-scheduler")
    client_cert(pki, "kube-proxy", "/CN=system:kube-proxy")

    # The API server's way into the node netns: node 0.0.0.0:P -> unix socket -> host 127.0.0.1:P.
    api_sock = r / "apiserver.sock"
    node._spawn("apiserver-forward-host", [
        "socat", f"UNIX-LISTEN:{api_sock},fork,mode=600,unlink-early", f"TCP:127.0.0.1:{api_port}",
    ])  # fmt: skip
    node._spawn("apiserver-forward-node", node.nsenter(
        "socat", f"TCP-LISTEN:{api_port},fork,reuseaddr", f"UNIX-CONNECT:{api_sock}",
    ))  # fmt: skip
    # ... and the other way: the API server's "cluster" egress (kubelet, pods, Services, webhooks).
    node._spawn("egress-proxy", node.nsenter(
        sys.executable, "-m", "tests.k8s.egress", str(r / "egress.sock"), str(pki), server,
    ))  # fmt: skip

    node._spawn("kube-scheduler", [
        str(harness.binary("kube-scheduler")),
        f"--kubeconfig={kubeconfig(r / 'kube-scheduler.kubeconfig', cp.server, pki, 'kube-scheduler')}",
        "--leader-elect=false", "--secure-port=0", "--v=1",
    ])  # fmt: skip

    # containerd: in the node netns, and in a mount namespace of its own (a slave of the host's)
    # where /run, /var/lib and /var/log are fresh tmpfs and the kernel settings the kubelet would
    # change read as it wants them (node_config.KUBELET_SYSCTLS); the kubelet and kube-proxy join.
    (r / "cni" / "net.d" / "10-bento-rollout.conflist").write_text(json.dumps(cni_config(r), indent=2))
    config = r / "containerd" / "config.toml"
    config.write_text(containerd_config(r, node.images["pause"].ref))
    setup = [
        f"mount -t tmpfs -o mode=0755,size=64m {node.name} {d}" for d in ("/run", "/var/lib", "/var/log")
    ]
    (r / "sysctl").mkdir(exist_ok=True)
    for key, value in KUBELET_SYSCTLS.items():
        shown = r / "sysctl" / key.replace("/", ".")
        shown.write_text(f"{value}\n")
        setup.append(f"mount --bind {shown} /proc/sys/{key}")
    node._spawn(
        "containerd",
        node.nsenter("unshare", "--mount", "--propagation", "slave", "--",
                     "sh", "-c", f'{" && ".join(setup)} && exec containerd --config "$1"', "sh", str(config)),
        env={**os.environ, "TMPDIR": str(r / "tmp")},
    )  # fmt: skip
    _wait_for(lambda: node.ctr("version"), "containerd", timeout, node.check_alive)
    for image in node.images.values():
        node.ctr("images", "import", str(image.archive))

    kubelet_yaml = r / "kubelet" / "config.yaml"
    kubelet_yaml.write_text(yaml.safe_dump(kubelet_config(r, pki, f"/{node.name}")))
    node._spawn("kubelet", node.nsenter(
        str(harness.binary("kubelet")), f"--config={kubelet_yaml}",
        f"--kubeconfig={kubeconfig(r / 'kubelet.kubeconfig', server, pki, 'kubelet')}",
        f"--root-dir={r / 'kubelet'}", f"--hostname-override={NODE_NAME}", f"--node-ip={NODE_IP}", "--v=1",
        mount=True,
    ))  # fmt: skip
    # cluster DNS (dns.py): CoreDNS on the node's address, where the pods' resolv.conf points
    if why := dns.missing():
        raise ProcessError(why, delay=0)
    client_cert(pki, "coredns", f"/CN={dns.USER}")
    with cp.http(timeout=10) as http:
        dns.apply_rbac(http)
    corefile = r / "Corefile"
    corefile.write_text(dns.corefile(NODE_IP, kubeconfig(r / "coredns.kubeconfig", server, pki, "coredns")))
    node._spawn("coredns", node.nsenter(str(dns.COREDNS), "-conf", str(corefile)))
    proxy_yaml = r / "kube-proxy.yaml"
    proxy_kubeconfig = kubeconfig(r / "kube-proxy.kubeconfig", server, pki, "kube-proxy")
    proxy_yaml.write_text(yaml.safe_dump(kube_proxy_config(proxy_kubeconfig)))
    node._spawn("kube-proxy", node.nsenter(
        str(harness.binary("kube-proxy")), f"--config={proxy_yaml}", "--v=1", mount=True,
    ))  # fmt: skip

    with cp.http(timeout=10) as http:

        def ready() -> bool:
            resp = http.get(f"/api/v1/nodes/{NODE_NAME}")
            if not resp.is_success:
                return False
            conditions = {c["type"]: c["status"] for c in resp.json().get("status", {}).get("conditions", [])}
            return conditions.get("Ready") == "True"

        try:
            _wait_for(ready, f"node {NODE_NAME} Ready", timeout, node.check_alive)
            _wait_for(lambda: node.http_get(f"http://{NODE_IP}:{dns.READY_PORT}/ready"), "CoreDNS",
                      timeout, node.check_alive)  # fmt: skip
        except ProcessError as exc:
            logs = "\n".join(
                f"--- {n}.log ---\n{node.log(n)}" for n in ("containerd", "kubelet", "kube-proxy", "coredns")
            )
            raise ProcessError(f"{exc}\n{logs}") from None


def main() -> None:
    # Ctrl-C, or SIGTERM/SIGINT from a parent that started this in the background: stop cleanly.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    node = start()
    print(f"node {NODE_NAME} Ready in netns {node.netns}\nexport KUBECONFIG={node.control_plane.kubeconfig}")
    print(f"a shell inside the node: ip netns exec {node.netns} sh   (run dir {node.rundir})")
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        node.stop()


if __name__ == "__main__":
    sys.exit(main())
