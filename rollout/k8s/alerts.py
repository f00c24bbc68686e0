"""Prometheus recording rules and alerts for model rollouts, built from the metric-name contract.

The rule groups are plain Prometheus rule-file content (``groups: [...]``): the chart wraps them in
a PrometheusRule (helm/bento-rollout/templates/prometheusrule.yaml reads the generated
``files/prometheus-rules.yaml``), and ``promtool check rules`` / ``promtool test rules`` read the
same file (tests/integration/test_promrules*.py). Metric names come from rollout/metrics/names.py
only, so a renamed metric cannot leave a silent alert behind.

Who calls it: ``python -m rollout.k8s.generate``, the dashboard builder (it reuses the recording
rule names) and the tests.
"""

from __future__ import annotations

from typing import Any

from rollout.metrics import names as n

# recording rules: level:metric:operations, per the Prometheus naming guide
REQUEST_RATE = "model_version:model_requests:rate2m"
ERROR_RATE = "model_version:model_request_errors:rate2m"
ERROR_RATIO = "model_version:model_request_error_ratio:rate2m"
LATENCY_P99 = "model_version:model_request_duration_seconds:p99_2m"
ACCURACY = "model_version:model_feedback_accuracy:ratio10m"
CONFIDENCE_P50 = "model_version:model_prediction_confidence_ratio:p50_5m"

BY = f"{n.LABEL_MODEL}, {n.LABEL_VERSION}"
SERVER_ERROR = 'code=~"5.."'

# alert thresholds (documented in the alert text; change here, regenerate, rerun promtool tests)
ERROR_RATIO_THRESHOLD = 0.05
MIN_REQUEST_RATE = 0.1  # requests/s: below this an error ratio is noise
STUCK_AFTER_SECONDS = 900
ROLLBACK_WINDOW = "15m"


def recording_rules() -> list[dict[str, Any]]:
    return [
        {"record": REQUEST_RATE, "expr": f"sum by ({BY}) (rate({n.REQUESTS_TOTAL}[2m]))"},
        {"record": ERROR_RATE, "expr": f"sum by ({BY}) (rate({n.REQUESTS_TOTAL}{{{SERVER_ERROR}}}[2m]))"},
        {
            "record": ERROR_RATIO,
            # versions with traffic but no errors have no error series: count them as 0
            "expr": f"({ERROR_RATE} or {REQUEST_RATE} * 0) / ({REQUEST_RATE} > 0)",
        },
        {
            "record": LATENCY_P99,
            "expr": f"histogram_quantile(0.99, sum by ({BY}, le) (rate({n.REQUEST_DURATION_SECONDS}_bucket[2m])))",
        },
        {
            "record": ACCURACY,
            "expr": f"sum by ({BY}) (increase({n.FEEDBACK_CORRECT_TOTAL}[10m]))"
            f" / (sum by ({BY}) (increase({n.FEEDBACK_TOTAL}[10m])) > 0)",
        },
        {
            "record": CONFIDENCE_P50,
            "expr": f"histogram_quantile(0.5, sum by ({BY}, le) (rate({n.PREDICTION_CONFIDENCE}_bucket[5m])))",
        },
    ]


def alerting_rules() -> list[dict[str, Any]]:
    pct = f"{ERROR_RATIO_THRESHOLD:.0%}"
    return [
        {
            "alert": "ModelRolloutCandidateErrorRateHigh",
            "expr": f"{ERROR_RATIO} > {ERROR_RATIO_THRESHOLD}"
            f" and on ({BY}) {REQUEST_RATE} > {MIN_REQUEST_RATE}"
            f' and on ({BY}) {n.ROLLOUT_VERSION_INFO}{{role="candidate"}} == 1',
            "for": "2m",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "Candidate {{ $labels.model }}:{{ $labels.version }} fails over "
                + pct
                + " of requests",
                "description": "{{ $value | humanizePercentage }} of requests to the candidate "
                "{{ $labels.model }}:{{ $labels.version }} got a 5xx over the last 2 minutes. The rollout's "
                "analysis should roll it back; if it does not, run `rollout abort`.",
            },
        },
        {
            "alert": "ModelRolloutStuck",
            "expr": f"time() - {n.ROLLOUT_LAST_TRANSITION} > {STUCK_AFTER_SECONDS}"
            f' and on (rollout, service) {n.ROLLOUT_PHASE}{{phase="Progressing"}} == 1',
            "for": "5m",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "Rollout {{ $labels.rollout }} has not moved for "
                f"{STUCK_AFTER_SECONDS // 60} minutes",
                "description": "Rollout {{ $labels.rollout }} of {{ $labels.service }} is Progressing but its "
                "last step change was {{ $value | humanizeDuration }} ago. Check the controller's logs and "
                "`rollout status {{ $labels.rollout }}` (analysis inconclusive, candidate not ready).",
            },
        },
        {
            "alert": "ModelRolloutRolledBack",
            "expr": f"increase({n.ROLLOUT_ROLLBACKS_TOTAL}[{ROLLBACK_WINDOW}]) > 0",
            "labels": {"severity": "info"},
            "annotations": {
                "summary": "Rollout {{ $labels.rollout }} was rolled back ({{ $labels.reason }})",
                "description": "The candidate of {{ $labels.service }} was rolled back within the last "
                f"{ROLLBACK_WINDOW}, reason: {{{{ $labels.reason }}}}. Stable serves all traffic again.",
            },
        },
    ]


def rule_groups() -> dict[str, Any]:
    """The rule file content: ``{"groups": [...]}``."""
    return {
        "groups": [
            {"name": "bento-rollout.recording", "interval": "30s", "rules": recording_rules()},
            {"name": "bento-rollout.alerts", "rules": alerting_rules()},
        ]
    }
