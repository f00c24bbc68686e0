""".ci/install-system.sh leaves the host as it was: the policy-rc.d that keeps postinst scripts
from starting services exists only while apt-get runs (and only if there was none; one a killed
run left is removed by the next), and no process is ended by name. Runs the real script with stand-ins for dpkg-query, apt-get and sudo."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / ".ci" / "install-system.sh"


def _run(
    tmp_path: Path, policy: Path, apt_status: int = 0, installed: bool = False
) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    seen = tmp_path / "seen"
    stubs = {
        "dpkg-query": "echo 'install ok installed'\n" if installed else "exit 1\n",  # all there, or none
        "sudo": 'exec "$@"\n',
        # What invoke-rc.d would get while the packages install: the policy's answer.
        "apt-get": (
            f'if [ "$1" = install ]; then\n'
            f'  if [ -x "{policy}" ]; then "{policy}"; echo "policy=$?" >> "{seen}"; else echo policy=none >> "{seen}"; fi\n'
            f"  exit {apt_status}\nfi\n"
        ),
    }
    for name, body in stubs.items():
        path = bin_dir / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "POLICY_RC_D": str(policy)}
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)


def test_policy_rc_d_exists_only_during_the_install(tmp_path: Path) -> None:
    policy = tmp_path / "policy-rc.d"
    proc = _run(tmp_path, policy)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "seen").read_text() == "policy=101\n"  # services forbidden while installing
    assert not policy.exists()  # and the host has no policy-rc.d afterwards


def test_policy_rc_d_is_removed_when_the_install_fails(tmp_path: Path) -> None:
    policy = tmp_path / "policy-rc.d"
    proc = _run(tmp_path, policy, apt_status=100)
    assert proc.returncode == 100
    assert not policy.exists()


def test_an_existing_policy_rc_d_is_left_untouched(tmp_path: Path) -> None:
    policy = tmp_path / "policy-rc.d"
    policy.write_text("#!/bin/sh\n# the admin's own\nexit 0\n")
    policy.chmod(0o755)
    proc = _run(tmp_path, policy)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "seen").read_text() == "policy=0\n"
    assert policy.read_text() == "#!/bin/sh\n# the admin's own\nexit 0\n"


@pytest.mark.parametrize("installed", [False, True], ids=["installing", "nothing-to-install"])
def test_a_policy_rc_d_left_by_a_killed_run_is_removed(tmp_path: Path, installed: bool) -> None:
    """SIGKILL mid-install runs no EXIT trap: the next run knows the file as its own and removes it."""
    policy = tmp_path / "policy-rc.d"
    first = _run(tmp_path, policy)
    assert first.returncode == 0 and not policy.exists()
    mark = next(line for line in SCRIPT.read_text().splitlines() if line.startswith('MARK="'))
    policy.write_text(f"#!/bin/sh\n{mark[6:-1]}\nexit 101\n")  # as a killed run leaves it
    policy.chmod(0o755)
    (tmp_path / "seen").unlink()
    proc = _run(tmp_path, policy, installed=installed)
    assert proc.returncode == 0, proc.stderr
    assert not policy.exists()
    assert (tmp_path / "seen").exists() != installed  # apt-get ran only when something was missing


def test_no_process_is_ended_by_name() -> None:
    code = "\n".join(line for line in SCRIPT.read_text().splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"\b(pkill|killall)\b", code)
