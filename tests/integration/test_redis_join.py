"""The shared join store: labels and mirrored answers joined in a real Redis, for any pod of any version.

Real redis-server (Debian's, started here on 127.0.0.1 with the durable settings of
rollout/local/redis.py) and, in the second half, four real ``bentoml serve`` processes: two per
version, as two pods per version would be on a cluster. A prediction is made on one process and its
label sent to another (even one of the other version): it counts for the version that answered.
What a user of the accuracy gate would notice is checked: a label counts once, a forged one is a 401
and changes nothing, an unknown or late one is refused with a 4xx naming why, and a Redis killed
with SIGKILL and restarted still has every label it acknowledged.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis

from bentos.join_exporter import render, serve
from bentos.parsing import BadRequest
from bentos.redis_join import RedisJoin, connect, counters
from rollout.local.bento import BentoServer
from rollout.local.processes import Supervisor, free_port
from rollout.local.redis import RedisServer
from rollout.metrics import names as n

pytestmark = pytest.mark.integration

SETOSA = [5.1, 3.5, 1.4, 0.2]
VIRGINICA = [7.7, 3.0, 6.1, 2.3]
VERSICOLOR = [5.9, 2.8, 4.4, 1.3]
TOKEN = "labelling-pipeline-token-0123456789"


def client(store: RedisServer) -> redis.Redis:
    return connect(store.url, store.password)


def join(store: RedisServer, version: str, **kwargs: float) -> RedisJoin:
    return RedisJoin(client(store), "iris", version, prefix=f"t{uuid.uuid4().hex[:8]}:", **kwargs)


def count(j: RedisJoin, metric: str, version: str) -> int:
    return counters(j.client, j.prefix).get((metric, "iris", version), 0)


def test_a_label_counts_once_for_the_version_that_answered(store: RedisServer) -> None:
    v1, v2 = join(store, "v1"), join(store, "v2")
    v2.prefix = v1.prefix
    v2.counters_key = v1.counters_key
    v2.record("r1", [0, 2])
    v2.flush()
    resolved = v1.resolve("r1", [0, 1])  # the label reached a pod of the other version
    assert (resolved.received, resolved.versions) == (2, ("v2",))
    assert count(v1, n.FEEDBACK_TOTAL, "v2") == 2 and count(v1, n.FEEDBACK_CORRECT_TOTAL, "v2") == 1
    assert count(v1, n.FEEDBACK_TOTAL, "v1") == 0
    again = v1.resolve("r1", [0, 1])
    assert again.duplicate and count(v1, n.FEEDBACK_TOTAL, "v2") == 2
    with pytest.raises(BadRequest) as conflict:
        v1.resolve("r1", [1, 1])
    assert conflict.value.status == 409


def test_refusals_name_the_problem_and_count_nothing(store: RedisServer) -> None:
    j = join(store, "v1", window_seconds=1.0, lookup_wait=0.1)
    with pytest.raises(BadRequest) as unknown:
        j.resolve("never-made", [0])
    assert (unknown.value.status, unknown.value.code) == (404, "unknown_request_id")
    j.record("rows", [0, 1, 2])  # still in this pod's buffer: the label sends it, then asks again
    with pytest.raises(BadRequest) as rows:
        j.resolve("rows", [0])
    assert rows.value.status == 422 and "3 rows" in rows.value.message
    j.record("late", [1])
    j.flush()
    time.sleep(1.3)
    with pytest.raises(BadRequest) as late:
        j.resolve("late", [1])
    assert (late.value.status, late.value.code) == (410, "feedback_too_late")
    assert count(j, n.FEEDBACK_TOTAL, "v1") == 0


def test_a_label_sent_right_after_its_prediction_waits_for_the_other_pods_flush(store: RedisServer) -> None:
    slow = join(store, "v2", flush_interval=0.3)
    other = join(store, "v2")
    other.prefix, other.counters_key = slow.prefix, slow.counters_key
    slow.start()
    try:
        slow.record("fresh", [2])  # still in the answering pod's buffer when the label arrives
        assert other.resolve("fresh", [2]).correct == 1
    finally:
        slow.close()


def test_mirrored_answers_are_compared_once_whoever_records_first(store: RedisServer) -> None:
    stable, shadow = join(store, "v1"), join(store, "v2")
    shadow.prefix, shadow.counters_key = stable.prefix, stable.counters_key
    for i in range(10):
        shadow.record(f"m{i}", [1])  # the shadow's copy may be answered first
        stable.record(f"m{i}", [1 if i < 7 else 2])
    shadow.flush()
    stable.flush()
    stable.record("m0", [1])  # a retried request answered again adds no comparison
    stable.flush()
    for version in ("v1", "v2"):
        assert count(stable, n.SHADOW_COMPARISONS_TOTAL, version) == 10
        assert count(stable, n.SHADOW_AGREEMENTS_TOTAL, version) == 7
    # a label for a mirrored request counts for both versions: the shadow's accuracy, for free
    assert set(stable.resolve("m9", [2]).versions) == {"v1", "v2"}
    assert count(stable, n.FEEDBACK_CORRECT_TOTAL, "v1") == 1 and count(stable, n.FEEDBACK_TOTAL, "v2") == 1
    assert count(stable, n.FEEDBACK_CORRECT_TOTAL, "v2") == 0


def test_predictions_made_while_redis_is_away_are_kept_and_sent_later(tmp_path: Path) -> None:
    sup = Supervisor()
    server = RedisServer(sup, tmp_path / "redis", free_port())
    server.start()
    try:
        j = join(server, "v1")
        server.stop()
        j.record("offline", [0])
        j.flush()  # refused: kept
        assert j._pending
        with pytest.raises(BadRequest) as down:
            j.resolve("offline", [0])
        assert down.value.status == 503 and "send the label again" in down.value.message
        assert down.value.retry_after == 1  # the server answers it with Retry-After: 1
        server.start()
        j.flush()
        assert j.resolve("offline", [0]).correct == 1
    finally:
        sup.stop_all()


def test_an_unknown_id_right_after_redis_was_away_is_a_retryable_503_not_a_lost_label(tmp_path: Path) -> None:
    """Pod a's prediction waits in its buffer while Redis is away; pod b gets its label as Redis
    comes back, before a has sent it: b says "send it again" (503), never 404, and the label counts."""
    sup = Supervisor()
    server = RedisServer(sup, tmp_path / "redis", free_port())
    server.start()
    try:
        prefix = f"t{uuid.uuid4().hex[:8]}:"
        a, b = (RedisJoin(client(server), "iris", "v1", prefix=prefix, lookup_wait=0.2, recovering_seconds=1.5)
                for _ in range(2))  # fmt: skip
        server.stop()
        a.record("buffered", [0])
        a.flush()  # refused: kept
        with pytest.raises(BadRequest) as down:
            b.resolve("buffered", [0])
        assert down.value.status == 503
        server.start()
        with pytest.raises(BadRequest) as recovering:
            b.resolve("buffered", [0])  # a has not sent it yet
        assert recovering.value.status == 503 and recovering.value.retry_after == 1
        assert "send the label again" in recovering.value.message
        a.flush()
        assert b.resolve("buffered", [0]).correct == 1
        time.sleep(1.6)  # recovered: an id nobody predicted is a 404 again
        with pytest.raises(BadRequest) as unknown:
            b.resolve("never-made", [0])
        assert unknown.value.status == 404
    finally:
        sup.stop_all()


def test_a_killed_store_keeps_every_label_it_acknowledged(tmp_path: Path) -> None:
    sup = Supervisor()
    server = RedisServer(sup, tmp_path / "redis", free_port())
    server.start()
    try:
        j = join(server, "v2")
        for i in range(200):
            j.record(f"k{i}", [i % 3])
        j.flush()
        acknowledged = sum(1 for i in range(200) if j.resolve(f"k{i}", [0]).received)
        server.stop(sig=signal.SIGKILL)  # no shutdown, no final write: only what was fsynced
        server.start()
        j.client = client(server)
        j._label = j.client.register_script(j._label.script)
        assert count(j, n.FEEDBACK_TOTAL, "v2") == acknowledged == 200
        assert j.resolve("k5", [0]).duplicate  # and the labels themselves, so a retry counts once
    finally:
        sup.stop_all()


def test_the_exporter_serves_the_counters_under_the_service_metric_names(store: RedisServer) -> None:
    j = join(store, "v2")
    j.record("e1", [1])
    j.flush()
    j.resolve("e1", [1])
    fresh = RedisJoin(j.client, "iris", "v9", prefix=j.prefix)
    fresh.declare()  # a server that has only started has its series, at 0 (RedisJoin.start), so
    # that Prometheus' increase() counts its first labels and its first mirrored answers
    text = render(j.client, j.prefix)
    assert f'{n.FEEDBACK_TOTAL}{{model="iris",version="v9"}} 0' in text
    assert f'{n.FEEDBACK_TOTAL}{{model="iris",version="v2"}} 1' in text
    assert f"# TYPE {n.FEEDBACK_CORRECT_TOTAL} counter" in text and "model_join_store_up 1" in text
    dead = connect(f"redis://127.0.0.1:{free_port()}/0", timeout=0.3)
    assert "model_join_store_up 0" in render(dead)


# --- through real model servers: two processes per version, labels sent to any of them ---------


@pytest.fixture(scope="module")
def pods(store: RedisServer, bento_server: Callable[..., BentoServer]) -> dict[str, list[BentoServer]]:
    env = {
        "BENTO_JOIN_STORE": store.url,
        "BENTO_JOIN_PASSWORD": store.password,
        "BENTO_FEEDBACK_TOKEN": TOKEN,
    }
    return {
        version: [bento_server(f"iris:{version}", extra_env=env) for _ in range(2)]
        for version in ("v2", "poisoned")
    }


def metrics_of(store: RedisServer) -> dict[tuple[str, str, str], int]:
    return counters(client(store))


def predict(server: BentoServer, row: list[float], rid: str = "") -> tuple[str, str]:
    """(request id, predicted class) of one prediction."""
    rid = rid or f"p-{uuid.uuid4().hex}"
    answer = httpx.post(f"{server.url}/predict", json={"instances": [row]}, headers={"X-Request-ID": rid})
    assert answer.status_code == 200, answer.text
    return rid, answer.json()["predictions"][0]


def label(server: BentoServer, rid: str, value: str, token: str | None = TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{server.url}/feedback", json={"request_id": rid, "label": value}, headers=headers)


def test_labels_sent_to_any_pod_count_for_the_version_that_answered(
    store: RedisServer, pods: dict[str, list[BentoServer]]
) -> None:
    before = metrics_of(store)
    good, bad = pods["v2"], pods["poisoned"]
    right = {"v2": 0, "poisoned": 0}
    for i in range(20):
        row, truth = ((SETOSA, "setosa"), (VIRGINICA, "virginica"), (VERSICOLOR, "versicolor"))[i % 3]
        rid_good, said_good = predict(good[i % 2], row)
        rid_bad, said_bad = predict(bad[i % 2], row)
        right["v2"] += said_good == truth
        right["poisoned"] += said_bad == truth
        # every label goes to a pod that did not answer, half of them of the other version
        for rid, pod in ((rid_good, good[(i + 1) % 2] if i % 2 else bad[0]), (rid_bad, bad[(i + 1) % 2])):
            answer = label(pod, rid, truth)
            assert answer.status_code == 200, answer.text
            assert answer.json()["duplicate"] is False
    after = metrics_of(store)

    def grew(metric: str, version: str) -> int:
        return after.get((metric, "iris", version), 0) - before.get((metric, "iris", version), 0)

    for version in ("v2", "poisoned"):
        assert grew(n.FEEDBACK_TOTAL, version) == 20
        assert grew(n.FEEDBACK_CORRECT_TOTAL, version) == right[version]
    # the pods do not count labels in their own /metrics (the exporter does): no double counting
    scraped = httpx.get(f"{good[0].url}/metrics").text
    assert not any(
        line.startswith(n.FEEDBACK_TOTAL + "{") and not line.endswith(" 0.0") for line in scraped.splitlines()
    )


def test_a_forged_or_missing_token_is_a_401_and_changes_no_metric(
    store: RedisServer, pods: dict[str, list[BentoServer]]
) -> None:
    pod = pods["poisoned"][0]
    rid, _ = predict(pod, SETOSA)
    before = metrics_of(store)
    for token in (None, "forged-token-forged-token-0000", TOKEN + "x"):
        answer = label(pod, rid, "virginica", token=token)
        assert answer.status_code == 401, answer.text
        assert answer.json()["error"]["code"] == "unauthorized"
    assert metrics_of(store) == before
    assert label(pod, rid, "setosa").status_code == 200  # the real pipeline's label still counts


def test_mirrored_requests_are_joined_by_request_id_across_versions(
    store: RedisServer, pods: dict[str, list[BentoServer]]
) -> None:
    before = metrics_of(store)
    agree = 0
    rows = [SETOSA, VIRGINICA, VERSICOLOR, [6.3, 2.5, 4.9, 1.5], [6.0, 2.7, 5.1, 1.6]]
    for i in range(10):
        rid = f"mirror-{uuid.uuid4().hex}"
        # the same request id on one pod of each version, as a mirror sends it
        _, stable_said = predict(pods["v2"][i % 2], rows[i % len(rows)], rid)
        _, shadow_said = predict(pods["poisoned"][(i + 1) % 2], rows[i % len(rows)], rid)
        agree += stable_said == shadow_said
    key = (n.SHADOW_COMPARISONS_TOTAL, "iris", "poisoned")
    deadline = time.monotonic() + 5
    while metrics_of(store).get(key, 0) - before.get(key, 0) < 10 and time.monotonic() < deadline:
        time.sleep(0.1)
    after = metrics_of(store)
    for version in ("v2", "poisoned"):
        compared = (n.SHADOW_COMPARISONS_TOTAL, "iris", version)
        agreed = (n.SHADOW_AGREEMENTS_TOTAL, "iris", version)
        assert after.get(compared, 0) - before.get(compared, 0) == 10
        assert after.get(agreed, 0) - before.get(agreed, 0) == agree


def test_a_label_a_killed_pod_accepted_stays_counted_and_its_retry_elsewhere_counts_once(
    store: RedisServer, pods: dict[str, list[BentoServer]]
) -> None:
    pod, survivor = pods["v2"]
    rids = [predict(pod, SETOSA)[0] for _ in range(10)]
    assert all(label(pod, rid, "setosa").status_code == 200 for rid in rids)
    before = metrics_of(store)[(n.FEEDBACK_TOTAL, "iris", "v2")]
    pod.stop(timeout=0.1)  # SIGTERM then SIGKILL: the pod goes, the counts stay
    assert metrics_of(store)[(n.FEEDBACK_TOTAL, "iris", "v2")] == before
    # and a retry of an accepted label on the surviving pod counts once
    assert label(survivor, rids[0], "setosa").json()["duplicate"] is True


def test_a_shared_store_without_a_token_refuses_to_start(
    store: RedisServer, bento_server: Callable[..., BentoServer]
) -> None:
    with pytest.raises(Exception, match="BENTO_FEEDBACK_TOKEN"):
        bento_server("iris:v1", extra_env={"BENTO_JOIN_STORE": store.url}, timeout=60)


def test_exporter_process_answers_prometheus(store: RedisServer) -> None:
    port = free_port()
    server = serve(client(store), "127.0.0.1", port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert "model_join_store_up 1" in text and f"# TYPE {n.SHADOW_AGREEMENTS_TOTAL} counter" in text
        assert httpx.get(f"http://127.0.0.1:{port}/nope").status_code == 404
    finally:
        server.shutdown()


def test_a_hung_store_answers_labels_with_a_retryable_503_and_never_slows_a_prediction(
    tmp_path: Path, bento_server: Callable[..., BentoServer]
) -> None:
    """Redis SIGSTOPped (alive, answering nothing): predictions go on at full speed (their records
    wait in the buffer), a label is a 503 with Retry-After after one socket timeout (2 s) - not a
    hang a labelling pipeline's client would time out on - and the exporter says
    model_join_store_up 0 within its 0.5 s read timeout; once Redis runs again the label counts."""
    import os

    sup = Supervisor()
    server = RedisServer(sup, tmp_path / "redis", free_port())
    server.start()
    assert server.proc is not None
    try:
        env = {"BENTO_JOIN_STORE": server.url, "BENTO_JOIN_PASSWORD": server.password,
               "BENTO_FEEDBACK_TOKEN": TOKEN}  # fmt: skip
        pod = bento_server("iris:v2", extra_env=env)
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            began = time.monotonic()
            rid, _ = predict(pod, SETOSA)
            assert time.monotonic() - began < 1.0
            began = time.monotonic()
            answer = label(pod, rid, "setosa")
            waited = time.monotonic() - began
            assert answer.status_code == 503 and answer.headers["retry-after"] == "1", answer.text
            assert answer.json()["error"]["code"] == "join_store_unavailable"
            assert waited < 4.0, f"a label waited {waited:.1f} s on a hung store"
            began = time.monotonic()
            assert "model_join_store_up 0" in render(connect(server.url, server.password, timeout=0.5))
            assert time.monotonic() - began < 1.5
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        deadline = time.monotonic() + 10
        while (again := label(pod, rid, "setosa")).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert again.status_code == 200 and again.json()["duplicate"] is False, again.text
    finally:
        sup.stop_all()
