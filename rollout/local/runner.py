"""The local runner: the edge loop that drives the pure engine against the embedded data plane.

``LocalRunner(rollout, stack).run()`` repeats, about twice a second: gather observations
(candidate health, the routes nginx really applies, the results of last step's measurements,
user commands), call ``rollout.engine.step``, persist the new state atomically, then execute the
actions (start the candidate, set routes, measure, finalize). Persist-then-act and level-based
actions make it crash-safe: ``kill -9`` at any point and ``rollout run`` again resumes where it
was, with no step applied twice.

One process drives a rollout at a time: ``run`` holds ``run.lock`` (rollout/local/lock.py) and
a second driver is refused (RolloutBusyError naming the holder's pid).
The last line of defence: an unexpected exception inside one iteration (a bug in a judge, an
answer nobody foresaw) does not end the run. The rollout holds (``engine.hold_on_error``: phase
Paused, reason ReconcileError, one Warning event per distinct error), the error is logged once
(logger ``rollout.local``: a bug with its traceback, our own errors, which say what failed, as one
line), and the loop retries after a back-off (1 s doubling to 30 s); the next clean step makes
it progress again. Only a StateError ends the run: the state cannot be written or does not match
the spec (acting on a state that is not kept would break persist-then-act), or the stack is gone
(``rollout down``: the run would hold for ever on an nginx that is not there). A metric provider's failure of any kind is a measurement in phase Error.
Files under ``<home>/rollouts/<name>/``: ``state.json`` (the engine state), ``rollout.json``
(the ModelRollout being run, so that ``rollout abort`` can end it without the spec file),
``run.lock``, ``commands/`` (user commands written by ``rollout promote|abort|pause|resume``, one
JSON file each, removed once the engine lists their id as applied; rollout/local/commands.py),
``timeline.jsonl`` (one line per change: weights, phase, new measurements; the demo plots it).
While it runs, the runner serves its rollout's rollout_* series (rollout/local/telemetry.py).
Each turn it also reports stable's readiness (the engine holds, StableUnavailable, while stable
does not answer) and what the stack's watchdog restarted (rollout/local/watchdog.py: notices in
the rollout's history; the candidate dying is CandidateFailed, even when it was restarted).
Who calls it: ``rollout run`` (rollout/cli/local.py), rollout/local/control.py, the demo.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rollout.actions import EnsureBackend, Finalize, Measure, MetricResult, Observations, SetRoutes
from rollout.engine import hold_on_error, is_rollout_of, new_rollout, step
from rollout.errors import NotFoundError, RolloutError, StateError, UsageError
from rollout.exporter import MetricsServer, RolloutCollector
from rollout.local.bento import pin_problem
from rollout.local.commands import CommandQueue
from rollout.local.lock import RunLock
from rollout.local.processes import http_ok
from rollout.local.stack import LocalStack, default_home
from rollout.local.telemetry import Telemetry, append_timeline
from rollout.local.watchdog import events_offset, read_events
from rollout.metrics.sampler import SampleContext, collect
from rollout.model import Event, RolloutState
from rollout.routers.base import Backend, Routes, RouteTarget
from rollout.spec import ModelRollout
from rollout.state import StateStore, save_text

__all__ = ["CommandQueue", "LocalRunner", "rollout_dir", "version_of"]

log = logging.getLogger("rollout.local")
TICK_SECONDS = 0.5
ERROR_BACKOFF = 1.0  # seconds before the first retry after an unexpected error; doubles ...
MAX_ERROR_BACKOFF = 30.0  # ... up to this


def rollout_dir(name: str, home: Path | None = None) -> Path:
    return (home or default_home()) / "rollouts" / name


def version_of(tag: str) -> str:
    return tag.partition(":")[2] or tag


class LocalRunner:
    """Runs one ModelRollout on a LocalStack until it is promoted, rolled back or aborted."""

    def __init__(
        self,
        rollout: ModelRollout,
        stack: LocalStack,
        *,
        home: Path | None = None,
        tick: float = TICK_SECONDS,
        clock: Callable[[], float] = time.time,
        on_step: Callable[[RolloutState], None] | None = None,
        workers: int = 1,
        error_backoff: float = ERROR_BACKOFF,
    ) -> None:
        self.rollout = rollout
        self.spec = rollout.spec
        self.stack = stack
        self.home = home or stack.home
        self.dir = rollout_dir(rollout.metadata.name, self.home)
        self.store = StateStore(self.dir / "state.json")
        self.replaced: RolloutState | None = None  # a saved rollout of another candidate, started over
        self.commands = CommandQueue(self.dir / "commands")
        self.lock = RunLock(self.dir / "run.lock", rollout.metadata.name)
        self.tick = tick
        self.error_backoff = error_backoff
        self.clock = clock
        self.on_step = on_step
        self.workers = workers
        self.router = stack.router(self.spec.service)
        self.provider = stack.metrics()
        self._metrics = {m.name: m for m in self.spec.analysis.metrics}
        self._results: list[MetricResult] = []
        self._starting: threading.Thread | None = None
        self._start_error: str | None = None
        self._candidate_was_ready = False
        self._stop = threading.Event()
        self._logged: set[str] = set()  # errors whose traceback is logged already
        self._spec_kept = False  # rollout.json written
        self._saved: RolloutState | None = None  # the newest state saved by the loop
        self._edge_error: str | None = None  # the last iteration failed (until one goes through)
        self._events_at = events_offset(stack.home)  # the watchdog's events seen so far
        self.exporter = RolloutCollector()
        self.telemetry = Telemetry(stack, rollout.metadata.name, self.exporter)

    # --- backends --------------------------------------------------------------------------------

    def _backend(self, tag: str, running: bool = True) -> Backend | None:
        """The backend of the service serving version ``tag`` (with ``running``: only while its
        process runs; the watchdog may be restarting it)."""
        want = version_of(tag)
        for name, b in self.stack.backends(self.spec.service).items():
            info = self.stack.state["backends"].get(name, {})
            if b.version == want and (
                not running or not info.get("pid") or self.stack.status()["backends"][name].get("running")
            ):
                return b
        return None

    def _stable_ready(self) -> bool:
        stable = self._backend(self.spec.stable.model)
        return stable is not None and http_ok(f"http://{stable.address}/v2/health/ready", 0.5)()

    def _notices(self) -> tuple[tuple[str, ...], str | None]:
        """What the stack's watchdog restarted since the last look: notices for the rollout's
        history, and the candidate's error when it was the candidate that died."""
        events, self._events_at = read_events(self.stack.home, self._events_at)
        notices, error = [], None
        for e in events:
            if e.get("service") not in (None, self.spec.service):
                continue
            notices.append(f"watchdog: {e.get('message', e)}")
            if e.get("component", "").startswith("backend:") and e.get("version") == version_of(
                self.spec.candidate.model
            ):
                error = f"candidate server {self.spec.candidate.model} died: {e.get('message')}"
        return tuple(notices), error

    def ensure_stable(self) -> Backend:
        """The stable version must be serving the service before anything else happens."""
        stable = self._backend(self.spec.stable.model)
        current = self.router.get_backends() if self._has_routes() else {}
        if current.get("stable") not in (None, stable.address if stable else None):
            # refused before a server is started for it: users are served by another version
            serving = [
                b for b in self.stack.backends(self.spec.service).values() if b.address == current["stable"]
            ]
            what = serving[0].version if serving else current["stable"]
            raise UsageError(
                f"service {self.spec.service!r} is served by version {what}, not by the spec's stable "
                f"{self.spec.stable.model}; roll out from the version that serves now"
            )
        if stable is None:
            stable = self.stack.start_bento(
                self.spec.service,
                self.spec.stable.model,
                workers=self.workers,
                digest=self.spec.stable.digest,
            )
        else:
            self._check_stable_pin(stable)
        if not current.get("stable"):
            self.router.ensure(RouteTarget(self.spec.service, stable))
        return stable

    def check_pins(self) -> None:
        """Before the rollout starts (rollout.local.control.begin): StateError when a stable server
        that already runs does not serve the artifact the spec pins (one it was not started for)."""
        stable = self._backend(self.spec.stable.model)
        if stable is not None:
            self._check_stable_pin(stable)

    def _check_stable_pin(self, stable: Backend) -> None:
        if problem := self._pin_problem(stable, self.spec.stable.model, self.spec.stable.digest):
            raise StateError(
                f"the spec pins stable.digest, but the stable server {problem}; `rollout down`, then "
                f"`rollout up --model {self.spec.stable.model} --digest {self.spec.stable.digest}`"
            )

    def _pin_problem(self, backend: Backend, tag: str, pinned: str | None) -> str | None:
        started_with = self.stack.state["backends"].get(backend.name, {}).get("env", {})
        return pin_problem(backend.address, tag, started_with, pinned)

    def _has_routes(self) -> bool:
        try:
            self.router.get_routes()
            return True
        except RolloutError:
            return False

    def _ensure_candidate(self) -> tuple[bool | None, str | None]:
        """Start the candidate in the background if needed; report (ready, error)."""
        if self._start_error:
            return False, self._start_error
        cand = self._backend(self.spec.candidate.model)
        if cand is None:
            if self._candidate_was_ready:
                return False, f"candidate server {self.spec.candidate.model} exited"
            if self._starting is None or not self._starting.is_alive():
                self._starting = threading.Thread(target=self._start_candidate, daemon=True)
                self._starting.start()
            return False, None
        # scraped once is enough: asking Prometheus every tick would block the loop while it hangs
        ready = http_ok(f"http://{cand.address}/v2/health/ready")() and (
            self._candidate_was_ready or self._scraped(cand)
        )
        if ready and not self._candidate_was_ready and self._starting is None:  # ran before this rollout
            if problem := self._pin_problem(cand, self.spec.candidate.model, self.spec.candidate.digest):
                self._start_error = f"the spec pins candidate.digest, but the candidate server {problem}"
                return False, self._start_error
        if ready:
            if not self._candidate_was_ready:
                stable = self._backend(self.spec.stable.model)
                if stable is None:
                    return False, f"stable server {self.spec.stable.model} is not running"
                self.router.ensure(RouteTarget(self.spec.service, stable, cand))
            self._candidate_was_ready = True
        return ready, None

    def _scraped(self, backend: Backend) -> bool:
        """Prometheus has scraped the backend at least once, so that the counters it starts at 0
        are seen at 0 before traffic arrives (else ``increase()`` misses the first requests).
        When Prometheus is away the analysis holds the rollout anyway: do not block on it here."""
        try:
            return bool(self.provider.query_vector(f'up{{backend="{backend.name}"}} == 1'))
        except RolloutError:
            return True

    def _start_candidate(self) -> None:
        try:
            self.stack.start_bento(
                self.spec.service,
                self.spec.candidate.model,
                workers=self.workers,
                digest=self.spec.candidate.digest,
            )
        except RolloutError as exc:
            self._start_error = f"candidate {self.spec.candidate.model} failed to start: {exc}"

    # --- the loop --------------------------------------------------------------------------------

    def observe(self, state: RolloutState) -> Observations:
        # the stack's state as recorded now: the watchdog (another process) may have restarted a server
        if self.stack.reload() is None:
            raise StateError(
                f"the local stack under {self.stack.home} is gone (`rollout down`) while rollout "
                f"{self.rollout.metadata.name} ran; its state is kept ({state.phase.value}): `rollout up`, "
                "then `rollout run SPEC` resumes it"
            )
        notices, died = self._notices()
        ready, error, stable_ready = None, None, None
        if not state.done:
            ready, error = self._ensure_candidate()
            error = error or died
            stable_ready = self._stable_ready()
        results, self._results = tuple(self._results), []
        return Observations(
            candidate_ready=ready,
            candidate_error=error,
            stable_ready=stable_ready,
            routes=self._routes(),
            metrics=results,
            commands=self.commands.pending(),
            notices=notices,
            edge_error=self._edge_error,
        )

    def execute(self, state: RolloutState, actions: tuple[Any, ...], now: float) -> None:
        for action in actions:
            if isinstance(action, SetRoutes):
                if self.router.get_routes() != action.routes:
                    self.router.set_routes(action.routes)
            elif isinstance(action, Measure):
                self._results.append(self.measure(state, action, now))
            elif isinstance(action, Finalize):
                self.finalize(action)
            elif isinstance(action, EnsureBackend):
                pass  # done while observing: readiness is an observation
            # KeepWarm: the old version only stops at Finalize, which comes after the delay

    def measure(self, state: RolloutState, action: Measure, now: float) -> MetricResult:
        metric = self._metrics[action.metric]
        elapsed = now - state.analysis_started_at if state.analysis_started_at else None
        ctx = SampleContext(self.spec.service, state.stable, state.candidate, action.window, elapsed)
        t0 = time.monotonic()
        try:
            sample = collect(metric, self.provider, ctx)
        except Exception as exc:  # any failure is a measurement in phase Error, never a dead loop
            if not isinstance(exc, RolloutError):  # a bug, not an unreachable provider
                self._log_once(
                    f"measuring {action.metric} failed (a measurement in Error): {describe(exc)}", exc
                )
            return MetricResult(action.metric, at=now, error=describe(exc), elapsed=time.monotonic() - t0)
        return MetricResult(action.metric, at=now, sample=sample, elapsed=time.monotonic() - t0)

    def finalize(self, action: Finalize) -> list[str]:
        """Make the end true (routes, the version that stops); returns what it did, in words."""
        # stable even while it is being restarted: all traffic goes back to its address
        stable = self._backend(self.spec.stable.model, running=action.promoted)
        cand = self._backend(self.spec.candidate.model)
        keep, stop = (cand, stable) if action.promoted else (stable, cand)
        did = []
        if keep is not None:
            self.router.finalize(RouteTarget(self.spec.service, keep))
            did.append(f"all traffic of {self.spec.service} to {keep.version} ({keep.address})")
        elif action.promoted:
            raise NotFoundError(
                f"cannot promote: candidate server {self.spec.candidate.model} is not running"
            )
        if stop is not None and stop is not keep:
            self.stack.stop_backend(stop.name)
            did.append(f"stopped {stop.name} ({stop.version})")
        return did

    def _routes(self) -> Routes | None:
        try:
            return self.router.get_routes()
        except RolloutError:
            return None

    def request_stop(self) -> None:
        self._stop.set()

    def claim(self) -> None:
        """Become the rollout's one driver: take its run lock (RolloutBusyError naming the live
        holder). ``run`` claims by itself when it was not done before."""
        self.lock.acquire()

    def start_state(self) -> RolloutState:
        """The saved state, or a new one (saved) when the rollout has not started or the saved one
        is of another candidate or strategy (kept in ``replaced``, as the cluster's controller
        starts a new rollout when the spec names a new candidate)."""
        state = self.store.load()
        if state is not None and not is_rollout_of(state, self.spec):
            self.replaced, state = state, None
        if state is None:
            state = new_rollout(self.spec)
            self.store.save(state)
        return state

    def run(self, timeout: float | None = None) -> RolloutState:
        """Drive the rollout to its end (or until ``timeout`` seconds / ``request_stop``)."""
        claimed = not self.lock.held
        if claimed:
            self.claim()
        try:
            state = self.start_state()
            self.exporter.update(self.rollout.metadata.name, state)
            self._serve_metrics()
            try:
                return self._loop(state, timeout)
            finally:
                self._stop_metrics()
        finally:
            if claimed:
                self.lock.release()

    def _loop(self, state: RolloutState, timeout: float | None) -> RolloutState:
        if not state.done:
            self.ensure_stable()
        deadline = None if timeout is None else time.monotonic() + timeout
        backoff = self.error_backoff
        while True:
            now = self.clock()
            finished, self._saved = False, state
            try:
                state, actions = self._iterate(state, now)
                self._edge_error = None  # an iteration went through
                finished = state.done and not any(isinstance(a, Measure) for a in actions)
                wait, backoff = self.tick, self.error_backoff
            except StateError:
                raise  # the state cannot be kept or does not fit the spec: acting on would be blind
            except Exception as exc:  # the last line of defence: hold, say it once, retry later
                state = self._hold(self._saved or state, exc, now)  # the newest saved: a step is never undone
                wait, backoff = backoff, min(backoff * 2, MAX_ERROR_BACKOFF)
            if self.on_step is not None:
                self.on_step(state)
            if finished or self._stop.is_set() or (deadline is not None and time.monotonic() > deadline):
                return state
            self._stop.wait(wait)

    def _iterate(self, state: RolloutState, now: float) -> tuple[RolloutState, tuple[Any, ...]]:
        """One turn of the edge contract: observe, step, persist, act. Returns the new state and
        the actions executed."""
        t = step(self.spec, state, self.observe(state), now)
        if not self._spec_kept:  # the engine took the spec for this state: keep it beside it
            body = self.rollout.model_dump_json(by_alias=True, exclude_none=True)
            save_text(self.dir / "rollout.json", body)
            self._spec_kept = True
        if t.changed:
            self.store.save(t.state)  # persist first ...
            self._saved = t.state
            self._timeline(t.state, now)
        self.execute(t.state, t.actions, now)  # ... then act
        self.exporter.update(self.rollout.metadata.name, t.state)
        self.commands.drop(t.state.applied_commands)
        return t.state, t.actions

    def _hold(self, state: RolloutState, exc: Exception, now: float) -> RolloutState:
        """An iteration failed unexpectedly: the rollout holds (persisted), the error is logged once."""
        message = self._edge_error = describe(exc)
        self._log_once(f"holding on an unexpected error, retrying: {message}", exc)
        t = hold_on_error(state, message, now)
        if t.changed:
            self.store.save(t.state)
            self._timeline(t.state, now)
        self.exporter.update(self.rollout.metadata.name, t.state)
        return t.state

    def _log_once(self, message: str, exc: BaseException) -> None:
        """Log ``message`` once; with the traceback only for a bug (our own errors say it all:
        a 60-line httpx traceback under "nginx admin API ... is unreachable" tells nobody more)."""
        if message in self._logged:
            return
        if len(self._logged) > 100:
            self._logged.clear()
        self._logged.add(message)
        trace = None if isinstance(exc, RolloutError) else exc
        log.error("rollout %s: %s", self.rollout.metadata.name, message, exc_info=trace)

    def apply_commands(self) -> tuple[RolloutState, tuple[Event, ...], list[str]]:
        """One step outside the loop, for a rollout that no process drives (``rollout abort``):
        apply the queued commands, persist, and execute the Finalize if the rollout has ended.
        Returns the state, the step's events and what was done. Hold the lock (``claim``) first."""
        state = self.start_state()
        now = self.clock()
        t = step(self.spec, state, Observations(routes=self._routes(), commands=self.commands.pending()), now)
        if t.changed:
            self.store.save(t.state)  # persist first ...
            self._timeline(t.state, now)
        did = [line for a in t.actions if isinstance(a, Finalize) for line in self.finalize(a)]
        self.commands.drop(t.state.applied_commands)
        self.stack.prometheus.remove_target(self.metrics_target)  # left by a killed `rollout run`
        return t.state, t.events, did

    # --- the rollout_* series and the timeline (rollout/local/telemetry.py) --------------------

    @property
    def metrics_target(self) -> str:
        return self.telemetry.target

    @property
    def metrics_server(self) -> MetricsServer | None:
        return self.telemetry.server

    def _serve_metrics(self) -> None:
        self.telemetry.serve()

    def _stop_metrics(self) -> None:
        self.telemetry.stop()

    def _timeline(self, state: RolloutState, now: float) -> None:
        append_timeline(self.dir / "timeline.jsonl", state, now)


def describe(exc: BaseException) -> str:
    """One line for an error: our own errors say what failed; others also name their type."""
    if isinstance(exc, RolloutError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
