"""What the model server does off the request path: one periodic flush thread, and a buffer the
request path appends to without a lock.

The metrics (bentos/metrics.py) and both join stores (bentos/feedback.py, bentos/redis_join.py)
keep what a request produced in memory and write it out every ``flush_interval`` seconds from a
:class:`Periodic` thread. Their buffers are :class:`Buffer`: ``append`` from any thread and
``take`` from the flusher never lose an item between them (a list swapped for a new one could:
an append that had already read the old list lands after the swap in a list nobody sends).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Periodic:
    """Calls ``step`` every ``interval`` seconds on a daemon thread, from ``start`` until ``stop``,
    which waits for the thread (at most ``timeout``) and then calls ``step`` once more itself, so
    nothing recorded before ``stop`` is left unwritten."""

    def __init__(self, name: str, interval: float, step: Callable[[], None]) -> None:
        self.name = name
        self.interval = interval
        self.step = step
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=timeout)
        self.step()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.step()


class Buffer(Generic[T]):
    """Items appended by request threads, taken in order by one flusher. ``maxlen``: the oldest
    are dropped past it (a store that stays away must not grow a server without bound)."""

    def __init__(self, maxlen: int | None = None) -> None:
        self._items: deque[T] = deque(maxlen=maxlen)

    def append(self, item: T) -> None:
        self._items.append(item)  # atomic: no lock on the request path

    def take(self) -> list[T]:
        """Everything appended so far (what is appended meanwhile stays for the next take)."""
        taken: list[T] = []
        pop = self._items.popleft
        try:
            for _ in range(len(self._items)):
                taken.append(pop())
        except IndexError:  # pragma: no cover - only this one flusher takes
            pass
        return taken

    def put_back(self, items: list[T]) -> None:
        """Return ``items`` (from ``take``) to the front, ahead of what was appended since; past
        ``maxlen`` the oldest go."""
        if self._items.maxlen is not None:
            room = self._items.maxlen - len(self._items)
            items = items[-room:] if room > 0 else []
        self._items.extendleft(reversed(items))

    def __len__(self) -> int:
        return len(self._items)
