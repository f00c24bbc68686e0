"""Spec files are read strictly: a key written twice is refused, naming the key and both lines.

PyYAML keeps the last value of a duplicated key silently (``service:`` twice: the second wins
unseen); Kubernetes' strict decoding refuses such a manifest, and so does ``rollout run``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rollout.errors import SpecError
from rollout.spec import load_rollout

GOOD = Path(__file__).resolve().parents[2] / "rollout" / "demo" / "specs" / "canary-good.yaml"


def with_line(after: str, line: str, tmp_path: Path) -> Path:
    text = GOOD.read_text(encoding="utf-8").replace(after, after + line, 1)
    path = tmp_path / "spec.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_duplicate_key_is_refused_naming_it_and_its_lines(tmp_path: Path) -> None:
    path = with_line("  service: iris\n", "  service: other\n", tmp_path)
    with pytest.raises(SpecError) as err:
        load_rollout(path)
    assert "duplicate key 'service' on line 7 (first on line 6)" in str(err.value)


def test_a_duplicate_key_deep_inside_a_flow_mapping_is_refused(tmp_path: Path) -> None:
    path = with_line("        - setWeight: 10\n", "        - {setWeight: 20, setWeight: 30}\n", tmp_path)
    with pytest.raises(SpecError, match="duplicate key 'setWeight'"):
        load_rollout(path)


def test_rollout_run_exits_2_with_one_line(tmp_path: Path) -> None:
    path = with_line("  service: iris\n", "  service: other\n", tmp_path)
    rollout = str(Path(sys.executable).with_name("rollout"))
    done = subprocess.run([rollout, "run", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "duplicate key 'service'" in done.stderr


def test_the_same_key_in_two_mappings_is_fine() -> None:
    assert load_rollout(GOOD).spec.service == "iris"  # `name:` appears in metadata and in metrics


def test_a_key_a_merge_brought_in_may_be_overridden(tmp_path: Path) -> None:
    """YAML merge keys exist to be overridden: ``<<: *defaults`` then ``failureLimit: 3``."""
    text = GOOD.read_text(encoding="utf-8").replace(
        "      - name: error-rate\n",
        "      - &errors {name: error-rate, template: error-rate, threshold: {max: 0.01}}\n"
        "      - <<: *errors\n        name: error-rate-2\n      - name: error-rate-3\n",
        1,
    )
    path = tmp_path / "spec.yaml"
    path.write_text(text, encoding="utf-8")
    names = [m.name for m in load_rollout(path).spec.analysis.metrics]
    assert names[:3] == ["error-rate", "error-rate-2", "error-rate-3"]


def test_other_yaml_errors_keep_their_line(tmp_path: Path) -> None:
    path = with_line("  service: iris\n", "  extra: !unknown-tag 1\n", tmp_path)
    with pytest.raises(SpecError, match="not valid YAML.*line 7"):
        load_rollout(path)
