"""``.ci/step``: what a person waiting on a long set-up step sees (what runs, how long so far, about
how long is left) and that the step's own exit status and output pass through."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _step(tmp: Path, name: str, *cmd: str, tick: str = "1") -> subprocess.CompletedProcess[str]:
    """Runs a copy of .ci/step from ``tmp/.ci`` so its times land in ``tmp/.cache``, not the repo's."""
    ci = tmp / ".ci"
    if not ci.exists():
        ci.mkdir()
        shutil.copy(ROOT / ".ci" / "step", ci / "step")
        (ci / "step-times").write_text("# KEY SECONDS WHERE\nslow-thing 9 measured somewhere\n")
    env = {**os.environ, "STEP_TICK": tick}
    return subprocess.run([str(ci / "step"), name, *cmd], capture_output=True, text=True, env=env, timeout=30)


def test_a_first_run_shows_the_committed_estimate_and_counts_down(tmp_path: Path) -> None:
    r = _step(tmp_path, "slow-thing: building it", "sleep", "2.5")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines[0] == "==> slow-thing: building it (took 9 s on a first run of a 2-core machine)"
    assert "    ... slow-thing: building it: 1 s so far, about 8 s left" in lines
    took = lines[-1].removeprefix("<== slow-thing: building it: done in ").removesuffix(" s")
    assert took in {"2", "3"}, lines[-1]  # bash's SECONDS counts whole seconds
    # the next run estimates from this machine's own last duration
    r = _step(tmp_path, "slow-thing: building it", "true")
    assert r.stderr.splitlines()[0] == f"==> slow-thing: building it (took {took} s last time here)"
    assert (tmp_path / ".cache" / "step-times" / "slow-thing").read_text().strip() == "0"


def test_a_step_with_no_estimate_says_how_long_it_has_run_and_one_past_its_estimate_says_so(
    tmp_path: Path,
) -> None:
    r = _step(tmp_path, "new: something never timed", "sleep", "1.5")
    assert r.stderr.splitlines()[:2] == [
        "==> new: something never timed",
        "    ... new: something never timed: 1 s so far",
    ]
    (tmp_path / ".cache" / "step-times" / "new").write_text("1\n")
    r = _step(tmp_path, "new: something never timed", "sleep", "2.5")
    assert "longer than the 1 s it took before" in r.stderr


def test_a_failing_step_keeps_its_exit_status_and_output_and_records_no_time(tmp_path: Path) -> None:
    r = _step(tmp_path, "broken: a step that fails", "sh", "-c", "echo out; echo err >&2; exit 7", tick="0")
    assert r.returncode == 7 and r.stdout == "out\n" and "err" in r.stderr
    assert r.stderr.splitlines()[-1] == "<== broken: a step that fails: FAILED after 0 s (exit 7)"
    assert not (tmp_path / ".cache" / "step-times" / "broken").exists()


def test_a_name_without_a_command_is_a_usage_error(tmp_path: Path) -> None:
    r = _step(tmp_path, "only-a-name")
    assert r.returncode == 2 and "usage" in r.stderr
