"""The chart's Prometheus rules and the dashboard's queries, checked by Prometheus's own promtool:
the rule file loads, each alert has a unit test that fires and one that stays silent, and every
dashboard query is valid PromQL (a query Prometheus cannot parse would show an empty panel)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from rollout.k8s import alerts, dashboards, generate

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests" / "integration" / "promrules" / "rollout-alerts.test.yaml"


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: install Debian's prometheus package (make setup)", pytrace=False)
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_promtool(), *args], capture_output=True, text=True, timeout=120, check=False)


def test_rule_file_passes_promtool_check() -> None:
    result = _run("check", "rules", str(generate.RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    expected = len(alerts.recording_rules()) + len(alerts.alerting_rules())
    assert f"SUCCESS: {expected} rules found" in result.stdout


def test_alert_unit_tests_pass() -> None:
    result = _run("test", "rules", str(TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    doc = yaml.safe_load(TESTS.read_text(encoding="utf-8"))
    firing: set[str] = set()
    silent: set[str] = set()
    for case in doc["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alerts.alerting_rules()}
    assert names == {"ModelRolloutCandidateErrorRateHigh", "ModelRolloutStuck", "ModelRolloutRolledBack"}
    assert names <= firing, f"alerts never shown firing: {names - firing}"
    assert names <= silent, f"alerts never shown silent: {names - silent}"


def test_unit_tests_catch_a_changed_threshold(tmp_path: Path) -> None:
    """The promtool tests are not vacuous: the error-rate alert at 50 % instead of 5 % fails them."""
    rules = yaml.safe_load(generate.RULES_FILE.read_text(encoding="utf-8"))
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == "ModelRolloutCandidateErrorRateHigh":
                rule["expr"] = rule["expr"].replace(f"> {alerts.ERROR_RATIO_THRESHOLD}", "> 0.5", 1)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules), encoding="utf-8")
    tests = yaml.safe_load(TESTS.read_text(encoding="utf-8"))
    tests["rule_files"] = ["rules.yaml"]
    (tmp_path / "t.test.yaml").write_text(yaml.safe_dump(tests), encoding="utf-8")
    result = _run("test", "rules", str(tmp_path / "t.test.yaml"))
    assert result.returncode != 0
    assert "ModelRolloutCandidateErrorRateHigh" in result.stdout + result.stderr


def _queries_as_rules(queries: list[tuple[str, str]]) -> dict[str, object]:
    rules = [{"record": f"dashboard:query_{i}:check", "expr": q} for i, (_, q) in enumerate(queries)]
    return {"groups": [{"name": "dashboard-queries", "rules": rules}]}


def test_every_dashboard_query_parses_as_promql(tmp_path: Path) -> None:
    board = dashboards.build_dashboard()
    queries = [(title, dashboards.as_prometheus_query(q)) for title, q in dashboards.panel_queries(board)]
    assert len(queries) >= 12
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump(_queries_as_rules(queries)), encoding="utf-8")
    result = _run("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


def test_the_promql_check_rejects_a_broken_query(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    bad = [("broken", 'sum by (version) (rate(model_requests_total{model=~".*"}[1m])')]  # missing ")"
    path.write_text(yaml.safe_dump(_queries_as_rules(bad)), encoding="utf-8")
    result = _run("check", "rules", str(path))
    assert result.returncode != 0
    assert "parse error" in (result.stdout + result.stderr).lower()
