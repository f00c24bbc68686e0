"""Bounded concurrent HTTP load for router tests: a few threads, a request cap and a time cap.

``run_load`` keeps every failure (connection error, timeout, non-2xx) with its reason, and counts
which server answered and what the router said (``X-Routed-To``), so tests can assert "zero failed
requests" and "every answer came from the version the router names".
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx


@dataclass
class LoadResult:
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    servers: Counter[str] = field(default_factory=Counter)
    mismatched: int = 0  # X-Routed-To disagrees with the server that answered
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return self.ok + len(self.failures)


def run_load(
    url: str,
    threads: int = 4,
    seconds: float = 5.0,
    max_requests: int = 20_000,
    expect_server: Callable[[str], str] | None = None,
    during: Callable[[threading.Event], None] | None = None,
) -> LoadResult:
    """POST small JSON bodies to ``url`` from ``threads`` keep-alive clients until time or count runs out.

    ``during(stop)`` runs in the calling thread while the load is on (e.g. changing weights); the
    load stops when it returns or when ``seconds`` pass, whichever is later-bounded by ``seconds``.
    ``expect_server`` maps an ``X-Routed-To`` value to the server name that should have answered.
    """
    result = LoadResult()
    lock = threading.Lock()
    stop = threading.Event()
    budget = [max_requests]

    def worker() -> None:
        with httpx.Client(timeout=10.0) as client:
            while not stop.is_set():
                with lock:
                    if budget[0] <= 0:
                        return
                    budget[0] -= 1
                try:
                    resp = client.post(url + "/predict", json={"instances": [[5.1, 3.5, 1.4, 0.2]]})
                except httpx.HTTPError as exc:
                    with lock:
                        result.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                with lock:
                    if resp.status_code != 200:
                        result.failures.append(f"HTTP {resp.status_code}: {resp.text[:100]}")
                        continue
                    result.ok += 1
                    server = resp.json().get("server", "?")
                    result.servers[server] += 1
                    routed = resp.headers.get("x-routed-to", "")
                    if expect_server is not None and expect_server(routed) != server:
                        result.mismatched += 1

    started = time.monotonic()
    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    try:
        if during is not None:
            during(stop)
        while time.monotonic() - started < seconds and any(t.is_alive() for t in pool):
            time.sleep(0.05)
    finally:
        stop.set()
        for t in pool:
            t.join(timeout=30)
    result.seconds = time.monotonic() - started
    return result
