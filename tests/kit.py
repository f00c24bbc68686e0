"""What several test tiers build the same way: a ModelRollout document, a clock a test moves by
hand, and the two model servers (iris:v1, iris:v2) that local drills route between.

- ``rollout_doc(name, **spec)``: the full ``bento-rollout.io/v1alpha1`` document (service iris,
  stable iris:v1, candidate iris:v2 unless ``spec`` says otherwise); ``rollout_spec`` parses it.
- ``ManualClock``: ``clock()`` is ``clock.now``; a test sets it (no sleeping through a pause).
- ``bento_servers(logs, env=...)``: real ``bentoml serve`` of iris:v1 and iris:v2 on free ports,
  started in parallel, ready, stopped on exit (``env``: e.g. a local stack's ``join.server_env()``).
- ``until(what, probe, timeout, check, why)``: poll ``probe`` until it returns something truthy;
  ``check`` raises when what the test waits on died (a node, a Prometheus); ``why`` is appended
  to the AssertionError (a log tail) when the time is up.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from rollout.local.bento import BentoServer, start_bento_server
from rollout.local.processes import free_port
from rollout.spec import ModelRollout, parse_rollout

API_VERSION = "bento-rollout.io/v1alpha1"
T = TypeVar("T")


def rollout_doc(name: str, **spec: Any) -> dict[str, Any]:
    """A ModelRollout document; ``spec`` fields (camelCase, as written in YAML) replace the defaults."""
    body: dict[str, Any] = {
        "service": "iris",
        "stable": {"model": "iris:v1"},
        "candidate": {"model": "iris:v2"},
    }
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelRollout",
        "metadata": {"name": name},
        "spec": body | spec,
    }


def rollout_spec(name: str, **spec: Any) -> ModelRollout:
    """``rollout_doc`` parsed (SpecError for an invalid one, as ``rollout run`` would say)."""
    return parse_rollout(rollout_doc(name, **spec))


class ManualClock:
    """A clock for an injected ``clock=``: it stands still until the test moves ``now``."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@contextlib.contextmanager
def bento_servers(
    logs: Path, versions: Sequence[str] = ("v1", "v2"), env: dict[str, str] | None = None
) -> Iterator[dict[str, BentoServer]]:
    """``bentoml serve`` of ``iris:<version>`` for each version, started at once, all ready;
    ``BENTOML_HOME`` as the environment says, ``env`` added. Stopped (whole process groups) on exit."""
    logs.mkdir(parents=True, exist_ok=True)
    started = {
        v: start_bento_server(f"iris:{v}", free_port(), wait=False, log_path=logs / f"{v}.log", extra_env=env)
        for v in versions
    }
    try:
        for s in started.values():
            s.wait_ready(300)
        yield started
    finally:
        for s in started.values():
            s.stop()


def until(
    what: str,
    probe: Callable[[], T | None],
    timeout: float,
    check: Callable[[], None] = lambda: None,
    why: Callable[[], str] = lambda: "",
    every: float = 0.5,
) -> T:
    """``probe()``'s first truthy value within ``timeout`` seconds; AssertionError naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check()
        value = probe()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:.0f} s\n{why()}")
