"""The Grafana dashboard (built with the Grafana Foundation SDK) shows what the rollout gates see:
it uses only the project's metric names, filters by the chosen model, and the chart ships exactly
the generated JSON. (Each query's PromQL is parsed by promtool in tests/integration.)"""

from __future__ import annotations

import json
import re

import pytest

from rollout.k8s import alerts, dashboards, generate
from rollout.metrics import names

METRIC_IN_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{")


def _known_metrics() -> set[str]:
    base = {v for k, v in vars(names).items() if k.isupper() and isinstance(v, str) and k != "LABEL_MODEL"}
    histograms = {f"{m}{suffix}" for m in base for suffix in ("_bucket", "_sum", "_count")}
    recorded = {rule["record"] for rule in alerts.recording_rules()}
    return base | histograms | recorded | {"ALERTS"}


@pytest.fixture(scope="module")
def board() -> dict:
    return dashboards.build_dashboard()


def test_chart_ships_the_generated_dashboard(board: dict) -> None:
    shipped = json.loads(generate.DASHBOARD_FILE.read_text(encoding="utf-8"))
    assert shipped == board, "files/dashboards is stale: run `python -m rollout.k8s.generate`"


def test_every_query_uses_only_metric_names_from_the_contract(board: dict) -> None:
    known = _known_metrics()
    queries = dashboards.panel_queries(board)
    used = {m for _, q in queries for m in METRIC_IN_SELECTOR.findall(q)}
    assert used, "no metric found in the dashboard queries"
    assert used <= known, (
        f"metric names not in rollout/metrics/names.py or the recording rules: {used - known}"
    )
    # the ML signals the rollouts gate on are all on the dashboard
    for metric in (names.REQUESTS_TOTAL, names.REQUEST_DURATION_SECONDS, names.FEEDBACK_TOTAL):
        assert any(metric in q or alerts.ACCURACY in q for _, q in queries), metric
    assert any(names.ROLLOUT_CANDIDATE_WEIGHT in q for _, q in queries)
    assert any(names.ROLLOUT_ROLLBACKS_TOTAL in q for _, q in queries)


def test_model_queries_follow_the_model_variable(board: dict) -> None:
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert set(variables) == {"datasource", "model"}
    assert variables["datasource"]["query"] == "prometheus"
    assert "label_values(model_requests_total, model)" in json.dumps(variables["model"]["query"])
    for title, query in dashboards.panel_queries(board):
        if "ALERTS" in query:
            continue
        assert '=~"$model"' in query, f"panel {title!r} ignores the model picker: {query}"


def test_panels_have_unique_ids_descriptions_and_the_datasource_variable(board: dict) -> None:
    panels = board["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    data_panels = [p for p in panels if p["type"] != "row"]
    assert len(data_panels) >= 14
    for panel in data_panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel.get("description"), f"panel {panel['title']!r} has no description"
        assert panel["targets"], panel["title"]
    assert board["uid"] == "bento-rollout"
    assert "null" not in json.dumps(board)


def test_grafana_variables_are_substituted_for_the_parse_check() -> None:
    q = 'rate(model_requests_total{model=~"$model"}[$__rate_interval])'
    assert dashboards.as_prometheus_query(q) == 'rate(model_requests_total{model=~".*"}[1m])'
    with pytest.raises(ValueError, match="unknown Grafana variable"):
        dashboards.as_prometheus_query('up{job=~"$job"}')
