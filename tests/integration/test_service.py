"""The model service under a real ``bentoml serve`` (2 workers) on 127.0.0.1: every endpoint, the
metrics it exports (summed across workers), feedback that lands on another worker, and every kind of
bad input answered with a 4xx JSON error while the server keeps serving."""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from bentos.metrics import _BASE as METRICS_BASE
from rollout.local.bento import BentoServer

pytestmark = pytest.mark.integration

SETOSA = [5.1, 3.5, 1.4, 0.2]
VIRGINICA = [6.7, 3.0, 5.2, 2.3]
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@pytest.fixture(scope="module")
def server(bento_server: Callable[..., BentoServer]) -> BentoServer:
    return bento_server(
        "iris:v2", workers=2, extra_env={"BENTO_MAX_BATCH": "50", "BENTO_MAX_BODY_BYTES": "20000"}
    )


def post(
    server: BentoServer, path: str, body: object = None, content: bytes | None = None, **kw: object
) -> httpx.Response:
    # a new connection per request, so requests spread over both workers
    return httpx.post(server.url + path, json=body, content=content, timeout=30, **kw)  # type: ignore[arg-type]


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        sample_labels = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.rindex("}")]))
        if all(sample_labels.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def scrape(server: BentoServer) -> str:
    response = httpx.get(server.url + "/metrics", timeout=30)
    assert response.status_code == 200
    return response.text


def settled(server: BentoServer, seconds: float = 3.0) -> str:
    """A scrape once the workers have flushed (each buffers up to 0.5 s): two equal scrapes in a row."""
    deadline = time.monotonic() + seconds
    previous = scrape(server)
    while time.monotonic() < deadline:
        time.sleep(0.6)
        current = scrape(server)
        if _values(current) == _values(previous):
            return current
        previous = current
    return previous


def _values(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("model_") and "_created" not in line]


def assert_identity(response: httpx.Response) -> None:
    assert response.headers["X-Model-Name"] == "iris"
    assert response.headers["X-Model-Version"] == "v2"
    assert response.headers["X-Request-ID"]


def test_predict_rows(server: BentoServer) -> None:
    response = post(server, "/predict", {"instances": [SETOSA, VIRGINICA]})
    assert response.status_code == 200
    assert_identity(response)
    body = response.json()
    assert body["predictions"] == ["setosa", "virginica"]
    assert [math.fsum(p) for p in body["probabilities"]] == pytest.approx([1.0, 1.0])
    assert (body["model"], body["version"]) == ("iris", "v2")
    assert body["request_id"] == response.headers["X-Request-ID"]


def test_predict_records_equal_rows(server: BentoServer) -> None:
    records = [dict(zip(FEATURES, row, strict=True)) for row in (SETOSA, VIRGINICA)]
    by_name = post(server, "/predict", {"instances": records}).json()
    by_position = post(server, "/predict", {"instances": [SETOSA, VIRGINICA]}).json()
    assert by_name["predictions"] == by_position["predictions"]
    assert by_name["probabilities"] == by_position["probabilities"]


def test_incoming_request_id_is_honoured(server: BentoServer) -> None:
    rid = f"client-{uuid.uuid4().hex}"
    response = post(server, "/predict", {"instances": [SETOSA]}, headers={"X-Request-ID": rid})
    assert response.headers["X-Request-ID"] == rid
    assert response.json()["request_id"] == rid
    generated = {post(server, "/predict", {"instances": [SETOSA]}).headers["X-Request-ID"] for _ in range(4)}
    assert len(generated) == 4


def test_kserve_v1_predict_path(server: BentoServer) -> None:
    response = post(server, "/v1/models/iris:predict", {"instances": [VIRGINICA]})
    assert response.status_code == 200
    assert response.json()["predictions"] == ["virginica"]
    assert post(server, "/v1/models/wine:predict", {"instances": [VIRGINICA]}).status_code == 404


def test_open_inference_protocol_v2(server: BentoServer) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/v2/health/live").json() == {"live": True}
        assert client.get("/v2/health/ready").status_code == 200
        meta = client.get("/v2/models/iris").json()
        assert meta["name"] == "iris" and meta["versions"] == ["v2"]
        assert meta["inputs"][0]["shape"] == [-1, 4]
        assert client.get("/v2/models/iris/ready").json()["ready"] is True
        infer = client.post(
            "/v2/models/iris/infer",
            json={
                "id": "req-7",
                "inputs": [
                    {"name": "input-0", "shape": [2, 4], "datatype": "FP32", "data": SETOSA + VIRGINICA}
                ],
            },
        )
        assert infer.status_code == 200
        assert_identity(infer)
        body = infer.json()
        assert (body["model_name"], body["model_version"], body["id"]) == ("iris", "v2", "req-7")
        outputs = {o["name"]: o for o in body["outputs"]}
        assert outputs["predictions"]["data"] == ["setosa", "virginica"]
        assert outputs["probabilities"]["shape"] == [2, 3]
        assert client.get("/v2/models/wine").status_code == 404
        assert client.get("/v2/models/iris/versions/v1").status_code == 404


def predicts_per_worker(server: BentoServer) -> dict[str, float]:
    """model_requests_total{endpoint="predict"} as each worker process wrote it (its own file)."""
    from prometheus_client.mmap_dict import MmapedDict

    (metrics_dir,) = METRICS_BASE.glob(f"{server.pid}-*")
    counts: dict[str, float] = {}
    for path in metrics_dir.glob("counter_*.db"):
        total = 0.0
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
            if '"model_requests_total"' in key and '"predict"' in key:
                total += value
        counts[path.stem.split("_")[-1]] = total
    return counts


def test_metrics_count_every_request_across_workers(server: BentoServer) -> None:
    before = settled(server)
    before_per_worker = predicts_per_worker(server)
    sent = 0

    # new connections until both workers have answered some (bounded), then 24 more
    def one(i: int) -> int:
        return post(server, "/predict", {"instances": [SETOSA if i % 2 else VIRGINICA]}).status_code

    while sent < 320:
        # concurrent new connections: a sequential client's connections all go to one idle worker
        with ThreadPoolExecutor(max_workers=8) as pool:
            assert list(pool.map(one, range(16))) == [200] * 16
        sent += 16
        time.sleep(0.6)  # let the workers write their buffers
        now = predicts_per_worker(server)
        if len(now) == 2 and all(now[pid] > before_per_worker.get(pid, 0) for pid in now):
            break
    for i in range(24):
        assert post(server, "/predict", {"instances": [SETOSA if i % 2 else VIRGINICA]}).status_code == 200
    n = sent + 24
    after = settled(server)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    mv = {"model": "iris", "version": "v2"}
    assert delta("model_requests_total", endpoint="predict", code="200", **mv) == n
    assert delta("model_request_duration_seconds_count", endpoint="predict", **mv) == n
    assert delta("model_predictions_total", **{"class": "setosa"}, **mv) == n / 2
    assert delta("model_predictions_total", **{"class": "virginica"}, **mv) == n / 2
    assert delta("model_prediction_confidence_ratio_count", **mv) == n
    for feature in FEATURES:
        assert delta("model_feature_zscore_count", feature=feature, **mv) == n
    # z-scores use the training mean/std: setosa's short petals are far below the mean
    assert delta("model_feature_zscore_bucket", feature="petal_length", le="-1.0", **mv) == n / 2
    assert metric(after, "model_info", **mv) == 1
    # both workers answered, and /metrics (served by one of them) holds the sum of both
    per_worker = predicts_per_worker(server)
    assert len(per_worker) == 2
    assert all(per_worker[pid] > before_per_worker.get(pid, 0) for pid in per_worker)


def test_feedback_joins_predictions_answered_by_any_worker(server: BentoServer) -> None:
    before = settled(server)
    truths = []
    for i in range(10):
        rid = f"fb-{uuid.uuid4().hex}"
        row, truth = (SETOSA, "setosa") if i % 2 else (VIRGINICA, "virginica")
        assert (
            post(server, "/predict", {"instances": [row]}, headers={"X-Request-ID": rid}).status_code == 200
        )
        truths.append((rid, truth if i < 8 else "versicolor"))  # the last two labels disagree
    for rid, label in truths:
        response = post(server, "/feedback", {"request_id": rid, "label": label})
        assert response.status_code == 200, response.text
        assert response.json()["received"] == 1
    after = settled(server)
    mv = {"model": "iris", "version": "v2"}
    assert metric(after, "model_feedback_total", **mv) - metric(before, "model_feedback_total", **mv) == 10
    assert (
        metric(after, "model_feedback_correct_total", **mv)
        - metric(before, "model_feedback_correct_total", **mv)
        == 8
    )
    # a labelling pipeline that retries gets a 200 and the label counts once; other labels: 409
    again = post(server, "/feedback", {"request_id": truths[0][0], "label": truths[0][1]})
    assert again.status_code == 200 and again.json()["duplicate"] is True
    other = "setosa" if truths[0][1] != "setosa" else "virginica"
    assert post(server, "/feedback", {"request_id": truths[0][0], "label": other}).status_code == 409
    assert metric(settled(server), "model_feedback_total", **mv) == metric(
        after, "model_feedback_total", **mv
    )


def test_feedback_for_a_batch_takes_one_label_per_row(server: BentoServer) -> None:
    rid = f"batch-{uuid.uuid4().hex}"
    post(server, "/predict", {"instances": [SETOSA, VIRGINICA]}, headers={"X-Request-ID": rid})
    assert post(server, "/feedback", {"request_id": rid, "label": "setosa"}).status_code == 422
    response = post(server, "/feedback", {"request_id": rid, "labels": ["setosa", 2]})
    assert response.json() == {"request_id": rid, "received": 2, "correct": 2, "duplicate": False}


BAD_PREDICT = {
    "malformed_json": (b'{"instances": [[5.1, 3.5,', 400, "malformed_json"),
    "wrong_feature_count": (b'{"instances": [[5.1, 3.5, 1.4]]}', 422, "wrong_feature_count"),
    "unknown_feature_name": (
        b'{"instances": [{"sepal_length": 5, "sepal_width": 3, "petal_length": 1, "petal_width": 0, "colour": 1}]}',
        422,
        "unknown_feature",
    ),
    "non_numeric_value": (b'{"instances": [[5.1, "3.5", 1.4, 0.2]]}', 422, "non_numeric_value"),
    "nan": (b'{"instances": [[NaN, 3.5, 1.4, 0.2]]}', 422, "non_finite_value"),
    "infinity": (b'{"instances": [[1e999, 3.5, 1.4, 0.2]]}', 422, "non_finite_value"),
    "empty_batch": (b'{"instances": []}', 422, "empty_batch"),
    "batch_over_limit": (
        b'{"instances": [' + b",".join([b"[5.1,3.5,1.4,0.2]"] * 51) + b"]}",
        422,
        "batch_too_large",
    ),
    "body_over_limit": (
        b'{"instances": [[5.1, 3.5, 1.4, 0.2]], "pad": "' + b"x" * 30000 + b'"}',
        413,
        "body_too_large",
    ),
    "not_an_object": (b"[[5.1, 3.5, 1.4, 0.2]]", 422, "missing_instances"),
}


@pytest.mark.parametrize("case", sorted(BAD_PREDICT))
def test_bad_predict_input_is_a_4xx_and_server_keeps_serving(server: BentoServer, case: str) -> None:
    content, status, code = BAD_PREDICT[case]
    response = post(server, "/predict", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]
    assert_identity(response)
    assert post(server, "/predict", {"instances": [SETOSA]}).status_code == 200


def test_bad_v2_input_is_a_4xx_in_the_open_inference_protocols_error_shape(server: BentoServer) -> None:
    bad = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [1.0, 2.0, 3.0]}]}
    response = post(server, "/v2/models/iris/infer", bad)
    assert response.status_code == 422
    assert response.json() == {"error": "inputs[0].shape [1, 4] needs 4 values, inputs[0].data has 3"}
    assert_identity(response)  # the request id is in X-Request-ID, not in the OIP error body
    wrong_method = httpx.get(server.url + "/v2/models/iris/infer", timeout=30)
    assert wrong_method.status_code == 405
    assert wrong_method.json() == {"error": "method GET is not allowed here; use POST"}
    # the server's other endpoints keep the project's own shape
    assert post(server, "/predict", {"instances": [[1.0]]}).json()["error"]["code"] == "wrong_feature_count"


FEEDBACK_CASES = {
    "unknown_request_id": ({"request_id": "never-seen-1", "label": "setosa"}, 404, "unknown_request_id"),
    "bad_label": ({"request_id": "x", "label": "rose"}, 422, "bad_label"),
    "label_index_out_of_range": ({"request_id": "x", "label": 7}, 422, "bad_label"),
    "missing_label": ({"request_id": "x"}, 422, "bad_label"),
}


@pytest.mark.parametrize("case", sorted(FEEDBACK_CASES))
def test_bad_feedback_is_a_4xx(server: BentoServer, case: str) -> None:
    body, status, code = FEEDBACK_CASES[case]
    if body.get("request_id") == "x":
        rid = f"known-{uuid.uuid4().hex}"
        post(server, "/predict", {"instances": [SETOSA]}, headers={"X-Request-ID": rid})
        body = {**body, "request_id": rid}
    response = post(server, "/feedback", body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert post(server, "/predict", {"instances": [SETOSA]}).status_code == 200


def test_rejected_requests_are_counted_by_status(server: BentoServer) -> None:
    before = settled(server)
    post(server, "/predict", content=b"{", headers={"Content-Type": "application/json"})
    after = settled(server)
    labels = {"endpoint": "predict", "code": "400", "model": "iris", "version": "v2"}
    assert (
        metric(after, "model_requests_total", **labels) - metric(before, "model_requests_total", **labels)
        == 1
    )


def test_unknown_path_and_wrong_method(server: BentoServer) -> None:
    assert httpx.get(server.url + "/nope", timeout=30).status_code == 404
    response = httpx.get(server.url + "/predict", timeout=30)
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_invalid_request_id_header_is_rejected(server: BentoServer) -> None:
    response = post(server, "/predict", {"instances": [SETOSA]}, headers={"X-Request-ID": "x" * 200})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request_id"


def test_bentoml_routes_carry_the_model_identity_too(server: BentoServer) -> None:
    response = httpx.get(server.url + "/readyz", headers={"X-Request-ID": "probe-1"}, timeout=30)
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == "probe-1"
    assert_identity(response)
