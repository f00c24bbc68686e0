"""The Grafana dashboard for model rollouts, built with the Grafana Foundation SDK.

One dashboard, "Bento rollout": traffic, errors, latency and ML signals per model version (stable
next to candidate), and the rollout's own progress (candidate weight, phase, rollbacks). Every
query uses metric names from rollout/metrics/names.py or the recording rules of rollout/k8s/alerts.py,
and the tests check that each one parses as PromQL (promtool).

Who calls it: ``python -m rollout.k8s.generate`` (writes the chart's
``files/dashboards/bento-rollout.json``, which the dashboard ConfigMap carries to Grafana's sidecar)
and tests/unit/test_dashboards*.py.
"""

from __future__ import annotations

import json
import re
from typing import Any

from grafana_foundation_sdk.builders import dashboard as gdash
from grafana_foundation_sdk.builders import prometheus as gprom
from grafana_foundation_sdk.builders import stat as gstat
from grafana_foundation_sdk.builders import timeseries as gts
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as mdash

from rollout.k8s import alerts
from rollout.metrics import names as n

UID = "bento-rollout"
TITLE = "Bento rollout"
DATASOURCE_VAR = "datasource"
# every model-level query is filtered by these template variables
SEL = f'{n.LABEL_MODEL}=~"$model"'
RSEL = 'service=~"$model"'
LEGEND = "{{" + n.LABEL_VERSION + "}}"
_DS = mdash.DataSourceRef(type_val="prometheus", uid="${" + DATASOURCE_VAR + "}")


def _query(expr: str, legend: str = LEGEND, ref: str = "A") -> gprom.Dataquery:
    return gprom.Dataquery().expr(expr).legend_format(legend).ref_id(ref).range()


def _timeseries(title: str, unit: str, description: str, *queries: gprom.Dataquery) -> gts.Panel:
    panel = gts.Panel().title(title).description(description).unit(unit).datasource(_DS).height(8).span(12)
    for q in queries:
        panel = panel.with_target(q)
    return panel


def _stat(title: str, unit: str, description: str, query: gprom.Dataquery) -> gstat.Panel:
    return (
        gstat.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .datasource(_DS)
        .height(4)
        .span(6)
        .with_target(query.instant())
    )


def _traffic_panels() -> list[Any]:
    rate = f"rate({n.REQUESTS_TOTAL}{{{SEL}}}[$__rate_interval])"
    return [
        _timeseries(
            "Requests per second by version",
            "reqps",
            "All requests each model version answered.",
            _query(f"sum by ({n.LABEL_VERSION}) ({rate})"),
        ),
        _timeseries(
            "Server error ratio by version",
            "percentunit",
            "Share of requests answered with a 5xx; the candidate error-rate alert fires above "
            f"{alerts.ERROR_RATIO_THRESHOLD:.0%}.",
            _query(
                f'sum by ({n.LABEL_VERSION}) (rate({n.REQUESTS_TOTAL}{{{SEL}, code=~"5.."}}[$__rate_interval]))'
                f" / sum by ({n.LABEL_VERSION}) ({rate})"
            ),
        ),
        _timeseries(
            "Latency p50 / p99 by version",
            "s",
            "Server-side handling time from the service's histogram.",
            _query(
                f"histogram_quantile(0.5, sum by ({n.LABEL_VERSION}, le) "
                f"(rate({n.REQUEST_DURATION_SECONDS}_bucket{{{SEL}}}[$__rate_interval])))",
                legend=LEGEND + " p50",
            ),
            _query(
                f"histogram_quantile(0.99, sum by ({n.LABEL_VERSION}, le) "
                f"(rate({n.REQUEST_DURATION_SECONDS}_bucket{{{SEL}}}[$__rate_interval])))",
                legend=LEGEND + " p99",
                ref="B",
            ),
        ),
        _timeseries(
            "Requests by status code",
            "reqps",
            "Client errors (4xx) are bad input; server errors (5xx) count against the version.",
            _query(f"sum by ({n.LABEL_VERSION}, code) ({rate})", legend=LEGEND + " {{code}}"),
        ),
    ]


def _ml_panels() -> list[Any]:
    return [
        _timeseries(
            "Accuracy from feedback labels (10m)",
            "percentunit",
            "Correct predictions among requests whose true label came back through the feedback endpoint.",
            _query(f"{alerts.ACCURACY}{{{SEL}}}"),
        ),
        _timeseries(
            "Median prediction confidence",
            "percentunit",
            "A drop in confidence often comes before a drop in accuracy.",
            _query(
                f"histogram_quantile(0.5, sum by ({n.LABEL_VERSION}, le) "
                f"(rate({n.PREDICTION_CONFIDENCE}_bucket{{{SEL}}}[$__rate_interval])))"
            ),
        ),
        _timeseries(
            "Predicted class share by version",
            "percentunit",
            "A shift of the class mix between stable and candidate is a sign of a different model.",
            _query(
                f"sum by ({n.LABEL_VERSION}, class) (rate({n.PREDICTIONS_TOTAL}{{{SEL}}}[$__rate_interval]))"
                f" / ignoring (class) group_left sum by ({n.LABEL_VERSION}) "
                f"(rate({n.PREDICTIONS_TOTAL}{{{SEL}}}[$__rate_interval]))",
                legend=LEGEND + " {{class}}",
            ),
        ),
        _timeseries(
            "Input drift: mean feature z-score",
            "none",
            "Mean z-score of each input feature against the training data; near 0 means no drift.",
            _query(
                f"sum by ({n.LABEL_VERSION}, feature) (rate({n.FEATURE_ZSCORE}_sum{{{SEL}}}[$__rate_interval]))"
                f" / sum by ({n.LABEL_VERSION}, feature) (rate({n.FEATURE_ZSCORE}_count{{{SEL}}}[$__rate_interval]))",
                legend=LEGEND + " {{feature}}",
            ),
        ),
        _timeseries(
            "Shadow agreement",
            "percentunit",
            "Share of mirrored requests where the candidate gave the stable answer.",
            _query(
                f"sum by ({n.LABEL_VERSION}) (rate({n.SHADOW_AGREEMENTS_TOTAL}{{{SEL}}}[$__rate_interval]))"
                f" / sum by ({n.LABEL_VERSION}) (rate({n.SHADOW_COMPARISONS_TOTAL}{{{SEL}}}[$__rate_interval]))"
            ),
        ),
    ]


def _rollout_panels() -> list[Any]:
    return [
        _stat(
            "Candidate weight",
            "percent",
            "Percent of user traffic sent to the candidate now.",
            _query(f"max by (rollout) ({n.ROLLOUT_CANDIDATE_WEIGHT}{{{RSEL}}})", legend="{{rollout}}"),
        ),
        _stat(
            "Rollbacks (24h)",
            "none",
            "Rollbacks of these services in the last day.",
            _query(f"sum(increase({n.ROLLOUT_ROLLBACKS_TOTAL}{{{RSEL}}}[24h]))", legend="rollbacks"),
        ),
        _stat(
            "Seconds since last step",
            "s",
            "Time since each rollout last changed step or phase.",
            _query(
                f"time() - max by (rollout) ({n.ROLLOUT_LAST_TRANSITION}{{{RSEL}}})", legend="{{rollout}}"
            ),
        ),
        _stat(
            "Firing rollout alerts",
            "none",
            "Alerts of the bento-rollout rule group that fire now.",
            _query(
                'count(ALERTS{alertname=~"ModelRollout.*", alertstate="firing"}) or vector(0)',
                legend="alerts",
            ),
        ),
        _timeseries(
            "Candidate weight over time",
            "percent",
            "The weight steps of each rollout; a drop to 0 is a rollback.",
            _query(f"{n.ROLLOUT_CANDIDATE_WEIGHT}{{{RSEL}}}", legend="{{rollout}}"),
        ),
        _timeseries(
            "Rollout phase",
            "none",
            "1 while a rollout is in that phase.",
            _query(f"{n.ROLLOUT_PHASE}{{{RSEL}}} == 1", legend="{{rollout}} {{phase}}"),
        ),
    ]


def _variables() -> list[Any]:
    datasource = gdash.DatasourceVariable(DATASOURCE_VAR).label("Data source").type("prometheus")
    model = (
        gdash.QueryVariable("model")
        .label("Model")
        .datasource(_DS)
        .query(f"label_values({n.REQUESTS_TOTAL}, {n.LABEL_MODEL})")
        .refresh(mdash.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )
    return [datasource, model]


def build_dashboard() -> dict[str, Any]:
    """The dashboard as the JSON object Grafana imports."""
    builder = (
        gdash.Dashboard(TITLE)
        .uid(UID)
        .description("Model versions side by side during progressive rollouts (bento-rollout).")
        .tags(["bento-rollout", "kserve", "ml"])
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .editable()
    )
    for var in _variables():
        builder = builder.with_variable(var)
    builder = builder.with_row(gdash.Row("Rollout progress"))
    for panel in _rollout_panels():
        builder = builder.with_panel(panel)
    builder = builder.with_row(gdash.Row("Traffic, errors and latency by version"))
    for panel in _traffic_panels():
        builder = builder.with_panel(panel)
    builder = builder.with_row(gdash.Row("Model quality"))
    for panel in _ml_panels():
        builder = builder.with_panel(panel)
    board = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    # unique panel ids in layout order (Grafana links and alerts refer to panels by id)
    for number, panel in enumerate(board["panels"], start=1):
        panel["id"] = number
    return _without_nulls(board)


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def render_dashboard() -> str:
    return json.dumps(build_dashboard(), indent=2, sort_keys=True) + "\n"


def panel_queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query target of every panel, rows included."""
    out: list[tuple[str, str]] = []
    for panel in board.get("panels", []):
        for sub in [panel, *panel.get("panels", [])]:
            for target in sub.get("targets") or []:
                if target.get("expr"):
                    out.append((sub.get("title", "?"), target["expr"]))
    return out


# Grafana replaces these before it sends a query; the parse check does the same
_GRAFANA_VARS = {
    "$__rate_interval": "1m",
    "$__interval": "30s",
    "$__range": "1h",
    "$model": ".*",
}


def as_prometheus_query(expr: str) -> str:
    """Substitute Grafana's template variables the way Grafana does, giving plain PromQL."""
    for var, value in _GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    leftover = re.findall(r"\$\{?\w+", expr)
    if leftover:
        raise ValueError(f"unknown Grafana variable(s) {leftover} in query: {expr}")
    return expr
