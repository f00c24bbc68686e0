"""``make demo`` on a fresh machine, measured for real: a debootstrap'd Debian 12 root as the machine.

Run it on its own, as root, on a Debian host with ``debootstrap`` (not part of ``make bench``)::

    sudo .venv/bin/python -m bench.fresh_demo            # about 10 min on a 2-core machine
    sudo .venv/bin/python -m bench.fresh_demo --check    # the fresh root and its network only, ~20 s

The first run on a machine also debootstraps the root once (about 3 min; cached as a tar after).

What it does, in a new directory ``.cache/fresh-machine/<run>/``:

1. the fresh machine: ``debootstrap --variant=minbase`` of bookworm with what such a machine has
   before the session (python3, python3-venv, python3-pip, make, git, curl, ca-certificates,
   gcc), unpacked from a tar of a finished root cached in ``.cache/fresh-machine/`` (the first run
   debootstraps it: a few minutes more, not part of the figures); Debian's usual apt sources (main,
   updates, security), an ``/etc/hosts``, the host's ``/etc/resolv.conf`` and the CA certificates
   the host adds to Debian's (this host reaches the network through a TLS-intercepting proxy: the
   same network as the host, as resolv.conf; without them pip fails certificate verification);
2. ``/proc``, ``/sys``, ``/dev``, ``/dev/pts`` bind-mounted, a tmpfs on ``/dev/shm``;
3. ``git clone`` of this repository's HEAD (committed work only) into ``/root/bento-rollout``;
4. ``make demo`` in ``chroot`` with a clean environment (``env -i PATH=... HOME=/root``, plus
   ``PYTHONUNBUFFERED=1`` so that every line is timestamped when printed), bounded at 45 min; every
   line goes to ``<run>/make-demo.log`` with the seconds since the start;
5. always: the mounts undone (checked in /proc/mounts), the root removed (unless ``--keep``; the log
   stays), and ``bench/results/fresh_demo.json`` written: total time, time to the first rollout
   (the demo's ``== [1/5] ...`` line), each set-up step's time (``.ci/step``'s ``<== KEY: ...: done in
   N s``), training, each scenario, the machine's load (/proc/loadavg) at the start, the end and on
   average, and what "fresh" included and excluded.

Nothing on the host outside ``.cache/fresh-machine/`` is changed: apt, pip and the demo's servers
run inside the root (the servers bind 127.0.0.1 on free ports; the root shares the host's network).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "fresh-machine"
RESULT = REPO / "bench" / "results" / "fresh_demo.json"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
VARIANT = "minbase"
INCLUDE = ["python3", "python3-venv", "python3-pip", "make", "git", "curl", "ca-certificates", "gcc"]
CLONE = "/root/bento-rollout"
PATH_IN = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TIMEOUT_S = 45 * 60
TARGET_FIRST_ROLLOUT_S = 300
LOAD_EVERY_S = 30.0
SOURCES = f"""Types: deb
URIs: {MIRROR}
Suites: {SUITE} {SUITE}-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: {SUITE}-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""
HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
FRESH = {
    "included": [
        f"Debian 12 ({SUITE}) debootstrap --variant={VARIANT} with {', '.join(INCLUDE)}",
        "Debian's apt sources (main, updates, security) with empty package lists: apt-get update runs in the measurement",
        "a fresh git clone of HEAD: no .venv, no .cache (no Debian-package stamp, no step times), no trained models",
        "an empty HOME: no pip cache, no pip configuration, no wheelhouse (the host's PIP_FIND_LINKS is not passed)",
        "a clean environment: env -i PATH=... HOME=/root (+ PYTHONUNBUFFERED=1 for line timestamps)",
    ],
    "excluded": [
        "Go (the fresh machine of this kind has it; make demo builds nothing with Go)",
        "a booted system: no systemd, no services (the demo starts its own servers)",
        "its own network: the root shares the host's network, DNS (resolv.conf) and TLS egress CA",
        "its own CPUs: the host's 2 cores, shared with whatever else runs (see machine.loadavg_*)",
    ],
}
STEP_DONE = re.compile(
    r"^<== (?P<key>[^:]+): (?P<what>.*): (?:done in (?P<s>\d+) s|FAILED after (?P<f>\d+) s)"
)
STEP_START = re.compile(r"^==> (?P<key>[^:]+): ")
SCENARIO_START = re.compile(r"^== \[(?P<i>\d+)/(?P<n>\d+)\] (?P<name>\S+): ")
SCENARIO_END = re.compile(r"^   (?P<name>\S+): (?P<outcome>\S+); demo (?P<s>\d+) s so far$")


def log(msg: str) -> None:
    print(f"[fresh_demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=True, text=True, **kw)


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def mounts_under(path: Path) -> list[str]:
    """Mount points at or under ``path`` (/proc/mounts escapes a space as \\040)."""
    prefix = str(path.resolve())
    found = []
    for line in Path("/proc/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return found


def processes_in(root: Path) -> list[int]:
    """Pids whose root directory is ``root``: what the run started in the chroot."""
    target = str(root.resolve())
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "root") == target:
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def remove_tree(path: Path) -> None:
    """``rm -rf`` only once nothing is mounted under ``path``, and never across a file system."""
    left = mounts_under(path)
    if left:
        raise RuntimeError(f"not removing {path}: still mounted: {left}")
    run(["rm", "-rf", "--one-file-system", str(path)])


class Mounts:
    """The chroot's mounts, undone in reverse order whatever happens; each one private, so that
    nothing mounted under it reaches the host's own /dev."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.done: list[Path] = []

    def bind(self, src: str, rel: str) -> None:
        dst = self.root / rel
        dst.mkdir(parents=True, exist_ok=True)
        run(["mount", "--bind", src, str(dst)])
        self.done.append(dst)
        run(["mount", "--make-private", str(dst)])

    def tmpfs(self, rel: str) -> None:
        dst = self.root / rel
        dst.mkdir(parents=True, exist_ok=True)
        run(["mount", "-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "tmpfs", str(dst)])
        self.done.append(dst)

    def __enter__(self) -> Mounts:
        try:
            self.bind("/proc", "proc")
            self.bind("/sys", "sys")
            self.bind("/dev", "dev")
            self.bind("/dev/pts", "dev/pts")
            self.tmpfs("dev/shm")
        except BaseException:
            self.undo()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.undo()

    def undo(self) -> None:
        for dst in reversed(self.done):
            for attempt in range(5):
                if subprocess.run(["umount", str(dst)], check=False).returncode == 0:
                    break
                log(f"umount {dst} failed (attempt {attempt + 1}); retrying")
                time.sleep(3)
            else:
                log(f"umount {dst} still busy: lazy unmount")
                subprocess.run(["umount", "-l", str(dst)], check=False)
        self.done.clear()
        left = mounts_under(self.root)
        if left:
            raise RuntimeError(f"still mounted under {self.root}: {left}")


def rootfs_tar() -> tuple[Path, float | None]:
    """The cached tar of a finished debootstrap root; built first (debootstrap) when absent."""
    key = hashlib.sha256(f"{SUITE} {VARIANT} {MIRROR} {' '.join(INCLUDE)}".encode()).hexdigest()[:12]
    tar = CACHE / f"rootfs-{SUITE}-{VARIANT}-{key}.tar"
    if tar.exists():
        return tar, None
    build = CACHE / f"build-{os.getpid()}"
    root = build / "root"
    started = time.monotonic()
    log(f"debootstrap {SUITE} ({VARIANT}, {', '.join(INCLUDE)}) into {root} (once; cached as {tar.name})")
    try:
        root.mkdir(parents=True)
        run(
            [
                "debootstrap",
                f"--variant={VARIANT}",
                f"--include={','.join(INCLUDE)}",
                SUITE,
                str(root),
                MIRROR,
            ],
            stdout=subprocess.DEVNULL,
        )
        part = tar.with_suffix(".tar.part")
        run(["tar", "-C", str(root), "--numeric-owner", "--xattrs", "-cpf", str(part), "."])
        part.rename(tar)
    finally:
        # debootstrap mounts /proc and /sys in its target; a failed one may leave them
        for point in reversed(mounts_under(build)):
            subprocess.run(["umount", "-l", point], check=False)
        remove_tree(build)
    return tar, round(time.monotonic() - started, 1)


def pem_blocks(bundle: Path) -> list[str]:
    text = bundle.read_text(encoding="ascii", errors="replace") if bundle.exists() else ""
    return re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", text, re.S)


def host_cas(root: Path) -> list[str]:
    """The CA certificates in the host's bundle that a fresh Debian's bundle lacks (this host's TLS
    egress proxy and local CAs): without them nothing on HTTPS (PyPI) verifies from this network."""
    fresh = set(pem_blocks(root / "etc/ssl/certs/ca-certificates.crt"))
    return [c for c in pem_blocks(Path("/etc/ssl/certs/ca-certificates.crt")) if c not in fresh]


def prepare(root: Path) -> list[str]:
    """Turn the unpacked root into the machine: apt sources, hosts, resolv.conf, the host's CAs."""
    notes = []
    (root / "etc/apt/sources.list").write_text("")
    (root / "etc/apt/sources.list.d").mkdir(parents=True, exist_ok=True)
    (root / "etc/apt/sources.list.d/debian.sources").write_text(SOURCES)
    if not (root / "etc/hosts").exists():
        (root / "etc/hosts").write_text(HOSTS)
        notes.append("/etc/hosts written (localhost), as the installer does")
    resolv = root / "etc/resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    resolv.write_text(Path("/etc/resolv.conf").read_text())
    cas = host_cas(root)
    if cas:
        dst = root / "usr/local/share/ca-certificates/host"
        dst.mkdir(parents=True, exist_ok=True)
        for i, ca in enumerate(cas):
            (dst / f"host-{i}.crt").write_text(ca + "\n", encoding="ascii")
        notes.append(
            f"{len(cas)} CA certificates of the host's bundle that Debian's lacks (its TLS egress proxy)"
        )
    return notes


def chroot_argv(root: Path, script: str) -> list[str]:
    env = [f"PATH={PATH_IN}", "HOME=/root", "PYTHONUNBUFFERED=1"]
    return ["env", "-i", *env, "chroot", str(root), "/bin/bash", "-c", script]


def preflight(root: Path) -> None:
    """The root's network, as apt and pip will use it (no cache is written)."""
    run(chroot_argv(root, "update-ca-certificates >/dev/null 2>&1"))
    check = (
        "import urllib.request as u\n"
        f"u.urlopen('{MIRROR}/dists/{SUITE}/Release', timeout=30).read(64)\n"
        "u.urlopen('https://pypi.org/simple/pip/', timeout=30).read(64)\n"
    )
    run(chroot_argv(root, f'python3 -c "{check}"'))
    version = run(chroot_argv(root, "python3 --version"), capture_output=True).stdout.strip()
    log(f"fresh root ready: {version}; deb.debian.org and pypi.org reachable")


class LoadSampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(LOAD_EVERY_S):
            self.samples.append(loadavg()[0])


def stream(pipe: TextIO, out: TextIO, lines: list[tuple[float, str]], t0: float) -> None:
    for raw in pipe:
        line = raw.rstrip("\n")
        t = time.monotonic() - t0
        lines.append((t, line))
        stamped = f"+{t:7.1f}s {time.strftime('%H:%M:%S')} {line}"
        out.write(stamped + "\n")
        out.flush()
        print(stamped, flush=True)


def end_group(proc: subprocess.Popen[str]) -> None:
    """The run's own process group: SIGINT first (the demo stops its stack), then SIGKILL."""
    for sig, wait in ((signal.SIGINT, 90), (signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            return
        log(f"timeout: {sig.name} to the process group {proc.pid}")
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue


def make_demo(root: Path, logfile: Path, timeout: float) -> dict[str, Any]:
    lines: list[tuple[float, str]] = []
    t0 = time.monotonic()
    with logfile.open("w", encoding="utf-8") as out:
        proc = subprocess.Popen(
            chroot_argv(root, f"cd {CLONE} && exec make demo"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        assert proc.stdout is not None
        reader = threading.Thread(target=stream, args=(proc.stdout, out, lines, t0), daemon=True)
        reader.start()
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            end_group(proc)
        except BaseException:
            end_group(proc)
            raise
        total = time.monotonic() - t0
        reader.join(timeout=15)  # a server that kept the pipe open must not hold the run
    return {"exit_code": proc.returncode, "timed_out": timed_out, "seconds": total, "lines": lines}


def leftovers(root: Path) -> list[dict[str, Any]]:
    """Processes still running in the root after make exited. Their groups (each started by this
    run's demo, start_new_session) are ended, only if every member of a group is in the root."""
    found = []
    for _ in range(10):
        pids = processes_in(root)
        if not pids:
            return found
        time.sleep(3)
    ours = set(processes_in(root))
    for pid in sorted(ours):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            found.append({"pid": pid, "pgid": os.getpgid(pid), "cmdline": cmd.strip()})
        except OSError:
            continue
    for pgid in sorted({f["pgid"] for f in found}):
        members = group(pgid)
        if members <= ours:
            log(f"left running in the root: process group {pgid}; SIGTERM")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
    time.sleep(5)
    for pgid in sorted({f["pgid"] for f in found}):
        members = group(pgid)
        if members and members <= set(processes_in(root)):
            log(f"process group {pgid} still in the root: SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
    return found


def group(pgid: int) -> set[int]:
    """The pids of process group ``pgid``."""
    members = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.getpgid(int(entry.name)) == pgid:
                    members.add(int(entry.name))
    return members


def figures(lines: list[tuple[float, str]]) -> dict[str, Any]:
    """What the log says: each .ci/step step, the demo's milestones, each scenario."""
    steps: list[dict[str, Any]] = []
    started: dict[str, float] = {}
    marks: dict[str, float] = {}
    scenarios: list[dict[str, Any]] = []
    trained: list[str] = []
    for t, line in lines:
        if m := STEP_START.match(line):
            started[m["key"]] = t
        elif m := STEP_DONE.match(line):
            ok = m["s"] is not None
            steps.append(
                {
                    "key": m["key"],
                    "what": m["what"],
                    "seconds": int(m["s"] if ok else m["f"]),
                    "ok": ok,
                    "started_at_s": round(started.get(m["key"], t), 1),
                    "ended_at_s": round(t, 1),
                }
            )
        elif line.startswith("report: "):
            marks.setdefault("demo_started", t)
        elif line.startswith("models: training"):
            marks.setdefault("training_started", t)
        elif re.match(r"^model \S+: trained", line):
            trained.append(line.split()[1].rstrip(":"))
        elif line.startswith("stack: starting"):
            marks.setdefault("stack_starting", t)
        elif line.startswith("stack up:"):
            marks.setdefault("stack_up", t)
        elif m := SCENARIO_START.match(line):
            marks.setdefault("first_rollout", t)
            scenarios.append({"name": m["name"], "started_at_s": round(t, 1)})
        elif m := SCENARIO_END.match(line):
            for sc in scenarios:
                if sc["name"] == m["name"] and "ended_at_s" not in sc:
                    sc.update(
                        ended_at_s=round(t, 1), seconds=round(t - sc["started_at_s"], 1), outcome=m["outcome"]
                    )
            marks["last_rollout_done"] = t
        elif line.startswith("demo took "):
            marks["demo_done"] = t
    by_key = {s["key"]: s for s in steps}
    apt_done = by_key.get("apt", {}).get("ended_at_s")
    pip_start = by_key.get("pip", {}).get("started_at_s")

    def gap(a: float | None, b: float | None) -> float | None:
        return round(b - a, 1) if a is not None and b is not None else None

    return {
        "first_rollout_s": round(marks["first_rollout"], 1) if "first_rollout" in marks else None,
        "all_rollouts_done_s": round(marks["last_rollout_done"], 1) if "last_rollout_done" in marks else None,
        "apt_s": by_key.get("apt", {}).get("seconds"),
        "venv_and_pip_upgrade_s": gap(apt_done, pip_start),
        "pip_s": by_key.get("pip", {}).get("seconds"),
        "training_s": gap(marks.get("training_started"), marks.get("stack_starting")),
        "stack_up_s": gap(marks.get("stack_starting"), marks.get("stack_up")),
        "rollouts_s": gap(marks.get("first_rollout"), marks.get("last_rollout_done")),
        "models_trained": trained,
        "steps": steps,
        "milestones_s": {k: round(v, 1) for k, v in marks.items()},
        "scenarios": scenarios,
    }


def git(*args: str) -> str:
    return run(["git", "-C", str(REPO), *args], capture_output=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument(
        "--keep", action="store_true", help="keep the fresh root (.cache/fresh-machine/<run>/root)"
    )
    ap.add_argument("--check", action="store_true", help="build the root and check its network; no make demo")
    ap.add_argument("--timeout", type=float, default=TIMEOUT_S, help="make demo's bound, seconds (45 min)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("fresh_demo: run as root (debootstrap, mount, chroot)")

    commit = git("rev-parse", "HEAD")
    run_dir = CACHE / time.strftime("%Y%m%d-%H%M%S")
    root = run_dir / "root"
    logfile = run_dir / "make-demo.log"
    doc: dict[str, Any] = {
        "what": "make demo in a fresh clone on a fresh Debian 12 machine (a debootstrap'd root, chroot)",
        "commit": commit,
        "commit_subject": git("log", "-1", "--format=%s", "HEAD")[:200],
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "mem_total_kb": int(Path("/proc/meminfo").read_text().split()[1]),
            "loadavg_start": loadavg(),
        },
        "fresh": FRESH,
        "target": {"first_rollout_s_at_most": TARGET_FIRST_ROLLOUT_S},
    }
    sampler = LoadSampler()
    result: dict[str, Any] = {}
    try:
        tar, debootstrap_s = rootfs_tar()
        doc["debootstrap_s"] = debootstrap_s  # None: the cached root was used
        root.mkdir(parents=True)
        log(f"unpacking {tar.name} into {root}")
        run(["tar", "-C", str(root), "--numeric-owner", "--xattrs", "-xpf", str(tar)])
        doc["fresh"] = {**FRESH, "adjusted": prepare(root)}
        run(["git", "clone", "-q", "--no-hardlinks", str(REPO), str(root / CLONE.lstrip("/"))])
        with Mounts(root):
            preflight(root)
            if not args.check:
                log(f"make demo in {CLONE} (chroot {root}); log {logfile}; at most {args.timeout:.0f} s")
                sampler.start()
                result = make_demo(root, logfile, args.timeout)
                sampler.stop.set()
                doc["left_running"] = leftovers(root)
                reports = sorted((root / CLONE.lstrip("/") / "reports").glob("*/summary.json"))
                if reports:
                    summary = json.loads(reports[-1].read_text())
                    doc["demo_summary"] = {
                        "seconds": summary.get("seconds"),
                        "all_as_expected": summary.get("all_as_expected"),
                        "failed_requests": summary.get("failed_requests"),
                        "scenarios": [
                            {k: s.get(k) for k in ("name", "outcome", "expected", "as_expected",
                                                   "seconds_to_decision", "requests_total", "failed_requests")}
                            for s in summary.get("scenarios", [])
                        ],
                    }  # fmt: skip
    finally:
        sampler.stop.set()
        left = mounts_under(run_dir)
        if left:
            log(f"still mounted after the run: {left}")
        if root.exists() and not args.keep and not left:
            log(f"removing {root}")
            remove_tree(root)
        doc["left_mounted"] = mounts_under(CACHE)
        doc["root_removed"] = not root.exists()
    if args.check:
        with contextlib.suppress(OSError):
            run_dir.rmdir()  # nothing in it: no log without make demo
        log(
            "check done: nothing mounted under .cache/fresh-machine"
            if not doc["left_mounted"]
            else "MOUNTS LEFT"
        )
        return 0 if not doc["left_mounted"] else 1
    lines = result.pop("lines", [])
    fig = figures(lines)
    doc["machine"]["loadavg_end"] = loadavg()
    doc["machine"]["loadavg_1min_samples_every_30s"] = sampler.samples
    if sampler.samples:
        doc["machine"]["loadavg_1min_mean"] = round(sum(sampler.samples) / len(sampler.samples), 2)
    doc["make_demo"] = {
        "exit_code": result.get("exit_code"),
        "timed_out": result.get("timed_out"),
        "total_s": round(result.get("seconds", 0.0), 1),
        **fig,
    }
    first = fig["first_rollout_s"]
    doc["target"]["met"] = first is not None and first <= TARGET_FIRST_ROLLOUT_S
    doc["log"] = str(logfile.relative_to(REPO))
    doc["log_tail"] = [line for _, line in lines[-40:]] if result.get("exit_code") else []
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    log(
        f"make demo: exit {result.get('exit_code')}, total {doc['make_demo']['total_s']} s, first rollout at "
        f"{first} s (apt {fig['apt_s']} s, pip {fig['pip_s']} s, training {fig['training_s']} s); {RESULT}"
    )
    return 0 if result.get("exit_code") == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
