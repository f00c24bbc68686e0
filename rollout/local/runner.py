"""The local runner: the edge loop that drives the pure engine against the embedded data plane.

``LocalRunner(rollout, stack).run()`` repeats, about twice a second: gather observations
(candidate health, the routes nginx really applies, the results of last step's measurements,
user commands), call ``rollout.engine.step``, persist the new state atomically, then execute the
actions (start the candidate, set routes, measure, finalize). Persist-then-act and level-based
actions make it crash-safe: ``kill -9`` at any point and ``rollout run`` again resumes where it
was, with no step applied twice.

Files under ``<home>/rollouts/<name>/``: ``state.json`` (the engine state), ``commands/`` (user
commands written by ``rollout promote|abort|pause|resume``, one JSON file each, removed once the
engine lists their id as applied), ``timeline.jsonl`` (one line per change: weights, phase, new
measurements; the demo plots it).
While it runs, the runner serves its rollout's rollout_* series (rollout/exporter.py) on a free
127.0.0.1 port, registered with the stack's Prometheus as target ``rollout-<name>`` (label
component="rollout"); before it returns it waits (a few seconds at most) for one scrape of the
final state, so ``increase(rollout_rollbacks_total[...])`` sees the end, then unregisters.
Who calls it: ``rollout run`` (rollout/cli/local.py) and the demo.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rollout.actions import (
    Command,
    CommandKind,
    EnsureBackend,
    Finalize,
    Measure,
    MetricResult,
    Observations,
    SetRoutes,
)
from rollout.engine import new_rollout, step
from rollout.errors import NotFoundError, RolloutError, StateError
from rollout.exporter import MetricsServer, RolloutCollector
from rollout.local.processes import LOOPBACK, http_ok
from rollout.local.stack import LocalStack, default_home
from rollout.metrics.sampler import SampleContext, collect
from rollout.model import RolloutState
from rollout.routers.base import Backend, RouteTarget
from rollout.spec import ModelRollout
from rollout.state import StateStore, save_text

TICK_SECONDS = 0.5
FINAL_SCRAPE_TIMEOUT = 10.0  # file_sd picks a new target up within 5 s; Prometheus scrapes every 1 s


def rollout_dir(name: str, home: Path | None = None) -> Path:
    return (home or default_home()) / "rollouts" / name


def version_of(tag: str) -> str:
    return tag.partition(":")[2] or tag


class CommandQueue:
    """User commands for one rollout: files written by the CLI, read by the runner."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def put(self, kind: CommandKind, message: str = "") -> Command:
        cmd = Command(id=uuid.uuid4().hex[:12], kind=kind, message=message)
        self.dir.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"id": cmd.id, "kind": cmd.kind.value, "message": message, "at": time.time()})
        save_text(self.dir / f"{time.time_ns()}-{cmd.id}.json", body)
        return cmd

    def pending(self) -> tuple[Command, ...]:
        if not self.dir.is_dir():
            return ()
        out = []
        for path in sorted(self.dir.glob("*.json")):
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
                out.append(
                    Command(id=str(doc["id"]), kind=CommandKind(doc["kind"]), message=doc.get("message", ""))
                )
            except (OSError, ValueError, KeyError):
                continue  # half-written or foreign file: ignored, never fatal
        return tuple(out)

    def drop(self, applied: list[str]) -> None:
        done = set(applied)
        for path in self.dir.glob("*.json") if self.dir.is_dir() else ():
            if path.stem.split("-", 1)[-1] in done:
                path.unlink(missing_ok=True)


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
    ) -> None:
        self.rollout = rollout
        self.spec = rollout.spec
        self.stack = stack
        self.dir = rollout_dir(rollout.metadata.name, home or stack.home)
        self.store = StateStore(self.dir / "state.json")
        self.commands = CommandQueue(self.dir / "commands")
        self.tick = tick
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
        self.exporter = RolloutCollector()
        self.metrics_server: MetricsServer | None = None

    # --- backends --------------------------------------------------------------------------------

    def _backend(self, tag: str) -> Backend | None:
        want = version_of(tag)
        for name, b in self.stack.backends(self.spec.service).items():
            info = self.stack.state["backends"].get(name, {})
            if b.version == want and (
                not info.get("pid") or self.stack.status()["backends"][name].get("running")
            ):
                return b
        return None

    def ensure_stable(self) -> Backend:
        """The stable version must be serving the service before anything else happens."""
        stable = self._backend(self.spec.stable.model)
        if stable is None:
            stable = self.stack.start_bento(self.spec.service, self.spec.stable.model, workers=self.workers)
        current = self.router.get_backends() if self._has_routes() else {}
        if current.get("stable") not in (None, stable.address):
            serving = [
                b for b in self.stack.backends(self.spec.service).values() if b.address == current["stable"]
            ]
            what = serving[0].version if serving else current["stable"]
            raise StateError(
                f"service {self.spec.service!r} is served by version {what}, not by the spec's stable "
                f"{self.spec.stable.model}; roll out from the version that serves now"
            )
        if not current.get("stable"):
            self.router.ensure(RouteTarget(self.spec.service, stable))
        return stable

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
        ready = http_ok(f"http://{cand.address}/v2/health/ready")() and self._scraped(cand)
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
            self.stack.start_bento(self.spec.service, self.spec.candidate.model, workers=self.workers)
        except RolloutError as exc:
            self._start_error = f"candidate {self.spec.candidate.model} failed to start: {exc}"

    # --- the loop --------------------------------------------------------------------------------

    def observe(self, state: RolloutState) -> Observations:
        ready, error = (None, None)
        if not state.done:
            ready, error = self._ensure_candidate()
        try:
            routes = self.router.get_routes()
        except RolloutError:
            routes = None
        results, self._results = tuple(self._results), []
        return Observations(
            candidate_ready=ready,
            candidate_error=error,
            routes=routes,
            metrics=results,
            commands=self.commands.pending(),
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
        except RolloutError as exc:
            return MetricResult(action.metric, at=now, error=str(exc), elapsed=time.monotonic() - t0)
        return MetricResult(action.metric, at=now, sample=sample, elapsed=time.monotonic() - t0)

    def finalize(self, action: Finalize) -> None:
        stable = self._backend(self.spec.stable.model)
        cand = self._backend(self.spec.candidate.model)
        keep, stop = (cand, stable) if action.promoted else (stable, cand)
        if keep is not None:
            self.router.finalize(RouteTarget(self.spec.service, keep))
        elif action.promoted:
            raise NotFoundError(
                f"cannot promote: candidate server {self.spec.candidate.model} is not running"
            )
        if stop is not None and stop is not keep:
            self.stack.stop_backend(stop.name)

    def request_stop(self) -> None:
        self._stop.set()

    def run(self, timeout: float | None = None) -> RolloutState:
        """Drive the rollout to its end (or until ``timeout`` seconds / ``request_stop``)."""
        state = self.store.load()
        if state is None:
            state = new_rollout(self.spec)
            self.store.save(state)
        self.exporter.update(self.rollout.metadata.name, state)
        self._serve_metrics()
        try:
            return self._loop(state, timeout)
        finally:
            self._stop_metrics()

    def _loop(self, state: RolloutState, timeout: float | None) -> RolloutState:
        if not state.done:
            self.ensure_stable()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            now = self.clock()
            t = step(self.spec, state, self.observe(state), now)
            if t.changed:
                self.store.save(t.state)  # persist first ...
                self._timeline(t.state, now)
            self.execute(t.state, t.actions, now)  # ... then act
            state = t.state
            self.exporter.update(self.rollout.metadata.name, state)
            self.commands.drop(state.applied_commands)
            if self.on_step is not None:
                self.on_step(state)
            if state.done and not any(isinstance(a, Measure) for a in t.actions):
                return state
            if self._stop.is_set() or (deadline is not None and time.monotonic() > deadline):
                return state
            self._stop.wait(self.tick)

    # --- the rollout_* series --------------------------------------------------------------------

    @property
    def metrics_target(self) -> str:
        return f"rollout-{self.rollout.metadata.name}"[:100]

    def _serve_metrics(self) -> None:
        self.metrics_server = MetricsServer(self.exporter, LOOPBACK, 0).start()
        self.stack.prometheus.add_target(
            self.metrics_target, self.metrics_server.address, {"component": "rollout"}
        )

    def _stop_metrics(self) -> None:
        """Let Prometheus scrape the last state (when it runs), then stop serving and unregister."""
        server, self.metrics_server = self.metrics_server, None
        if server is None:
            return
        try:
            if http_ok(self.stack.prometheus_url + "/-/ready")():
                server.wait_scraped(time.time(), FINAL_SCRAPE_TIMEOUT)
        finally:
            self.stack.prometheus.remove_target(self.metrics_target)
            server.stop()

    def _timeline(self, state: RolloutState, now: float) -> None:
        row: dict[str, Any] = {
            "t": now,
            "phase": state.phase.value,
            "step": state.progress.step_name,
            "candidate_weight": state.desired_routes.candidate_weight,
            "mirror_percent": state.desired_routes.mirror_percent,
            "metrics": {
                name: {
                    "verdict": m.measurements[-1].verdict,
                    "value": m.measurements[-1].value,
                    "at": m.measurements[-1].at,
                }
                for name, m in state.metrics.items()
                if m.measurements
            },
        }
        try:
            with (self.dir / "timeline.jsonl").open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
        except OSError as exc:
            raise StateError(f"cannot write {self.dir / 'timeline.jsonl'}: {exc.strerror or exc}") from None


def load_state(name: str, home: Path | None = None) -> RolloutState:
    state = StateStore(rollout_dir(name, home) / "state.json").load()
    if state is None:
        raise NotFoundError(f"no rollout named {name!r} under {home or default_home()}; see `rollout status`")
    return state


def list_rollouts(home: Path | None = None) -> list[tuple[str, RolloutState]]:
    """All rollouts with a state file, newest first."""
    base = (home or default_home()) / "rollouts"
    out = []
    for d in base.iterdir() if base.is_dir() else ():
        state = StateStore(d / "state.json").load()
        if state is not None:
            out.append((d.name, state))
    return sorted(out, key=lambda x: x[1].updated_at or 0, reverse=True)


def active_rollout(home: Path | None = None) -> str:
    """The name of the one rollout still running (for commands given without a name)."""
    running = [name for name, s in list_rollouts(home) if not s.done]
    if not running:
        raise NotFoundError("no rollout is in progress; give its name, or start one with `rollout run SPEC`")
    if len(running) > 1:
        raise NotFoundError(f"several rollouts are in progress ({', '.join(running)}); give a name")
    return running[0]
