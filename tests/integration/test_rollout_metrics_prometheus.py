"""The rollout_* series with real Prometheus parts: a local rollout's series reach the local
stack's Prometheus (real nginx + Prometheus, echo model servers), and the chart's alerts fire on
the exporter's real output under promtool (ModelRolloutRolledBack after a rollback,
ModelRolloutStuck for a rollout that does not move; silent otherwise). And the model series the
built-in templates read: a tiny exposition over HTTP (a regressor's feedback counters and
predicted-value histogram for two versions, growing with time) scraped by a real Prometheus;
every template's rendered PromQL runs there, and the mae, rmse and prediction-value-shift samples
read back the errors and the shift the exposition was written with."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from rollout.actions import CommandKind
from rollout.analysis.base import HistogramSample, MeanSample, Verdict
from rollout.analysis.registry import make_judge
from rollout.analysis.threshold import headline
from rollout.exporter import RolloutCollector
from rollout.k8s import alerts, generate
from rollout.local.processes import Supervisor, free_port
from rollout.local.prometheus import PrometheusServer
from rollout.local.runner import CommandQueue, LocalRunner
from rollout.local.stack import LocalStack
from rollout.metrics import names as n
from rollout.metrics.prometheus import PrometheusProvider
from rollout.metrics.sampler import SampleContext, collect
from rollout.metrics.templates import TEMPLATES, get_template
from rollout.model import Phase, RolloutState
from rollout.spec import MetricSpec, parse_rollout
from tests.unit.enginekit import ERROR_RATE, FakeEdge, make_spec, run, value

pytestmark = pytest.mark.integration
ECHO = Path(__file__).resolve().parent / "echo_server.py"


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    s = LocalStack.up(home=tmp_path / "home", services=["iris"])
    try:
        for version in ("v1", "v2"):  # stand-in model servers: the runner finds them by version
            s.start_backend(
                "iris", f"iris-{version}", version, [sys.executable, str(ECHO), version, "{port}"]
            )
        yield s
    finally:
        s.stop()


def test_a_local_rollout_s_series_reach_the_local_prometheus(stack: LocalStack) -> None:
    rollout = parse_rollout(
        {
            "apiVersion": "bento-rollout.io/v1alpha1",
            "kind": "ModelRollout",
            "metadata": {"name": "iris-metrics"},
            "spec": {
                "service": "iris",
                "stable": {"model": "iris:v1"},
                "candidate": {"model": "iris:v2"},
                "strategy": {"canary": {"steps": [{"setWeight": 30}, {"pause": {}}, {"setWeight": 100}]}},
            },
        }
    )
    runner = LocalRunner(rollout, stack, home=stack.home)
    result: list[RolloutState] = []
    thread = threading.Thread(target=lambda: result.append(runner.run(timeout=180)), daemon=True)
    thread.start()
    prom = stack.metrics()
    sel = 'rollout="iris-metrics",service="iris"'
    try:
        wait_for(  # the pause step: waiting for promotion at 30 %
            "the candidate weight 30 and phase Paused in Prometheus",
            lambda: prom.query_vector(
                f'rollout_candidate_weight_percent{{{sel}}} == 30 and on (rollout) rollout_phase{{{sel},phase="Paused"}} == 1'
            ),
        )
        assert prom.run_query(f'rollout_rollbacks_total{{{sel},reason="Aborted"}}') == 0
        info = prom.query_vector(f"rollout_version_info{{{sel}}} == 1")
        assert len(info) == 2  # stable v1 and candidate v2
        # the scrape target carries the runner's component label, not the rollout's service
        assert prom.run_query(f'count(rollout_phase{{{sel},component="rollout"}})') == len(Phase)
        CommandQueue(runner.dir / "commands").put(CommandKind.ABORT)
    except BaseException:
        runner.request_stop()
        raise
    finally:
        thread.join(timeout=120)
    assert result and result[0].phase == Phase.ABORTED
    # the runner waited for a scrape of the final state before it stopped serving
    assert prom.run_query(f'rollout_rollbacks_total{{{sel},reason="Aborted"}}') == 1
    assert prom.run_query(f'rollout_phase{{{sel},phase="Aborted"}}') == 1
    assert prom.run_query(f"rollout_candidate_weight_percent{{{sel}}}") == 0
    # what ModelRolloutRolledBack evaluates
    assert prom.run_query(f'increase(rollout_rollbacks_total{{{sel},reason="Aborted"}}[5m])') > 0
    assert runner.metrics_target not in stack.prometheus.targets()
    assert runner.metrics_server is None


# --- the chart's alerts on the exporter's output (promtool) --------------------------------------


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: install Debian's prometheus package (make setup)", pytrace=False)
    return path


def _series(states: list[tuple[str, RolloutState]]) -> dict[str, float]:
    """``{'name{labels}': value}`` of one scrape of the exporter holding ``states``."""
    c = RolloutCollector()
    for name, state in states:
        c.update(name, state, "models")
    out = {}
    for fam in text_string_to_metric_families(c.exposition()):
        for s in fam.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def _input_series(scrapes: list[tuple[int, dict[str, float]]]) -> list[dict[str, str]]:
    """promtool input series from scrapes held for ``minutes`` each (one sample per minute)."""
    keys = sorted({k for _, scrape in scrapes for k in scrape})
    out = []
    for key in keys:
        parts = [
            f"{scrape[key]:g}x{minutes - 1}" if key in scrape else f"_x{minutes - 1}"
            for minutes, scrape in scrapes
        ]
        out.append({"series": key, "values": " ".join(parts)})
    return out


def _expected(alert: str, labels: dict[str, str], value: str = "") -> dict[str, Any]:
    """exp_alerts entry: ``labels`` and the alert's annotations rendered for them."""
    rule = next(r for r in alerts.alerting_rules() if r["alert"] == alert)

    def render(text: str) -> str:
        text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], text)
        return re.sub(r"\{\{ \$value[^}]*\}\}", value, text)

    return {
        "exp_labels": {**labels, **rule["labels"]},
        "exp_annotations": {k: render(v) for k, v in rule["annotations"].items()},
    }


def test_the_alerts_fire_on_the_exporter_s_real_output(tmp_path: Path) -> None:
    spec = make_spec(
        {"canary": {"steps": [{"setWeight": 30}, {"analysis": {"intervals": 3}}, {"setWeight": 100}]}},
        [ERROR_RATE],
        interval="1s",
    )
    edge = FakeEdge(source=value(0.01))  # the engine's clock starts at 0, as promtool's does
    during = run(spec, edge, until=lambda s: s.desired_routes.candidate_weight == 30)
    edge.source = value(0.5)
    rolled_back = run(spec, edge, during)
    assert rolled_back.phase == Phase.ROLLED_BACK
    # a second rollout whose candidate never becomes ready: Progressing, never moving
    stuck = run(spec, FakeEdge(ready_after=1e9), until=lambda s: s.phase == Phase.PROGRESSING, max_steps=5)
    scrapes = [
        (10, _series([("canary", during), ("stuck", stuck)])),
        (30, _series([("canary", rolled_back), ("stuck", stuck)])),
    ]
    rules = tmp_path / "rules.yaml"
    shutil.copy(generate.RULES_FILE, rules)
    base = {"rollout": "canary", "service": "iris", "namespace": "models"}
    doc = {
        "rule_files": [rules.name],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": _input_series(scrapes),
                "alert_rule_test": [
                    {"eval_time": "5m", "alertname": "ModelRolloutRolledBack", "exp_alerts": []},
                    {
                        "eval_time": "15m",
                        "alertname": "ModelRolloutRolledBack",
                        "exp_alerts": [
                            _expected("ModelRolloutRolledBack", {**base, "reason": "AnalysisFailed"})
                        ],
                    },
                    # Progressing for 15 min + 5 min `for`; the rolled-back rollout is not stuck
                    {
                        "eval_time": "25m",
                        "alertname": "ModelRolloutStuck",
                        "exp_alerts": [
                            _expected("ModelRolloutStuck", {**base, "rollout": "stuck"}, "25m 0s")
                        ],
                    },
                    {"eval_time": "10m", "alertname": "ModelRolloutStuck", "exp_alerts": []},
                ],
            }
        ],
    }
    (tmp_path / "t.test.yaml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    result = subprocess.run(
        [_promtool(), "test", "rules", "t.test.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- the templates' PromQL on a real Prometheus: a regressor's series ---------------------------

# per version: labelled rows per second, MAE, MSE (>= MAE^2), predicted-value bucket shares
REGRESSOR = {
    "v1": (100.0, 0.8, 1.0, {"-10": 0.1, "0": 0.5, "10": 0.9, "+Inf": 1.0}),
    "v2": (100.0, 0.96, 1.44, {"-10": 0.05, "0": 0.3, "10": 0.9, "+Inf": 1.0}),
}


def _regressor_exposition(seconds: float) -> str:
    """The series a regressor's server exports, ``seconds`` after it started (every counter grows
    at its own constant rate, so increase() over any window keeps their ratios exactly)."""
    lines = [f"# TYPE {name} counter" for name in (n.FEEDBACK_TOTAL, n.FEEDBACK_ABSOLUTE_ERROR_SUM)]
    lines += [f"# TYPE {n.FEEDBACK_SQUARED_ERROR_SUM} counter", f"# TYPE {n.PREDICTION_VALUE} histogram"]
    for version, (rows, mae, mse, shares) in REGRESSOR.items():
        sel = f'model="house",version="{version}"'
        total = rows * seconds
        lines += [
            f"{n.FEEDBACK_TOTAL}{{{sel}}} {total}",
            f"{n.FEEDBACK_ABSOLUTE_ERROR_SUM}{{{sel}}} {total * mae}",
            f"{n.FEEDBACK_SQUARED_ERROR_SUM}{{{sel}}} {total * mse}",
        ]
        lines += [f'{n.PREDICTION_VALUE}_bucket{{{sel},le="{le}"}} {total * x}' for le, x in shares.items()]
        lines += [f"{n.PREDICTION_VALUE}_count{{{sel}}} {total}", f"{n.PREDICTION_VALUE}_sum{{{sel}}} 0"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def regressor_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusProvider]:
    started = time.monotonic()

    class Exposition(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            body = _regressor_exposition(time.monotonic() - started).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    http = ThreadingHTTPServer(("127.0.0.1", 0), Exposition)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    sup = Supervisor()
    try:
        server = PrometheusServer(sup, tmp_path_factory.mktemp("prom") / "prometheus", free_port())
        server.start()
        server.add_target("regressor", f"127.0.0.1:{http.server_address[1]}")
        provider = PrometheusProvider(server.url)
        # a full 10 s window of scrapes (every second) for both versions
        wait_for(
            "10 s of the regressor's series",
            lambda: len(provider.query_vector(f"count_over_time({n.FEEDBACK_TOTAL}[10s]) >= 9")) == 2,
        )
        yield provider
    finally:
        sup.stop_all()
        http.shutdown()


CTX = SampleContext("house", "house:v1", "house:v2", window=10.0)


def _metric(template: str, kind: str = "threshold") -> MetricSpec:
    data = {"name": "m", "template": template, "judge": {"kind": kind, "minSamples": 100}}
    return MetricSpec.model_validate(data | ({"threshold": {"max": 1.0}} if kind == "threshold" else {}))


def test_every_template_s_queries_run_on_a_real_prometheus(regressor_prometheus: PrometheusProvider) -> None:
    """Each built-in template's rendered PromQL parses and evaluates (series of a classifier are
    absent here: zero counts, an empty histogram, no features, never a rejected query)."""
    for name in TEMPLATES:
        collect(_metric(name), regressor_prometheus, CTX)


def test_mae_and_rmse_read_the_regressor_s_errors_back(regressor_prometheus: PrometheusProvider) -> None:
    sample = collect(_metric("mae"), regressor_prometheus, CTX)
    assert isinstance(sample, MeanSample)
    assert 500 < sample.candidate_n < 1500 and 500 < sample.stable_n < 1500  # 100 rows/s over 10 s
    assert headline(get_template("mae"), sample) == pytest.approx(0.96, rel=1e-6)
    assert headline(get_template("rmse"), sample) == pytest.approx(1.2, rel=1e-6)
    assert sample.stable_total / sample.stable_n == pytest.approx(0.8, rel=1e-6)
    # MAE 20 % above stable's on ~1000 rows a side: a regression, proven by both statistical judges
    for kind in ("comparative", "sequential"):
        got = make_judge(_metric("mae", kind)).judge("m", sample, 0.0)
        assert got.verdict == Verdict.FAILED, (kind, got.message)


def test_prediction_value_shift_reads_the_bucket_shares_back(
    regressor_prometheus: PrometheusProvider,
) -> None:
    sample = collect(_metric("prediction-value-shift"), regressor_prometheus, CTX)
    assert isinstance(sample, HistogramSample) and sample.bounds == (-10.0, 0.0, 10.0, float("inf"))
    assert headline(get_template("prediction-value-shift"), sample) == pytest.approx(0.2, rel=1e-6)
