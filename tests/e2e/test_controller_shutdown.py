"""``rollout controller`` stops promptly and cleanly on SIGTERM (a Pod's termination, a test's
teardown), on the real kube-apiserver of the test harness.

It used to ignore SIGTERM for good: kopf got the ``threading.Event`` stop flag of
``handlers.run``, which it waits for in a worker thread of the loop's default executor; a signal
never sets it, so ``asyncio.run`` waited for that thread at shutdown until the SIGKILL came. Now:

- the leader, mid-rollout (its timer reconciling every 0.5 s), exits with code 0 within a few
  seconds of SIGTERM and gives its Lease up (holder empty), so the standby takes over at once
  instead of after the Lease duration, and carries the rollout on;
- a standby (blocked waiting for the Lease) exits the same way and leaves the leader's Lease alone;
- embedded (``handlers.run`` in a thread, where kopf handles no signals), setting ``run``'s ``stop``
  event ends it as promptly, Lease released.

As in test_controller.py, no KServe/Istio runs: InferenceService readiness is written by the test.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import pytest

from rollout.cli.cluster import send_command
from rollout.controller.handlers import ControllerConfig, run
from rollout.k8s.client import MODEL_ROLLOUT
from tests.e2e import test_controller as tc
from tests.e2e.test_controller import (
    Controller,
    _holder,
    isvc,
    phase_is,
    rollout,
    status,
    vs_weights,
    wait_for,
)

rollout_crd, kube, controllers = tc.rollout_crd, tc.kube, tc.controllers
pytestmark = pytest.mark.k8s
EXIT_WITHIN = 5.0  # seconds from SIGTERM to the process gone (it takes well under 1 s)
LEASE_DURATION = 4.0  # what tests/e2e/test_controller.Controller passes


def _terminate(c: Controller) -> tuple[int, float]:
    """SIGTERM to the controller alone (not its group); (exit code, seconds until it exited)."""
    sent = time.monotonic()
    c.proc.send_signal(signal.SIGTERM)
    code = c.proc.wait(EXIT_WITHIN * 4)  # TimeoutExpired fails the test
    return code, time.monotonic() - sent


def test_sigterm_stops_the_leader_at_once_and_releases_its_lease(kube, k8s_namespace, controllers) -> None:
    ns = k8s_namespace
    isvc(kube, ns, "iris-stable")
    isvc(kube, ns, "iris-candidate")
    steps = [{"setWeight": 20}, {"pause": {}}, {"setWeight": 100}]
    kube.create(MODEL_ROLLOUT, ns, rollout("iris-term", steps))
    a = controllers("a")
    wait_for("20% to the candidate", lambda: vs_weights(kube, ns) == {"stable": 80, "candidate": 20})
    b = controllers("b")
    wait_for("b waiting for the Lease", lambda: "b waiting for the Lease" in b.log.read_text(), timeout=60)
    assert _holder(kube, ns) == "a"

    code, took = _terminate(a)
    assert code == 0, a.log.read_text(errors="replace")[-3000:]
    assert took < EXIT_WITHIN, f"exited {took:.1f} s after SIGTERM"
    text = a.log.read_text(errors="replace")
    assert "Signal SIGTERM is received" in text and "Traceback" not in text, text[-3000:]
    # released on the way out (unreleased it would name "a" until it expires), so b takes it over
    # at its next attempt instead of after the Lease duration
    assert _holder(kube, ns) in (None, "b")
    wait_for("b to hold the Lease", lambda: _holder(kube, ns) == "b", timeout=LEASE_DURATION)
    send_command(kube, ns, "iris-term", "promote")
    wait_for("Promoted by b", phase_is(kube, ns, "iris-term", "Promoted"), timeout=90)
    assert status(kube, ns, "iris-term")["weights"]["candidate"] == 100


def test_sigterm_stops_a_standby_and_leaves_the_leaders_lease(kube, k8s_namespace, controllers) -> None:
    ns = k8s_namespace
    controllers("a")
    wait_for("a to hold the Lease", lambda: _holder(kube, ns) == "a", timeout=60)
    b = controllers("b")
    wait_for("b waiting for the Lease", lambda: "b waiting for the Lease" in b.log.read_text(), timeout=60)
    code, took = _terminate(b)
    assert code == 0 and took < EXIT_WITHIN, (code, took, b.log.read_text(errors="replace")[-3000:])
    assert _holder(kube, ns) == "a"


def test_the_stop_event_ends_an_embedded_controller(k8s_cluster: Any, kube, k8s_namespace) -> None:
    ns = k8s_namespace
    cfg = ControllerConfig(
        namespace=ns,
        kubeconfig=str(k8s_cluster.kubeconfig),
        interval=0.5,
        lease_namespace=ns,
        lease_name="ctl",
        lease_duration=LEASE_DURATION,
        identity="embedded",
    )
    stop, ready, failed = threading.Event(), threading.Event(), []

    def body() -> None:
        try:
            run(cfg, stop, ready)
        except BaseException as exc:  # reported by the assertion below
            failed.append(exc)

    thread = threading.Thread(target=body, name="embedded controller", daemon=True)
    thread.start()
    assert ready.wait(60), "the operator did not start"
    wait_for("the Lease", lambda: _holder(kube, ns) == "embedded", timeout=30)
    sent = time.monotonic()
    stop.set()
    thread.join(EXIT_WITHIN * 4)
    took = time.monotonic() - sent
    assert not thread.is_alive() and took < EXIT_WITHIN, f"still running {took:.1f} s after stop"
    assert failed == []
    assert _holder(kube, ns) is None
