"""The model server's off-request-path buffer and flush thread (bentos/background.py): a prediction
recorded while the flusher takes, or while the store is away, is not lost (its label would be a 404)."""

from __future__ import annotations

import threading
import time

from bentos.background import Buffer, Periodic


def test_appends_racing_a_taker_are_all_taken_once_in_order() -> None:
    buffer: Buffer[tuple[int, int]] = Buffer()
    per_thread, threads = 20_000, 4
    taken: list[tuple[int, int]] = []
    done = threading.Event()

    def produce(t: int) -> None:
        for i in range(per_thread):
            buffer.append((t, i))

    def consume() -> None:
        while not done.is_set() or len(buffer):
            taken.extend(buffer.take())

    taker = threading.Thread(target=consume)
    taker.start()
    producers = [threading.Thread(target=produce, args=(t,)) for t in range(threads)]
    for p in producers:
        p.start()
    for p in producers:
        p.join()
    done.set()
    taker.join()
    assert len(taken) == per_thread * threads == len(set(taken))
    for t in range(threads):
        assert [i for (u, i) in taken if u == t] == list(range(per_thread))  # each thread's order kept


def test_a_batch_put_back_goes_first_and_a_bounded_buffer_drops_the_oldest() -> None:
    buffer: Buffer[int] = Buffer(maxlen=5)
    for i in range(3):
        buffer.append(i)
    batch = buffer.take()
    buffer.append(3)  # recorded while the store refused ``batch``
    buffer.put_back(batch)
    assert buffer.take() == [0, 1, 2, 3]
    for i in range(4):
        buffer.append(10 + i)
    buffer.put_back([0, 1, 2])  # room for one: the newest of the batch stays
    assert buffer.take() == [2, 10, 11, 12, 13]
    for i in range(7):
        buffer.append(i)
    assert buffer.take() == [2, 3, 4, 5, 6]


def test_the_flusher_runs_periodically_and_once_more_on_stop() -> None:
    calls: list[float] = []
    flusher = Periodic("test-flush", 0.02, lambda: calls.append(time.monotonic()))
    flusher.start()
    deadline = time.monotonic() + 5
    while len(calls) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(calls) >= 3
    flusher.stop()
    after_stop = len(calls)
    time.sleep(0.1)
    assert len(calls) == after_stop  # the thread is gone; stop's own last call was made
    assert not any(t.name == "test-flush" for t in threading.enumerate())


def test_stop_writes_what_the_thread_had_not_yet() -> None:
    calls: list[int] = []
    flusher = Periodic("slow-flush", 60.0, lambda: calls.append(1))
    flusher.start()
    flusher.stop()
    assert calls == [1]
