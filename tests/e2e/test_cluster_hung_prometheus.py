"""Fault drill: Prometheus hangs mid-canary (issue 19), against the real kube-apiserver of the test
harness, a real ``rollout controller`` process and a real Prometheus.

The test SIGSTOPs the Prometheus it started (by that child's pid, never by name) while the canary
is analysing its first step, for several analysis intervals, then SIGCONTs it (always, in a
``finally``). A stopped Prometheus still accepts TCP connections (the kernel completes them) but
never answers: every query hangs until the provider's timeout. While it is frozen the rollout
holds - Paused, MetricsUnavailable, the VirtualService and ``.status`` weights unchanged - and
after it resumes the rollout finishes as the evidence says (both versions answer without errors:
Promoted, then the hand-off to stable), every routing state once and in order, no step started
twice, no traceback in the controller's log.

Metrics: series backfilled into Prometheus' TSDB with promtool (tests/k8s/prometheus.py). Locust
is not needed and not used: no pods serve traffic in this harness (no KServe, Knative or Istio),
so there is no load to drive; InferenceService readiness is written by the test, and "traffic" is
the VirtualService as the API server stores it.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from rollout.k8s.client import MODEL_ROLLOUT, KubeClient
from tests.e2e import test_controller as tc
from tests.e2e.test_controller import isvc, status, vs_weights, wait_for
from tests.e2e.test_controller_strategies import RouteRecorder
from tests.k8s import prometheus as prom

# the fixtures of test_controller.py: the CRD, an admin client, `rollout controller` processes
rollout_crd, kube, controllers = tc.rollout_crd, tc.kube, tc.controllers

pytestmark = [pytest.mark.k8s, pytest.mark.slow]
FREEZE_SECONDS = 14.0  # many 1 s analysis intervals; each query hangs for the provider's 5 s timeout
DONE = ("Promoted", "RolledBack", "Aborted", "Succeeded")


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[prom.PrometheusServer]:
    text = prom.request_series({"iris": (0.0, 0.0)}, time.time())
    probe = 'sum(increase(model_requests_total{model="iris",version="v2"}[30s]))'
    with prom.backfilled(tmp_path_factory.mktemp("prom"), text, probe) as server:
        yield server


def _canary(prometheus_url: str) -> dict[str, Any]:
    steps = [
        {"setWeight": 20},
        {"analysis": {"intervals": 4}},
        {"setWeight": 60},
        {"analysis": {"intervals": 2}},
        {"setWeight": 100},
    ]
    return tc.rollout(
        "iris-hung",
        steps,
        analysis={
            "interval": "1s",
            "window": "30s",
            "errorLimit": 30,  # the freeze must hold the rollout, not roll it back
            "metrics": [{"name": "error-rate", "template": "error-rate", "threshold": {"max": 0.05}}],
        },
        metricsAddress=prometheus_url,
    )


def test_a_hung_prometheus_holds_the_canary_and_it_finishes_after_resume(
    kube: KubeClient, k8s_namespace: str, controllers: Any, prometheus: prom.PrometheusServer
) -> None:
    ns, name = k8s_namespace, "iris-hung"
    isvc(kube, ns, "iris-stable")
    isvc(kube, ns, "iris-candidate")
    recorder = RouteRecorder(kube, ns)
    kube.create(MODEL_ROLLOUT, ns, _canary(prometheus.url))
    ctl = controllers("a")
    try:
        wait_for("20% to the candidate", lambda: _weights(kube, ns) == (80, 20), timeout=180, every=0.1)
        os.kill(prometheus.proc.pid, signal.SIGSTOP)  # the child we started, by its pid
        frozen_at = time.monotonic()
        try:
            held = wait_for(
                "Paused/MetricsUnavailable while Prometheus is frozen",
                lambda: _held(kube, ns, name),
                timeout=FREEZE_SECONDS,
                every=0.25,
            )
            frozen_weights = _weights(kube, ns)
            assert frozen_weights == (80, 20), "traffic moved while no metric could be measured"
            assert held["weights"]["candidate"] == 20
            while time.monotonic() - frozen_at < FREEZE_SECONDS:  # several intervals more: still held
                st = status(kube, ns, name)
                assert st["phase"] == "Paused" and st["reason"] == "MetricsUnavailable", st["message"]
                assert _weights(kube, ns) == frozen_weights and st["weights"]["candidate"] == 20
                time.sleep(0.5)
        finally:
            os.kill(prometheus.proc.pid, signal.SIGCONT)
        wait_for("the rollout to finish", lambda: status(kube, ns, name).get("phase") in DONE, timeout=240)
        st = status(kube, ns, name)
        assert (st["phase"], st["reason"]) == ("Promoted", "Promoted"), st["message"]
        wait_for("the hand-off to stable", lambda: vs_weights(kube, ns) == {"stable": 100, "candidate": 0})
    finally:
        recorder.stop()
    st = status(kube, ns, name)
    reasons = [h["reason"] for h in st["history"]]
    assert "MetricsUnavailable" in reasons and "Resumed" in reasons, reasons
    assert st["analysis"][0]["errors"] >= 1 and st["analysis"][0]["latest"] == "Successful"
    started = [h["message"] for h in st["history"] if h["reason"] == "StepStarted"]
    assert started and len(started) == len(set(started)), f"a step was started twice: {started}"
    # every routing state once, in order: 20%, 60%, 100%, then the hand-off back to stable
    assert recorder.seen["iris"] == [
        (100, 0, 0, False),
        (80, 20, 0, False),
        (40, 60, 0, False),
        (0, 100, 0, False),
        (100, 0, 0, False),
    ]
    assert ctl.proc.poll() is None, "the controller exited"
    log = ctl.log.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]


def _weights(kube: KubeClient, ns: str) -> tuple[int, int] | None:
    try:
        w = vs_weights(kube, ns)
    except Exception:  # not created yet
        return None
    return w["stable"], w["candidate"]


def _held(kube: KubeClient, ns: str, name: str) -> dict[str, Any] | None:
    st = status(kube, ns, name)
    return st if (st.get("phase"), st.get("reason")) == ("Paused", "MetricsUnavailable") else None
