"""Fault drills for the Kubernetes tier (issue 7, "extend it as the cluster pieces land"), against the
real kube-apiserver of the test harness and a real ``rollout controller`` process.

- kube-apiserver is killed (SIGKILL) mid-canary and stays down for a while: the controller stays up,
  changes nothing it cannot record, and once the API is back it picks the rollout up where .status
  says it was: a promote command then takes it on to Promoted (and the hand-off to stable), with no
  step started twice and the VirtualService agreeing with .status;
- the same outage while a timed pause is running: the pause is not skipped and no step is lost;
  the rollout ends Promoted.

As in test_controller.py, no KServe/Istio runs (no pods): InferenceService readiness is written by
the test and "traffic" is the VirtualService as the API server stores it.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest
from click.testing import CliRunner

from rollout.cli.main import cli
from rollout.k8s.client import KubeClient
from tests.e2e import test_controller as tc
from tests.e2e.test_controller import isvc, phase_is, rollout, status, vs_weights, wait_for

# the fixtures of test_controller.py: the CRD, an admin client, `rollout controller` processes
rollout_crd, kube, controllers = tc.rollout_crd, tc.kube, tc.controllers

pytestmark = pytest.mark.k8s
OUTAGE_SECONDS = 8.0  # longer than the controller's 4 s Lease: it must win the Lease back


def _steps_started_once(st: dict[str, Any]) -> None:
    started = [h["message"] for h in st["history"] if h["reason"] == "StepStarted"]
    assert started, st["history"]
    assert len(started) == len(set(started)), f"a step was started twice: {started}"


def _handed_off(kube: KubeClient, ns: str, name: str) -> None:
    """After promotion: stable takes the candidate's model over and all traffic returns to stable."""
    wait_for("the hand-off", lambda: status(kube, ns, name).get("handoff", {}).get("phase") == "Complete")
    wait_for("all traffic back to stable", lambda: vs_weights(kube, ns) == {"stable": 100, "candidate": 0})


def _canary(kube: KubeClient, ns: str, name: str, steps: list[dict[str, Any]]) -> None:
    """Stable and candidate InferenceServices (ready), and a canary ModelRollout over them."""
    for role in ("stable", "candidate"):
        isvc(kube, ns, f"iris-{role}")
    kube.create(tc.MODEL_ROLLOUT, ns, rollout(name, steps))


def test_api_server_outage_mid_canary_loses_no_step(
    kube: KubeClient, k8s_namespace: str, controllers: Any, k8s_cluster: Any
) -> None:
    ns = k8s_namespace
    steps = [
        {"setWeight": 20},
        {"pause": {}},
        {"setWeight": 60},
        {"pause": {"duration": "2s"}},
        {"setWeight": 100},
    ]
    _canary(kube, ns, "iris-outage", steps)
    ctl = controllers("a")
    wait_for("the wait for promotion at 20%", phase_is(kube, ns, "iris-outage", "Paused"), timeout=180)
    before = status(kube, ns, "iris-outage")
    assert vs_weights(kube, ns) == {"stable": 80, "candidate": 20}

    k8s_cluster.control_plane.restart_apiserver(down=OUTAGE_SECONDS)
    assert ctl.proc.poll() is None, "the controller exited during the API outage"
    # same data after the outage, and the controller did not move on by itself (it waits for promote)
    time.sleep(3)
    after_outage = status(kube, ns, "iris-outage")
    assert after_outage["phase"] == "Paused" and after_outage["currentStep"] == before["currentStep"]
    assert vs_weights(kube, ns) == {"stable": 80, "candidate": 20}

    res = CliRunner().invoke(
        cli,
        [
            "promote",
            "iris-outage",
            "-n",
            ns,
            "--kubeconfig",
            str(k8s_cluster.kubeconfig),
            "--wait",
            "--timeout",
            "120",
        ],
    )
    assert res.exit_code == 0, res.output
    wait_for("Promoted", phase_is(kube, ns, "iris-outage", "Promoted"), timeout=180)
    st = status(kube, ns, "iris-outage")
    _steps_started_once(st)
    _handed_off(kube, ns, "iris-outage")
    assert ctl.proc.poll() is None, "the controller kept running through the outage"


def test_api_server_outage_during_a_timed_pause_skips_nothing(
    kube: KubeClient, k8s_namespace: str, controllers: Any, k8s_cluster: Any
) -> None:
    ns = k8s_namespace
    _canary(kube, ns, "iris-pause", [{"setWeight": 30}, {"pause": {"duration": "30s"}}, {"setWeight": 100}])
    ctl = controllers("a")
    wait_for(
        "30% to the candidate", lambda: vs_weights(kube, ns) == {"stable": 70, "candidate": 30}, timeout=180
    )
    paused_at = time.monotonic()
    k8s_cluster.control_plane.restart_apiserver(down=OUTAGE_SECONDS)
    # the pause is 30 s from its start: the outage neither ends it early nor loses the rollout
    if time.monotonic() - paused_at < 25:
        assert status(kube, ns, "iris-pause").get("phase") != "Promoted"
        assert vs_weights(kube, ns) == {"stable": 70, "candidate": 30}
    wait_for("Promoted", phase_is(kube, ns, "iris-pause", "Promoted"), timeout=240)
    st = status(kube, ns, "iris-pause")
    _steps_started_once(st)
    _handed_off(kube, ns, "iris-pause")
    assert ctl.proc.poll() is None
    ctl.kill(signal.SIGTERM)
