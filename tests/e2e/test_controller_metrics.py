"""The controller's rollout_* series (``rollout controller --metrics-port``) against the real
kube-apiserver: scraped over HTTP while a rollout runs and after it is rolled back, they say what
``.status`` says (phase, candidate weight) and rollout_rollbacks_total goes from 0 to 1 under the
rollback's reason; a deleted rollout's series go away.

As in test_controller.py, no KServe runs: the InferenceServices' readiness is written by the test.
The rollback comes from an unreachable Prometheus (errorLimit), so it needs no model server.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rollout.errors import NotFoundError
from rollout.k8s.client import MODEL_ROLLOUT, KubeClient
from rollout.local.processes import free_port
from tests.e2e import test_controller as tc
from tests.e2e.test_controller import _closed_port, isvc, rollout, status, wait_for

# the fixtures of test_controller.py: the CRD, an admin client, `rollout controller` processes
rollout_crd, kube, controllers = tc.rollout_crd, tc.kube, tc.controllers

pytestmark = pytest.mark.k8s
Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Series | None:
    """The controller's /metrics, parsed; None while it does not answer yet."""
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    except (urllib.error.URLError, ConnectionError):
        return None
    out: Series = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def pick(series: Series, name: str, **labels: str) -> list[float]:
    return [v for (n, ls), v in series.items() if n == name and set(labels.items()) <= ls]


def agreement(client: KubeClient, ns: str, name: str, port: int) -> tuple[dict[str, Any], Series] | None:
    """(status, series) when a scrape and the .status read right after it agree on phase and weight."""
    got = scrape(port)
    st = status(client, ns, name)
    if not got or not st.get("phase"):
        return None
    sel = {"rollout": name, "namespace": ns, "service": "iris"}
    phase = pick(got, "rollout_phase", **sel, phase=st["phase"])
    weight = pick(got, "rollout_candidate_weight_percent", **sel)
    if phase == [1.0] and weight == [float(st["candidateWeight"])]:
        return st, got
    return None


def test_controller_series_follow_status_through_a_rollback(kube, k8s_namespace, controllers) -> None:
    ns = k8s_namespace
    isvc(kube, ns, "iris-stable")
    isvc(kube, ns, "iris-candidate")
    spec = rollout(
        "iris-metrics",
        [{"setWeight": 30}, {"analysis": {"intervals": 2}}, {"setWeight": 100}],
        analysis={
            "interval": "1s",
            "errorLimit": 6,
            "metrics": [{"name": "error-rate", "template": "error-rate", "threshold": {"max": 0.01}}],
        },
        metricsAddress=f"http://127.0.0.1:{_closed_port()}",
    )
    port = free_port()
    controllers("a", "--metrics-port", str(port))
    kube.create(MODEL_ROLLOUT, ns, spec)

    # during: 30 % to the candidate, measuring (and failing to reach Prometheus)
    def in_flight() -> tuple[dict[str, Any], Series] | None:
        got = agreement(kube, ns, "iris-metrics", port)
        if got and got[0]["phase"] in ("Progressing", "Paused") and got[0]["candidateWeight"] == 30:
            return got
        return None

    st, during = wait_for("the series to show 30 % in flight", in_flight, timeout=180)
    sel = {"rollout": "iris-metrics", "namespace": ns, "service": "iris"}
    assert pick(during, "rollout_rollbacks_total", **sel, reason="MetricsUnavailable") == [0.0]
    assert set(pick(during, "rollout_rollbacks_total", **sel)) == {0.0}
    roles = sorted(dict(ls)["role"] for (n, ls) in during if n == "rollout_version_info")
    assert roles == ["candidate", "stable"]
    assert pick(during, "rollout_last_transition_timestamp_seconds", **sel)[0] > 0

    # after: rolled back, 0 -> 1 under the reason the status gives
    def rolled_back() -> tuple[dict[str, Any], Series] | None:
        got = agreement(kube, ns, "iris-metrics", port)
        return got if got and got[0]["phase"] == "RolledBack" else None

    st, after = wait_for("the series to show the rollback", rolled_back, timeout=180)
    assert st["reason"] == "MetricsUnavailable" and st["candidateWeight"] == 0
    assert pick(after, "rollout_rollbacks_total", **sel, reason="MetricsUnavailable") == [1.0]
    assert sum(pick(after, "rollout_rollbacks_total", **sel)) == 1.0
    assert pick(after, "rollout_phase", **sel, phase="Progressing") == [0.0]
    # a finished rollout keeps its values: the controller re-reads it on every tick
    again = wait_for("another scrape", lambda: scrape(port))
    assert pick(again, "rollout_rollbacks_total", **sel, reason="MetricsUnavailable") == [1.0]
    assert pick(again, "rollout_phase", **sel, phase="RolledBack") == [1.0]

    kube.delete(MODEL_ROLLOUT, ns, "iris-metrics")

    def gone() -> bool:
        try:
            kube.get(MODEL_ROLLOUT, ns, "iris-metrics")
            return False
        except NotFoundError:
            got = scrape(port)
            return got is not None and not pick(got, "rollout_phase", **sel)

    wait_for("the deleted rollout's series to go", gone, timeout=60)


def test_the_chart_serves_the_series_where_its_pod_monitor_scrapes() -> None:
    """In a Pod the controller listens on the Pod's interfaces, on the port the PodMonitor names;
    only the chart sets ROLLOUT_METRICS_HOST (the CLI's default is 127.0.0.1)."""
    import subprocess

    import yaml

    from rollout.cli.cluster import controller_cmd

    out = subprocess.run(
        [str(tc.ROOT / ".cache" / "bin" / "helm"), "template", "r", str(tc.ROOT / "helm" / "bento-rollout"),
         "--set", "routing.mode=istio"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    deploy = next(d for d in docs if d["kind"] == "Deployment" and "controller" in d["metadata"]["name"])
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert env["ROLLOUT_METRICS_HOST"] == "0.0.0.0"
    assert int(env["ROLLOUT_METRICS_PORT"]) == ports["metrics"]
    monitor = next(d for d in docs if d["kind"] == "PodMonitor" and "controller" in d["metadata"]["name"])
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]
    host = next(p for p in controller_cmd.params if p.name == "metrics_host")
    assert host.default == "127.0.0.1"
