"""What a single-node cluster (tests/k8s/node.py) puts on the host, and how it is taken away.

A node owns three things outside its run directory, all named after it (``brnode-<id>``): a
network namespace, a cgroup in every hierarchy (the kubelet's ``cgroupRoot``; the node's own
processes are in ``<name>/harness`` of the ``pids`` hierarchy, the pods below ``<name>/kubepods``),
and the run directory ``/tmp/brnode-<id>``. ``cleanup()`` removes them in order: every process
in the cgroup (SIGKILL, by pid), the netns (its bridge, veths and iptables rules go with it), the
cgroups, the directory (never while a mount is left below it). ``reap_stale()`` does the same for
a node whose owning test process died before its teardown (``owner.json`` in the run directory).
Called by node.py; the e2e test of the node reads the same facts to check that nothing is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from rollout.errors import ProcessError
from rollout.local.processes import is_running, proc_start_time

PREFIX = "brnode-"  # of the run directory, the netns and the cgroup
RUN_BASE = Path("/tmp")  # short paths: a unix socket path is at most 107 bytes
_MOUNT_OPTIONS = {"rw", "ro", "relatime", "noatime", "nosuid", "nodev", "noexec", "clone_children"}


# --- cgroups ---------------------------------------------------------------------------------


def cgroup_hierarchies() -> dict[str, Path]:
    """Mounted cgroup hierarchies by name ("cpu", "memory", "pids", "name=systemd", "unified"...)."""
    found: dict[str, Path] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        fstype, _source, opts = (post.split() + ["", "", ""])[:3]
        mountpoint = Path(pre.split()[4])
        if fstype == "cgroup2":
            found["unified"] = mountpoint
        elif fstype == "cgroup":
            for opt in set(opts.split(",")) - _MOUNT_OPTIONS:
                found[opt] = mountpoint
    return found


def cgroup_dirs(name: str) -> list[Path]:
    """``<hierarchy>/<name>`` wherever it exists (v1 and v2, one entry per mount)."""
    return sorted({m / name for m in cgroup_hierarchies().values() if (m / name).is_dir()})


def cgroup_pids(name: str) -> set[int]:
    """Every process in cgroup ``name`` or below it, in any hierarchy."""
    pids: set[int] = set()
    for top in cgroup_dirs(name):
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in procs.read_text().split())
    return pids


def make_cgroup(name: str) -> Path:
    """``name`` in every v1 hierarchy (the kubelet's cgroupRoot must exist in all of them; cpuset's
    cpus/mems copied from the root) and ``name/harness`` in ``pids``; returns that one's cgroup.procs."""
    hierarchies = cgroup_hierarchies()
    if "memory" not in hierarchies or "pids" not in hierarchies:
        raise ProcessError(
            f"the node harness needs cgroup v1 (or hybrid) hierarchies, found {sorted(hierarchies)}"
        )
    for key, mount in hierarchies.items():
        if key == "unified":
            continue
        path = mount / name
        path.mkdir(exist_ok=True)
        if key == "cpuset":
            for f in ("cpuset.cpus", "cpuset.mems"):
                (path / f).write_text((mount / f).read_text())
    harness = hierarchies["pids"] / name / "harness"
    harness.mkdir(exist_ok=True)
    return harness / "cgroup.procs"


def remove_cgroup(name: str, timeout: float = 20.0) -> None:
    """Kill every process left in cgroup ``name`` (SIGKILL, by pid) and remove its directories."""
    deadline = time.monotonic() + timeout
    while (pids := cgroup_pids(name)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    for top in cgroup_dirs(name):
        for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()
    left = cgroup_dirs(name)
    if left:
        raise ProcessError(f"cgroups not removed: {left} (processes: {sorted(cgroup_pids(name))})")


# --- network namespaces ----------------------------------------------------------------------


def ip(*args: str, netns: str | None = None) -> None:
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ProcessError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")


def netns_names() -> list[str]:
    proc = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def make_netns(name: str, address: str, gateway: str) -> None:
    """The node's netns: ``lo`` and ``eth0`` (a veth whose peer stays in the same netns, as the
    kernel here has no dummy module) with ``address`` and a default route via ``gateway`` (so
    that locally sent packets to a ClusterIP have a route before kube-proxy's DNAT); IPv4 forwarding
    and bridge-nf-call-iptables on (a pod -> Service -> pod on the same bridge passes iptables)."""
    ip("netns", "add", name)
    ip("link", "set", "lo", "up", netns=name)
    ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer", netns=name)
    ip("addr", "add", address, "dev", "eth0", netns=name)
    ip("link", "set", "eth0-peer", "up", netns=name)
    ip("link", "set", "eth0", "up", netns=name)
    ip("route", "add", "default", "via", gateway, "dev", "eth0", netns=name)
    script = "echo 1 > /proc/sys/net/ipv4/ip_forward && echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables"
    proc = subprocess.run(
        ["nsenter", f"--net=/run/netns/{name}", "sh", "-c", script], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise ProcessError(f"sysctls in netns {name} failed: {proc.stderr.strip()}")


# --- the run directory -----------------------------------------------------------------------


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below ``path`` in this (the host's) mount namespace, outermost first."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mp = Path(line.split()[4].encode().decode("unicode_escape"))  # \040 and friends
        if mp == path or path in mp.parents:
            found.append(mp)
    return found


def claim(rundir: Path) -> None:
    """Record this process as the owner of the node in ``rundir`` (for ``reap_stale``)."""
    pid = os.getpid()
    (rundir / "owner.json").write_text(json.dumps({"pid": pid, "start_time": proc_start_time(pid)}))


def cleanup(rundir: Path) -> None:
    """Remove everything of the node whose run directory is ``rundir`` (see the module docstring)."""
    name = rundir.name
    remove_cgroup(name)
    if name in netns_names():
        ip("netns", "delete", name)
    for m in reversed(mounts_under(rundir)):
        subprocess.run(["umount", "-l", str(m)], capture_output=True)
    if mounts_under(rundir):
        raise ProcessError(f"mounts left under {rundir}: {mounts_under(rundir)}; not removing it")
    shutil.rmtree(rundir, ignore_errors=True)


def reap_stale(base: Path = RUN_BASE) -> list[Path]:
    """Clean up the nodes whose owning process is gone (a test run killed before its teardown)."""
    cleaned = []
    for owner in base.glob(f"{PREFIX}*/owner.json"):
        try:
            info = json.loads(owner.read_text())
            pid, started = int(info["pid"]), int(info["start_time"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not is_running(pid, started):  # gone, or its pid reused by a later process
            cleanup(owner.parent)
            cleaned.append(owner.parent)
    return cleaned
