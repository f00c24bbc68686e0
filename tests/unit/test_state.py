"""State persistence: atomic save/load, clear errors, and resuming after a crash at any point."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from rollout.engine import new_rollout, step
from rollout.errors import StateError
from rollout.model import Phase, Reason, RolloutState
from rollout.state import StateStore
from tests.unit.enginekit import ERROR_RATE, FakeEdge, make_spec, run, value

CANARY = make_spec(
    {
        "canary": {
            "steps": [
                {"setWeight": 10},
                {"pause": {"duration": "5s"}},
                {"setWeight": 30},
                {"analysis": {"intervals": 2}},
                {"setWeight": 60},
                {"pause": {"duration": "3s"}},
                {"setWeight": 100},
            ]
        }
    },
    [ERROR_RATE],
    interval="2s",
)
BLUE_GREEN = make_spec(
    {"blueGreen": {"previewDuration": "4s", "postPromotionDuration": "4s", "scaleDownDelay": "3s"}},
    [ERROR_RATE],
    interval="2s",
)


def test_state_round_trips_through_the_store(tmp_path):
    store = StateStore(tmp_path / "state" / "iris.json")
    assert store.load() is None
    state = run(CANARY, FakeEdge(), until=lambda s: s.desired_routes.candidate_weight == 30)
    store.save(state)
    loaded = store.load()
    assert loaded == state and loaded.desired_routes == state.desired_routes
    assert json.loads(store.path.read_text())["phase"] == "Progressing"
    assert [p.name for p in store.path.parent.iterdir()] == ["iris.json"]  # no temporary left behind


def test_a_directory_that_cannot_be_created_is_a_state_error(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    store = StateStore(blocker / "iris.json")
    with pytest.raises(StateError, match="cannot create state directory"):
        store.save(new_rollout(CANARY))


def test_a_corrupt_state_file_is_a_state_error_naming_the_file(tmp_path):
    store = StateStore(tmp_path / "iris.json")
    store.path.write_text('{"phase": "Sideways"}')
    with pytest.raises(StateError, match=r"iris.json is corrupt"):
        store.load()


def test_disk_full_keeps_the_old_state_intact(tmp_path):
    """A real write failure: the file-size limit (RLIMIT_FSIZE) makes write() fail with EFBIG, as
    a full disk makes it fail with ENOSPC. Run in a child so the limit does not touch pytest."""
    store = StateStore(tmp_path / "iris.json")
    old = new_rollout(CANARY)
    store.save(old)
    big = run(CANARY, FakeEdge())  # a finished rollout: a much larger document
    (tmp_path / "big.json").write_text(big.to_json())
    limit = len(old.to_json()) + 100
    assert len(big.to_json()) > limit
    child = textwrap.dedent(
        f"""
        import resource, signal, sys
        from rollout.model import RolloutState
        from rollout.state import StateStore
        from rollout.errors import StateError
        state = RolloutState.from_json(open({str(tmp_path / "big.json")!r}).read())
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
        try:
            StateStore({str(store.path)!r}).save(state)
        except StateError as exc:
            print(exc)
            sys.exit(0)
        sys.exit("saved beyond the file size limit")
        """
    )
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60, cwd=".")
    assert out.returncode == 0, out.stderr
    assert "cannot save rollout state" in out.stdout and "previous state is kept" in out.stdout
    assert store.load() == old  # the old file is intact
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # temporary removed


def reference(spec) -> tuple[FakeEdge, RolloutState]:
    edge = FakeEdge(source=value(0.01))
    return edge, run(spec, edge)


def run_with_crash(spec, store: StateStore, crash_at: int, persisted: bool) -> tuple[FakeEdge, RolloutState]:
    """The edge loop of the engine's contract, killed once at step ``crash_at``: after computing
    the transition and (if ``persisted``) saving it, before executing any of its actions. The
    world (router, backends, pending commands) survives; in-flight metric results are lost."""
    edge = FakeEdge(source=value(0.01))
    state = new_rollout(spec)
    for n in range(1, 5000):
        t = step(spec, state, edge.observe(), edge.now)
        if n == crash_at:
            if persisted and t.changed:
                store.save(t.state)
            edge.results = []  # the process died: whatever it was measuring is gone
            edge.now += 1.0
            state = store.load() or new_rollout(spec)  # a new process starts from the disk
            continue
        if t.changed:
            store.save(t.state)
        edge.execute(t)
        state = t.state
        if state.done:
            assert store.load() == state
            return edge, state
        edge.now += 1.0
    raise AssertionError("rollout did not finish")


def step_starts(state: RolloutState) -> list[str]:
    return [e.message for e in state.events if e.reason in (Reason.STEP_STARTED, Reason.SWITCHED)]


@pytest.mark.parametrize("spec", [CANARY, BLUE_GREEN], ids=["canary", "blue-green"])
def test_killing_the_process_at_any_step_resumes_with_no_double_step(tmp_path, spec):
    ref_edge, ref = reference(spec)
    assert ref.phase == Phase.PROMOTED
    n_steps = int(ref.finished_at - ref.started_at) + 1
    assert n_steps > 10
    for crash_at in range(1, n_steps + 1):
        for persisted in (False, True):
            store = StateStore(tmp_path / f"{crash_at}-{persisted}.json")
            edge, state = run_with_crash(spec, store, crash_at, persisted)
            where = f"crash at step {crash_at}, persisted={persisted}"
            assert state.phase == ref.phase, where
            assert edge.weights == ref_edge.weights, where  # same weights, in the same order, once each
            assert step_starts(state) == step_starts(ref), where  # no step started twice
            assert edge.finalized == ref_edge.finalized, where


def test_summary_shows_step_routes_metrics_and_events_as_json():
    from rollout.summary import summarize

    state = run(CANARY, FakeEdge(), until=lambda s: s.desired_routes.candidate_weight == 30)
    view = summarize(CANARY, state, events=3)
    json.dumps(view)  # JSON-ready
    assert view["phase"] == "Progressing" and view["routes"]["candidateWeight"] == 30
    assert view["routes"]["stableWeight"] == 70
    assert view["step"] == {**view["step"], "index": 2, "total": 7, "name": "setWeight 30"}
    assert view["metrics"][0]["name"] == "errors" and view["metrics"][0]["latest"] == "Successful"
    assert len(view["events"]) == 3 and view["events"][-1]["reason"] == Reason.STEP_STARTED


def test_a_reader_never_sees_half_a_state(tmp_path):
    """`rollout status` reads while the runner writes: every read is a whole state, old or new."""
    import threading

    store = StateStore(tmp_path / "iris.json")
    edge = FakeEdge()
    transitions = []
    run(CANARY, edge, transitions=transitions)
    states = [t.state for t in transitions if t.changed]
    store.save(states[0])
    stop = threading.Event()
    seen: list[int] = []
    errors: list[Exception] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.append(store.load().revision)
            except Exception as exc:  # any failure at all is the finding
                errors.append(exc)

    th = threading.Thread(target=reader)
    th.start()
    try:
        for _ in range(3):
            for s in states:
                store.save(s)
    finally:
        stop.set()
        th.join()
    assert not errors and len(seen) > 10
    assert set(seen) <= {s.revision for s in states}
