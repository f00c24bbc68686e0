"""The controller's last line of defence and its one-rollout-per-service rule (issue 19), against the
real kube-apiserver of the test harness.

- An unexpected exception inside a reconcile - injected as a router whose ``get_routes`` raises
  ``KeyError`` while a fault file exists, in a real controller process (``handlers.run`` with a
  ``router_factory``) - holds the rollout: Paused/ReconcileError, one Warning Event however many
  ticks, weights unchanged, one traceback in the log, retries backed off; the controller keeps
  running, and once the fault clears the rollout is promoted with no step started twice.
- In-process, with an injected clock: the same error again writes nothing and backs off 1, 2, 4,
  8 s; a different error is a second Event; a clean reconcile resumes. An error after the step
  was written (the router refuses ``set_routes``) holds without a Resumed/ReconcileError pair and a
  status write per retry (``Observations.edge_error``). A metric provider raising
  ``IndexError`` is a measurement in phase Error (Paused/MetricsUnavailable, then rolled back past
  ``errorLimit``), never an exception out of the reconcile.
- Two ModelRollouts on one service: the later one waits (Paused/ServiceBusy naming the other) and
  moves no traffic, deleting a waiting one leaves the routes alone, and it starts once the first
  is promoted and handed off; with ``bento-rollout.io/supersede: "true"`` it aborts the earlier one
  (stable restored) first. The routing object goes through exactly the expected states.

As in test_controller.py, no KServe/Istio runs (no pods): InferenceService readiness is written by
the test and "traffic" is the VirtualService as the API server stores it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rollout.cli.cluster import send_command
from rollout.controller.conventions import default_router
from rollout.controller.defence import HeldError
from rollout.controller.ownership import SUPERSEDE_ANNOTATION, Claim, TurnKind, turn
from rollout.controller.reconciler import Reconciler
from rollout.errors import MetricsUnavailableError, NotFoundError, PermanentError
from rollout.k8s.client import MODEL_ROLLOUT, KubeClient
from rollout.routers.base import Routes, RouteTarget, TrafficRouter
from rollout.spec import RolloutSpec
from tests.e2e import test_controller as tc
from tests.e2e.nopods import AsAsked, as_asked  # FAKE: no pod runs here to ask what it serves
from tests.e2e.test_controller import isvc, phase_is, rollout, status, vs_weights, wait_for
from tests.e2e.test_controller_strategies import RouteRecorder
from tests.kit import ManualClock

# the fixtures of test_controller.py: the CRD, an admin client, `rollout controller` processes
rollout_crd, kube, controllers = tc.rollout_crd, tc.kube, tc.controllers
ROOT = Path(__file__).resolve().parents[2]
FAULT_SECONDS = 8.0  # 16 ticks of 0.5 s


class FlakyRouter:
    """A real router whose ``get_routes`` raises ``fault`` (or KeyError while ``fault_file``
    exists): an answer nobody foresaw, injected at the edge."""

    def __init__(self, inner: TrafficRouter, fault_file: Path | None = None) -> None:
        self.inner, self.fault_file = inner, fault_file
        self.fault: Exception | None = None
        self.set_fault: Exception | None = None  # raised by set_routes: after the state was written

    def ensure(self, target: RouteTarget) -> None:
        self.inner.ensure(target)

    def set_routes(self, routes: Routes) -> None:
        if self.set_fault is not None:
            raise self.set_fault
        self.inner.set_routes(routes)

    def get_routes(self) -> Routes:
        if self.fault is not None:
            raise self.fault
        if self.fault_file is not None and self.fault_file.exists():
            raise KeyError("primary")
        return self.inner.get_routes()

    def finalize(self, target: RouteTarget) -> None:
        self.inner.finalize(target)


def faulty_controller(kubeconfig: str, namespace: str, fault_file: str) -> None:
    """The body of the controller process of the drill: ``rollout controller``'s settings, with
    routers that fail while ``fault_file`` exists."""
    from rollout.controller.handlers import ControllerConfig, run

    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s %(message)s")
    cfg = ControllerConfig(
        namespace=namespace,
        kubeconfig=kubeconfig,
        interval=0.5,
        lease_namespace=namespace,
        lease_name="ctl",
        lease_duration=4,
        identity="faulty",
    )

    def routers(spec: RolloutSpec, ns: str, client: KubeClient) -> TrafficRouter:
        return FlakyRouter(default_router(spec, ns, client), Path(fault_file))

    run(cfg, router_factory=routers, probe=as_asked)  # FAKE probe: no pod runs here


@pytest.fixture
def faulty(
    k8s_cluster: Any, k8s_namespace: str, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    """(the process, its log, the fault file) of a controller whose routers fail on demand."""
    log, fault = tmp_path / "controller-faulty.log", tmp_path / "fault"
    code = (
        "import sys; from tests.e2e.test_controller_defence import faulty_controller as f; f(*sys.argv[1:])"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(k8s_cluster.kubeconfig), k8s_namespace, str(fault)],
        stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=ROOT,
    )  # fmt: skip
    yield proc, log, fault
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")


def _reasons(st: dict[str, Any], reason: str) -> list[dict[str, Any]]:
    return [h for h in st.get("history", []) if h["reason"] == reason]


def _events(kube: KubeClient, ns: str, name: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in kube.list_events(ns, name) if e["reason"] == reason]


def _steps_started_once(st: dict[str, Any]) -> None:
    started = [h["message"] for h in _reasons(st, "StepStarted")]
    assert started and len(started) == len(set(started)), f"a step was started twice: {started}"


def _held(kube: KubeClient, ns: str, name: str, reason: str) -> dict[str, Any] | None:
    st = status(kube, ns, name)
    return st if (st.get("phase"), st.get("reason")) == ("Paused", reason) else None


# --- the last line of defence ----------------------------------------------------------------------


@pytest.mark.k8s
def test_an_unexpected_error_holds_the_rollout_with_one_event_and_it_recovers(
    kube: KubeClient, k8s_namespace: str, faulty: tuple[subprocess.Popen[bytes], Path, Path]
) -> None:
    ns, name = k8s_namespace, "iris-defence"
    proc, log, fault = faulty
    isvc(kube, ns, "iris-stable")
    isvc(kube, ns, "iris-candidate")
    steps = [{"setWeight": 20}, {"pause": {"duration": "2s"}}, {"setWeight": 60}, {"pause": {"duration": "1s"}}, {"setWeight": 100}]  # fmt: skip
    kube.create(MODEL_ROLLOUT, ns, rollout(name, steps))
    wait_for(
        "20% to the candidate", lambda: vs_weights(kube, ns) == {"stable": 80, "candidate": 20}, every=0.1
    )
    fault.touch()
    held = wait_for("Paused/ReconcileError", lambda: _held(kube, ns, name, "ReconcileError"), timeout=30)
    assert "KeyError: 'primary'" in held["message"]
    time.sleep(FAULT_SECONDS)  # many ticks, the same error every time
    st = status(kube, ns, name)
    assert (st["phase"], st["reason"], st["weights"]["candidate"]) == ("Paused", "ReconcileError", 20)
    assert vs_weights(kube, ns) == {"stable": 80, "candidate": 20}
    assert st["revision"] == held["revision"], "the same error wrote the status again"
    events = _events(kube, ns, name, "ReconcileError")
    assert [e["type"] for e in events] == ["Warning"], events
    assert proc.poll() is None, "the controller exited"
    retries = log.read_text(errors="replace").count("failed temporarily")
    assert 2 <= retries <= 6, f"{retries} retries in {FAULT_SECONDS:g} s: not backed off (1, 2, 4 s)"

    fault.unlink()
    wait_for("Promoted once the fault cleared", phase_is(kube, ns, name, "Promoted"), timeout=120)
    st = status(kube, ns, name)
    _steps_started_once(st)
    assert any("reconciles again" in h["message"] for h in _reasons(st, "Resumed")), st["history"]
    assert len(_events(kube, ns, name, "ReconcileError")) == 1
    text = log.read_text(errors="replace")
    assert text.count("Traceback") == 1 and "KeyError: 'primary'" in text, text[-3000:]
    assert proc.poll() is None


def _no_metrics(spec: RolloutSpec) -> Any:
    raise MetricsUnavailableError("no metrics in this test")


@pytest.mark.k8s
def test_the_same_error_writes_nothing_and_backs_off_and_a_clean_reconcile_resumes(
    kube: KubeClient, k8s_namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    ns, name = k8s_namespace, "iris"
    isvc(kube, ns, "iris-stable")
    isvc(kube, ns, "iris-candidate")
    kube.create(MODEL_ROLLOUT, ns, rollout(name, [{"setWeight": 20}, {"pause": {}}, {"setWeight": 100}]))
    routers: list[FlakyRouter] = []

    def factory(spec: RolloutSpec, namespace: str, client: KubeClient) -> TrafficRouter:
        routers.append(FlakyRouter(default_router(spec, namespace, client)))
        return routers[-1]

    clock = ManualClock()
    rec = Reconciler(kube, _no_metrics, router_factory=factory, clock=clock, probe=AsAsked())
    assert rec.reconcile(ns, name).desired_routes.candidate_weight == 20
    routers[-1].fault = KeyError("primary")
    delays = []
    with caplog.at_level(logging.INFO, logger="rollout.controller"):
        for _ in range(4):
            clock.now += 1
            with pytest.raises(HeldError) as held:
                rec.reconcile(ns, name)
            delays.append(held.value.delay)
            if len(delays) == 1:
                first = status(kube, ns, name)
        assert delays == [1.0, 2.0, 4.0, 8.0]
        st = status(kube, ns, name)
        assert (st["phase"], st["reason"]) == ("Paused", "ReconcileError")
        assert st["revision"] == first["revision"] and st["weights"]["candidate"] == 20
        assert len(_events(kube, ns, name, "ReconcileError")) == 1

        routers[-1].fault = IndexError("list index out of range")  # another error: another event
        with pytest.raises(HeldError) as held:
            rec.reconcile(ns, name)
        assert held.value.delay == 1.0
        assert "IndexError: list index out of range" in status(kube, ns, name)["message"]
        assert len(_events(kube, ns, name, "ReconcileError")) == 2

        routers[-1].fault = None
        state = rec.reconcile(ns, name)
    assert state is not None and state.phase.value == "Paused" and state.reason == "WaitingForPromotion"
    assert vs_weights(kube, ns) == {"stable": 80, "candidate": 20}
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert [r.exc_info[0] for r in tracebacks if r.exc_info] == [KeyError, IndexError]


@pytest.mark.k8s
def test_an_error_after_the_state_was_written_holds_without_flapping(
    kube: KubeClient, k8s_namespace: str
) -> None:
    """The error comes after the engine's step was persisted (the router refuses ``set_routes``):
    each retry steps again, but the rollout stays held - one ReconcileError, no Resumed per retry,
    no status write per retry - until a reconcile goes all the way through."""
    ns, name = k8s_namespace, "iris"
    isvc(kube, ns, "iris-stable")
    isvc(kube, ns, "iris-candidate")
    kube.create(MODEL_ROLLOUT, ns, rollout(name, [{"setWeight": 20}, {"pause": {}}, {"setWeight": 100}]))
    routers: list[FlakyRouter] = []

    def factory(spec: RolloutSpec, namespace: str, client: KubeClient) -> TrafficRouter:
        routers.append(FlakyRouter(default_router(spec, namespace, client)))
        routers[-1].set_fault = KeyError("weights")
        return routers[-1]

    clock = ManualClock()
    rec = Reconciler(kube, _no_metrics, router_factory=factory, clock=clock, probe=AsAsked())
    for _ in range(5):
        with pytest.raises(HeldError):
            rec.reconcile(ns, name)
        clock.now += 1
        if _ == 1:
            held = status(kube, ns, name)
    st = status(kube, ns, name)
    assert (st["phase"], st["reason"]) == ("Paused", "ReconcileError") and st["revision"] == held["revision"]
    assert len(_events(kube, ns, name, "ReconcileError")) == 1
    assert _reasons(st, "Resumed") == [] and vs_weights(kube, ns) == {"stable": 100, "candidate": 0}
    routers[-1].set_fault = None
    for _ in range(2):  # one reconcile goes through; the next one resumes
        state = rec.reconcile(ns, name)
    assert state is not None and (state.phase.value, state.reason) == ("Paused", "WaitingForPromotion")
    assert vs_weights(kube, ns) == {"stable": 80, "candidate": 20}
    st = status(kube, ns, name)
    assert len(_reasons(st, "ReconcileError")) == 1
    _steps_started_once(st)


@pytest.mark.k8s
def test_forbidden_by_the_charts_role_holds_the_rollout_saying_so(
    kube: KubeClient, k8s_namespace: str, k8s_cluster: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The chart's Role names its own release's InferenceServices and routing object: a
    ModelRollout of another service gets a 403 from the real API server on every reconcile. The
    rollout is held, the 403 and what to grant in its Warning Event and ``.status.history``,
    retried with a growing delay, no traceback - not a permanent error per tick in the log while
    ``.status`` stays empty. (It never started, so the engine keeps it Pending.)"""
    ns = k8s_namespace
    sa = KubeClient.from_kubeconfig(str(tc._service_account_kubeconfig(k8s_cluster, ns, tmp_path / "sa")))
    for role in ("stable", "candidate"):
        isvc(kube, ns, f"fraud-{role}")
    body = rollout("fraud", [{"setWeight": 30}, {"pause": {}}, {"setWeight": 100}], service="fraud")
    kube.create(MODEL_ROLLOUT, ns, body)
    rec = Reconciler(sa, _no_metrics, clock=ManualClock(), probe=AsAsked())
    delays = []
    with caplog.at_level(logging.INFO, logger="rollout.controller"):
        for _ in range(3):
            with pytest.raises(HeldError) as held:
                rec.reconcile(ns, "fraud")
            delays.append(held.value.delay)
    sa.close()
    assert delays == [1.0, 2.0, 4.0]
    said = [h["message"] for h in _reasons(status(kube, ns, "fraud"), "ReconcileError")]
    said += [e["message"] for e in _events(kube, ns, "fraud", "ReconcileError")]
    assert said and all("ForbiddenError: VirtualService" in m and "Role" in m for m in said), said
    assert not [r for r in caplog.records if r.exc_info], "a traceback for a 403"


class BrokenProvider:
    """A metric provider that fails in a way nobody foresaw."""

    def run_query(self, query: str) -> float:
        raise IndexError("list index out of range")

    def query_vector(self, query: str) -> dict[str, float]:
        raise IndexError("list index out of range")

    def is_online(self) -> bool:
        return True


@pytest.mark.k8s
def test_any_exception_from_a_measurement_is_a_measurement_error(
    kube: KubeClient, k8s_namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    ns, name = k8s_namespace, "iris"
    isvc(kube, ns, "iris-stable")
    isvc(kube, ns, "iris-candidate")
    analysis = {
        "interval": "1s",
        "errorLimit": 3,
        "metrics": [{"name": "error-rate", "template": "error-rate", "threshold": {"max": 0.01}}],
    }
    body = rollout(
        name, [{"setWeight": 20}, {"analysis": {"intervals": 2}}, {"setWeight": 100}], analysis=analysis
    )
    kube.create(MODEL_ROLLOUT, ns, body)
    clock = ManualClock()
    rec = Reconciler(kube, lambda spec: BrokenProvider(), clock=clock, probe=AsAsked())
    seen = []
    with caplog.at_level(logging.INFO, logger="rollout.controller"):
        for _ in range(12):
            state = rec.reconcile(ns, name)  # never raises
            assert state is not None
            seen.append((state.phase.value, state.reason))
            if state.done:
                break
            clock.now += 1.5
    assert ("Paused", "MetricsUnavailable") in seen, seen
    assert seen[-1] == ("RolledBack", "MetricsUnavailable"), seen
    st = status(kube, ns, name)
    assert st["analysis"][0]["errors"] == 4  # past errorLimit 3
    assert "IndexError: list index out of range" in st["analysis"][0]["message"]
    assert vs_weights(kube, ns) == {"stable": 100, "candidate": 0}
    assert sum(1 for r in caplog.records if r.exc_info) == 1  # one traceback for 4 failures


# --- one rollout per service -----------------------------------------------------------------------


def _claim(name: str, created: str, **kw: Any) -> Claim:
    fields: dict[str, Any] = {"uid": name, "phase": "Pending", "settled": False, "started": False}
    fields |= {"supersede": False, "invalid": False, "finished_at": 0.0} | kw
    return Claim(name=name, created=created, **fields)


def test_ownership_rules() -> None:
    a = _claim("a", "2026-01-01T00:00:00Z", phase="Paused", started=True)
    b = _claim("b", "2026-01-01T00:00:01Z")
    assert turn(a, [b], "iris").kind == TurnKind.OWN
    assert (turn(b, [a], "iris").kind, turn(b, [a], "iris").other) == (TurnKind.WAIT, "a")
    # the same second: the started one keeps the service, whatever the names say
    z = _claim("z", "2026-01-01T00:00:00Z", phase="Progressing", started=True)
    y = _claim("y", "2026-01-01T00:00:00Z")
    assert turn(y, [z], "iris").kind == TurnKind.WAIT and turn(z, [y], "iris").kind == TurnKind.OWN
    # a superseding rollout waits for the earlier one, which aborts itself
    s = _claim("s", "2026-01-01T00:00:02Z", supersede=True)
    assert turn(s, [a, b], "iris").kind == TurnKind.WAIT
    assert turn(a, [b, s], "iris").kind == TurnKind.SUPERSEDED and turn(b, [a, s], "iris").other == "s"
    done_a = _claim("a", a.created, phase="Aborted", settled=True, finished_at=5.0)
    done_b = _claim("b", b.created, phase="Aborted", settled=True, finished_at=6.0)
    assert turn(s, [done_a, done_b], "iris").kind == TurnKind.OWN
    # a settled rollout is quiet once the service has moved on; the latest to finish has the word
    assert turn(done_a, [s], "iris").kind == TurnKind.QUIET
    assert turn(done_a, [done_b], "iris").kind == TurnKind.QUIET
    assert turn(done_b, [done_a], "iris").kind == TurnKind.OWN
    assert turn(b, [_claim("x", "2025-01-01T00:00:00Z", invalid=True)], "iris").kind == TurnKind.OWN


@pytest.mark.k8s
def test_a_spec_the_engine_cannot_start_is_invalid_and_holds_no_service(
    kube: KubeClient, k8s_namespace: str
) -> None:
    """A metric naming an unknown template passes the CRD but no judge can take it: the rollout is
    Invalid, saying why, before anything moves - not an error per tick with an empty status that
    the next rollout of the service waits behind (ServiceBusy) for ever."""
    ns = k8s_namespace
    _two_isvcs(kube, ns)
    analysis = {"metrics": [{"name": "x", "template": "nope", "threshold": {"max": 1}}]}
    kube.create(
        MODEL_ROLLOUT, ns, rollout("iris-bad", [{"setWeight": 10}, {"analysis": {}}], analysis=analysis)
    )
    kube.create(MODEL_ROLLOUT, ns, _next("iris-next", [{"setWeight": 30}, {"pause": {}}]))
    rec = Reconciler(kube, _no_metrics, clock=ManualClock(), probe=AsAsked())
    with pytest.raises(PermanentError, match="unknown template 'nope'"):
        rec.reconcile(ns, "iris-bad")
    bad = status(kube, ns, "iris-bad")
    assert (bad["phase"], bad["reason"]) == ("Invalid", "InvalidSpec") and "nope" in bad["message"], bad
    state = rec.reconcile(ns, "iris-next")
    assert state is not None and state.reason == "WaitingForPromotion", state
    assert vs_weights(kube, ns) == {"stable": 70, "candidate": 30}


def _two_isvcs(kube: KubeClient, ns: str) -> None:
    isvc(kube, ns, "iris-stable")
    isvc(kube, ns, "iris-candidate")


def _next(name: str, steps: list[dict[str, Any]], supersede: bool = False) -> dict[str, Any]:
    """A second rollout of service iris: v2 -> v3."""
    body = rollout(name, steps, stable={"model": "iris:v2"}, candidate={"model": "iris:v3"})
    if supersede:
        body["metadata"]["annotations"] = {SUPERSEDE_ANNOTATION: "true"}
    return body


def _gone(kube: KubeClient, ns: str, name: str) -> bool:
    try:
        kube.get(MODEL_ROLLOUT, ns, name)
    except NotFoundError:
        return True
    return False


@pytest.mark.k8s
def test_a_second_rollout_of_a_service_waits_for_the_first(kube, k8s_namespace, controllers) -> None:
    ns = k8s_namespace
    _two_isvcs(kube, ns)
    recorder = RouteRecorder(kube, ns)
    try:
        kube.create(
            MODEL_ROLLOUT, ns, rollout("iris-a", [{"setWeight": 20}, {"pause": {}}, {"setWeight": 100}])
        )
        controllers("a")
        wait_for("a waiting for promotion at 20%", lambda: _held(kube, ns, "iris-a", "WaitingForPromotion"))
        kube.create(
            MODEL_ROLLOUT,
            ns,
            _next("iris-b", [{"setWeight": 50}, {"pause": {"duration": "1s"}}, {"setWeight": 100}]),
        )
        kube.create(MODEL_ROLLOUT, ns, _next("iris-c", [{"setWeight": 50}, {"setWeight": 100}]))
        b = wait_for("b held", lambda: _held(kube, ns, "iris-b", "ServiceBusy"))
        assert "ModelRollout iris-a" in b["message"] and b["waitingFor"] == "iris-a"
        conditions = {c["type"]: (c["status"], c["reason"]) for c in b["conditions"]}
        assert conditions["Paused"] == ("True", "ServiceBusy")
        wait_for("c held", lambda: _held(kube, ns, "iris-c", "ServiceBusy"))
        kube.delete(MODEL_ROLLOUT, ns, "iris-c")  # a waiting rollout's finalizer leaves the routes alone
        wait_for("c gone", lambda: _gone(kube, ns, "iris-c"), timeout=60)
        time.sleep(2)  # several ticks
        assert vs_weights(kube, ns) == {"stable": 80, "candidate": 20}
        assert _held(kube, ns, "iris-b", "ServiceBusy") is not None
        assert len(_events(kube, ns, "iris-b", "ServiceBusy")) == 1

        send_command(kube, ns, "iris-a", "promote")
        wait_for("a promoted", phase_is(kube, ns, "iris-a", "Promoted"), timeout=120)
        wait_for("b promoted", phase_is(kube, ns, "iris-b", "Promoted"), timeout=180)
        wait_for(
            "b handed off", lambda: status(kube, ns, "iris-b").get("handoff", {}).get("phase") == "Complete"
        )
        time.sleep(2)  # a, settled before b, stays quiet: it does not undo b's routes
    finally:
        recorder.stop()
    assert recorder.seen["iris"] == [
        (100, 0, 0, False),
        (80, 20, 0, False),  # a
        (0, 100, 0, False),
        (100, 0, 0, False),  # a handed off to stable
        (50, 50, 0, False),  # b
        (0, 100, 0, False),
        (100, 0, 0, False),  # b handed off to stable
    ]
    a, b = status(kube, ns, "iris-a"), status(kube, ns, "iris-b")
    assert a["phase"] == "Promoted" and b["phase"] == "Promoted"
    assert [h["reason"] for h in b["history"]][0] == "RolloutStarted"
    _steps_started_once(b)


@pytest.mark.k8s
def test_a_superseding_rollout_aborts_the_earlier_one_first(kube, k8s_namespace, controllers) -> None:
    ns = k8s_namespace
    _two_isvcs(kube, ns)
    recorder = RouteRecorder(kube, ns)
    try:
        kube.create(
            MODEL_ROLLOUT, ns, rollout("iris-a", [{"setWeight": 30}, {"pause": {}}, {"setWeight": 100}])
        )
        controllers("a")
        wait_for("a waiting for promotion at 30%", lambda: _held(kube, ns, "iris-a", "WaitingForPromotion"))
        steps = [{"setWeight": 50}, {"pause": {"duration": "1s"}}, {"setWeight": 100}]
        kube.create(MODEL_ROLLOUT, ns, _next("iris-b", steps, supersede=True))
        wait_for("a aborted", phase_is(kube, ns, "iris-a", "Aborted"), timeout=60)
        wait_for("b promoted", phase_is(kube, ns, "iris-b", "Promoted"), timeout=180)
        wait_for("b handed off", lambda: vs_weights(kube, ns) == {"stable": 100, "candidate": 0})
        time.sleep(2)
    finally:
        recorder.stop()
    assert recorder.seen["iris"] == [
        (100, 0, 0, False),
        (70, 30, 0, False),  # a
        (100, 0, 0, False),  # a aborted: stable restored before b moved anything
        (50, 50, 0, False),  # b
        (0, 100, 0, False),
        (100, 0, 0, False),  # b handed off to stable
    ]
    a = status(kube, ns, "iris-a")
    assert a["reason"] == "Aborted" and "superseded by ModelRollout iris-b" in a["message"]
    b = status(kube, ns, "iris-b")
    assert b["state"]["started_at"] >= a["state"]["finished_at"], "b started before a was aborted"
    # b may have seen a abort before its first write; if it wrote anything first, it was the wait
    busy = _events(kube, ns, "iris-b", "ServiceBusy")
    assert len(busy) <= 1 and all("superseding ModelRollout iris-a" in e["message"] for e in busy), busy
    _steps_started_once(b)
