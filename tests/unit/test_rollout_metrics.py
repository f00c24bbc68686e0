"""The rollout_* series from rollout states (rollout/exporter.py): names, labels and values
as Prometheus reads them, for states the real engine produced (tests/unit/enginekit.py)."""

from __future__ import annotations

import re
import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rollout.actions import CommandKind
from rollout.errors import UsageError
from rollout.exporter import ROLLBACK_REASONS, MetricsServer, RolloutCollector, last_transition
from rollout.k8s import alerts
from rollout.metrics import names as n
from rollout.model import Phase, RolloutState
from tests.unit.enginekit import ERROR_RATE, FakeEdge, make_spec, run, value

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

CANARY = {"canary": {"steps": [{"setWeight": 30}, {"pause": {}}, {"setWeight": 100}]}}
ANALYSED = {"canary": {"steps": [{"setWeight": 30}, {"analysis": {"intervals": 3}}, {"setWeight": 100}]}}


def samples(text: str) -> Samples:
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value_of(got: Samples, name: str, **labels: str) -> float:
    matches = [v for (nm, ls), v in got.items() if nm == name and set(labels.items()) <= ls]
    assert len(matches) == 1, f"{len(matches)} series of {name} with {labels}"
    return matches[0]


def exported(state: RolloutState, rollout: str = "iris-canary", namespace: str = "") -> Samples:
    c = RolloutCollector()
    c.update(rollout, state, namespace)
    return samples(c.exposition())


def paused_canary() -> RolloutState:
    spec = make_spec(CANARY)
    return run(spec, FakeEdge(), until=lambda s: s.phase == Phase.PAUSED)


def test_a_rollout_in_flight_exports_phase_weight_versions_and_zero_rollbacks() -> None:
    state = paused_canary()
    got = exported(state)
    assert value_of(got, n.ROLLOUT_PHASE, rollout="iris-canary", service="iris", phase="Paused") == 1
    others = [v for (nm, ls), v in got.items() if nm == n.ROLLOUT_PHASE and ("phase", "Paused") not in ls]
    assert len(others) == len(Phase) - 1 and set(others) == {0.0}
    assert value_of(got, n.ROLLOUT_CANDIDATE_WEIGHT, rollout="iris-canary") == 30
    # every rollback reason exists at 0 before the first rollback, so increase() sees it
    for reason in ROLLBACK_REASONS:
        assert value_of(got, n.ROLLOUT_ROLLBACKS_TOTAL, rollout="iris-canary", reason=reason) == 0
    assert value_of(got, n.ROLLOUT_VERSION_INFO, model="iris", version="v1", role="stable") == 1
    assert value_of(got, n.ROLLOUT_VERSION_INFO, model="iris", version="v2", role="candidate") == 1
    waiting = [e.at for e in state.events if e.reason == "WaitingForPromotion"]
    assert waiting and value_of(got, n.ROLLOUT_LAST_TRANSITION, rollout="iris-canary") == waiting[-1]


def test_the_counter_counts_the_rollback_under_its_reason_and_gauges_follow() -> None:
    spec = make_spec(ANALYSED, [ERROR_RATE], interval="1s")
    collector = RolloutCollector()
    edge = FakeEdge(source=value(0.01))
    during = run(spec, edge, until=lambda s: s.desired_routes.candidate_weight == 30)
    collector.update("iris-canary", during, "models")
    before = samples(collector.exposition())
    assert value_of(before, n.ROLLOUT_ROLLBACKS_TOTAL, reason="AnalysisFailed") == 0

    edge.source = value(0.5)  # the candidate starts failing: analysis rolls back
    after_state = run(spec, edge, during)
    assert after_state.phase == Phase.ROLLED_BACK and after_state.reason == "AnalysisFailed"
    collector.update("iris-canary", after_state, "models")
    after = samples(collector.exposition())
    assert value_of(after, n.ROLLOUT_ROLLBACKS_TOTAL, reason="AnalysisFailed", namespace="models") == 1
    assert {
        v
        for (nm, ls), v in after.items()
        if nm == n.ROLLOUT_ROLLBACKS_TOTAL and ("reason", "AnalysisFailed") not in ls
    } == {0.0}
    assert value_of(after, n.ROLLOUT_PHASE, phase="RolledBack") == 1
    assert value_of(after, n.ROLLOUT_PHASE, phase="Progressing") == 0
    assert value_of(after, n.ROLLOUT_CANDIDATE_WEIGHT) == 0
    # the candidate stopped: only stable serves the rollout
    info = [dict(ls) for (nm, ls), _ in after.items() if nm == n.ROLLOUT_VERSION_INFO]
    assert [(i["version"], i["role"]) for i in info] == [("v1", "stable")]
    assert value_of(after, n.ROLLOUT_LAST_TRANSITION) == after_state.finished_at
    # a finished rollout keeps its values on every later scrape
    assert samples(collector.exposition()) == after


def test_an_abort_is_a_manual_rollback() -> None:
    spec = make_spec(CANARY)
    edge = FakeEdge()
    state = run(spec, edge, until=lambda s: s.phase == Phase.PAUSED)
    edge.command(CommandKind.ABORT)
    state = run(spec, edge, state)
    got = exported(state)
    assert value_of(got, n.ROLLOUT_ROLLBACKS_TOTAL, reason="Aborted") == 1
    assert value_of(got, n.ROLLOUT_PHASE, phase="Aborted") == 1


def test_a_promoted_rollout_has_the_candidate_as_stable_and_no_rollback() -> None:
    spec = make_spec(CANARY)
    edge = FakeEdge()
    state = run(spec, edge, until=lambda s: s.phase == Phase.PAUSED)
    edge.command(CommandKind.PROMOTE)
    state = run(spec, edge, state)
    assert state.phase == Phase.PROMOTED
    got = exported(state)
    assert value_of(got, n.ROLLOUT_CANDIDATE_WEIGHT) == 100
    info = [dict(ls) for (nm, ls), _ in got.items() if nm == n.ROLLOUT_VERSION_INFO]
    assert [(i["version"], i["role"]) for i in info] == [("v2", "stable")]
    assert {v for (nm, _), v in got.items() if nm == n.ROLLOUT_ROLLBACKS_TOTAL} == {0.0}


def test_measurements_do_not_move_the_last_transition() -> None:
    spec = make_spec(ANALYSED, [ERROR_RATE], interval="1s")
    edge = FakeEdge(source=value(0.01))
    state = run(spec, edge, until=lambda s: any(m.count >= 1 for m in s.metrics.values()))
    at = last_transition(state)
    later = run(spec, edge, state, until=lambda s: any(m.count >= 2 for m in s.metrics.values()))
    assert later.revision > state.revision and later.updated_at > at  # the state changed ...
    assert last_transition(later) == at  # ... but neither the step nor the phase did


def test_same_name_in_two_namespaces_gives_two_series_and_remove_drops_them() -> None:
    c = RolloutCollector()
    state = paused_canary()
    c.update("iris", state, "team-a")
    c.update("iris", state, "team-b")
    got = samples(c.exposition())
    assert {dict(ls)["namespace"] for (nm, ls), _ in got.items() if nm == n.ROLLOUT_CANDIDATE_WEIGHT} == {
        "team-a",
        "team-b",
    }
    c.remove("iris", "team-a")
    c.remove("iris", "team-b")
    assert not [k for k in samples(c.exposition()) if k[0].startswith("rollout_")]


def test_alert_rules_only_use_rollout_series_the_exporter_produces() -> None:
    got = {nm for nm, _ in exported(paused_canary())}
    used = {
        name
        for rule in alerts.alerting_rules()
        for name in re.findall(r"\b(rollout_[a-z_]+)\b", rule["expr"])
    }
    assert used, "the alerts no longer use rollout_* series: update this test"
    assert used <= got, f"alerts use series nothing exports: {used - got}"
    contract = {getattr(n, a) for a in dir(n) if a.startswith("ROLLOUT_")}
    assert contract <= got | {n.ROLLOUT_ROLLBACKS_TOTAL}, contract - got
    assert n.ROLLOUT_ROLLBACKS_TOTAL in got


def test_the_server_answers_on_loopback_and_refuses_a_taken_port() -> None:
    c = RolloutCollector()
    c.update("iris-canary", paused_canary())
    with MetricsServer(c, "127.0.0.1", 0) as server:
        port = server.port
        body = urllib.request.urlopen(f"http://{server.address}/metrics", timeout=10).read().decode()
        assert value_of(samples(body), n.ROLLOUT_CANDIDATE_WEIGHT) == 30
        assert server.wait_scraped(0.0, timeout=1)
        with pytest.raises(UsageError, match="choose another --metrics-port"):
            MetricsServer(c, "127.0.0.1", server.port).start()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
