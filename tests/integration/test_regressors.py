"""A user's own regressor, from a joblib file to labels counted in Prometheus series, with real
processes: ``rollout import`` and ``rollout gate`` (the CLI), ``bentoml serve`` of the imported
model, a real redis-server (rollout/local/redis.py) for the shared join store.

scikit-learn's diabetes dataset: Pipeline(StandardScaler, Ridge) as v1, LinearRegression as a
good v2, and a Ridge fitted on shuffled targets as the bad one the gate refuses. What a user of
the MAE/RMSE templates relies on is checked: the server answers values (records and rows, /v2),
counts each predicted value in model_prediction_value, and a label adds its rows' absolute and
squared errors once, so MAE from the sums is numpy's on the labelled rows, with either join store.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from bentos.join_exporter import render as render_exporter
from bentos.parsing import BadRequest
from bentos.redis_join import RedisJoin, connect, counters
from rollout.local.bento import BentoServer, start_bento_server
from rollout.local.processes import free_port
from rollout.local.redis import RedisServer
from rollout.metrics import names as n

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROLLOUT = str(Path(sys.executable).parent / "rollout")
TARGET = "progression"
TOKEN = "labelling-pipeline-token-0123456789"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The user's files: fitted regressors, the holdout CSV, a model store of their own."""
    d = tmp_path_factory.mktemp("regressors")
    data = load_diabetes(as_frame=True)
    X_tr, X_ho, y_tr, y_ho = train_test_split(data.data, data.target, test_size=0.3, random_state=0)
    joblib.dump(make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(X_tr, y_tr), d / "ridge.joblib")
    joblib.dump(make_pipeline(StandardScaler(), LinearRegression()).fit(X_tr, y_tr), d / "linear.joblib")
    shuffled = np.random.default_rng(0).permutation(y_tr.to_numpy())
    joblib.dump(make_pipeline(StandardScaler(), Ridge()).fit(X_tr, shuffled), d / "shuffled.joblib")
    X_ho.assign(**{TARGET: y_ho}).to_csv(d / "holdout.csv", index=False)
    return d


def cli(d: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BENTOML_HOME": str(d / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
    return subprocess.run([ROLLOUT, *args], env=env, cwd=d, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def registered(work: Path) -> Path:
    for source, tag in (("ridge.joblib", "diabetes:v1"), ("linear.joblib", "diabetes:v2"),
                        ("shuffled.joblib", "diabetes:bad")):  # fmt: skip
        done = cli(work, "import", source, "--name", tag, "--data", "holdout.csv", "--target", TARGET)
        assert done.returncode == 0, (tag, done.stdout, done.stderr)
        assert " registered Pipeline(StandardScaler, " in done.stdout and " regression " in done.stdout
    return work


def test_the_gate_passes_a_good_regressor_and_fails_a_worse_one_with_exit_3(registered: Path) -> None:
    good = cli(registered, "gate", "diabetes:v2", "--against", "diabetes:v1")
    assert good.returncode == 0 and "PASSED" in good.stdout and "holdout_mae" in good.stdout, good
    bad = cli(registered, "gate", "diabetes:bad", "--against", "diabetes:v1")
    assert bad.returncode == 3, bad
    assert (
        "holdout_mae" in bad.stderr and "% above diabetes:v1's" in bad.stderr and "holdout_r2" in bad.stderr
    )
    listed = cli(registered, "models")
    assert "diabetes:v1" in listed.stdout and "mae=" in listed.stdout and "r2=" in listed.stdout


def test_a_text_target_is_a_one_line_usage_error(registered: Path) -> None:
    table = pd.read_csv(registered / "holdout.csv")
    table.assign(**{TARGET: np.where(table[TARGET] > 140, "high", "low")}).to_csv(
        registered / "text.csv", index=False
    )
    done = cli(registered, "import", "ridge.joblib", "--name", "diabetes:text", "--data", "text.csv",
               "--target", TARGET)  # fmt: skip
    assert done.returncode == 2 and "not numbers" in done.stderr and done.stderr.count("\n") == 1, done


def _serve(d: Path, tag: str, extra_env: dict[str, str] | None = None) -> BentoServer:
    port = free_port()
    return start_bento_server(
        tag, port, bentoml_home=d / "bentoml", log_path=d / f"{tag.replace(':', '-')}-{port}.log",
        timeout=180, extra_env=extra_env,
    )  # fmt: skip


@pytest.fixture(scope="module")
def local(registered: Path) -> Iterator[BentoServer]:
    server = _serve(registered, "diabetes:v1")
    yield server
    server.stop()


def holdout(d: Path) -> tuple[pd.DataFrame, np.ndarray]:
    table = pd.read_csv(d / "holdout.csv")
    return table.drop(columns=[TARGET]), table[TARGET].to_numpy(dtype=np.float64)


def scrape(server: BentoServer) -> dict[str, float]:
    """``name{labels}`` -> value of every sample of this server's /metrics."""
    out: dict[str, float] = {}
    for line in httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_a_served_regressor_answers_values_for_records_rows_and_v2(
    registered: Path, local: BentoServer
) -> None:
    rows, _ = holdout(registered)
    expected = joblib.load(registered / "ridge.joblib").predict(rows.head(5))
    by_record = httpx.post(f"{local.url}/predict", json={"instances": rows.head(5).to_dict(orient="records")})
    by_row = httpx.post(f"{local.url}/predict", json={"instances": rows.head(5).to_numpy().tolist()})
    assert by_record.status_code == by_row.status_code == 200, (by_record.text, by_row.text)
    answer = by_record.json()
    assert set(answer) == {"predictions", "model", "version", "request_id"}  # no probabilities
    assert (
        np.allclose(answer["predictions"], expected) and answer["predictions"] == by_row.json()["predictions"]
    )
    meta = httpx.get(f"{local.url}/v2/models/diabetes").json()
    assert meta["outputs"] == [{"name": "predictions", "datatype": "FP64", "shape": [-1]}]
    assert meta["parameters"]["task"] == "regression" and meta["parameters"]["digest"].startswith("sha256:")
    tensor = {
        "name": "input-0",
        "shape": [2, 10],
        "datatype": "FP64",
        "data": rows.head(2).to_numpy().ravel().tolist(),
    }
    infer = httpx.post(f"{local.url}/v2/models/diabetes/infer", json={"inputs": [tensor]})
    assert infer.status_code == 200, infer.text
    (output,) = infer.json()["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("predictions", "FP64", [2])
    assert np.allclose(output["data"], expected[:2])


def _label(server: BentoServer, rid: str, labels: list[float], token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = (
        {"request_id": rid, "labels": labels} if len(labels) != 1 else {"request_id": rid, "label": labels[0]}
    )
    return httpx.post(f"{server.url}/feedback", json=body, headers=headers, timeout=10)


def _predict(server: BentoServer, rows: pd.DataFrame) -> tuple[str, list[float]]:
    rid = f"r-{uuid.uuid4().hex}"
    answer = httpx.post(f"{server.url}/predict", json={"instances": rows.to_numpy().tolist()},
                        headers={"X-Request-ID": rid}, timeout=10)  # fmt: skip
    assert answer.status_code == 200, answer.text
    return rid, answer.json()["predictions"]


def test_local_labels_count_their_errors_once_and_the_scraped_mae_is_numpys(
    registered: Path, local: BentoServer
) -> None:
    rows, truth = holdout(registered)
    before = scrape(local)
    predicted: list[float] = []
    labelled: list[float] = []
    for start in range(0, 40, 8):  # five requests of 8 rows, one label each
        rid, values = _predict(local, rows.iloc[start : start + 8])
        answer = _label(local, rid, truth[start : start + 8].tolist())
        assert answer.status_code == 200 and answer.json()["duplicate"] is False, answer.text
        assert answer.json()["absolute_error"] == pytest.approx(
            np.abs(np.subtract(values, truth[start : start + 8])).sum()
        )
        predicted += values
        labelled += truth[start : start + 8].tolist()
        again = _label(local, rid, truth[start : start + 8].tolist())
        assert again.status_code == 200 and again.json()["duplicate"] is True
    rid, two = _predict(local, rows.head(2))
    assert _label(local, rid, [1.0]).status_code == 422  # two rows predicted, one label
    assert _label(local, rid, [1.0, 2.0]).status_code == 200
    assert _label(local, rid, [1.0, 3.0]).status_code == 409
    assert _label(local, "never-made", [1.0]).status_code == 404
    refused = httpx.post(
        f"{local.url}/feedback", content=b'{"request_id": "%s", "label": 1e999}' % rid.encode()
    )
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "non_finite_value"
    predicted += two
    labelled += [1.0, 2.0]
    errors = np.subtract(predicted, labelled)
    after = scrape(local)
    key = '{model="diabetes",version="v1"}'

    def grew(name: str) -> float:
        return after[name + key] - before.get(name + key, 0.0)

    assert grew(n.FEEDBACK_TOTAL) == 42
    assert grew(n.FEEDBACK_ABSOLUTE_ERROR_SUM) / grew(n.FEEDBACK_TOTAL) == pytest.approx(
        np.mean(np.abs(errors))
    )
    assert np.sqrt(grew(n.FEEDBACK_SQUARED_ERROR_SUM) / 42) == pytest.approx(np.sqrt(np.mean(errors**2)))
    assert not any(
        name.startswith((n.PREDICTIONS_TOTAL, n.PREDICTION_CONFIDENCE, n.FEEDBACK_CORRECT_TOTAL))
        for name in after
    )


def test_each_predicted_value_is_counted_in_the_metadatas_buckets(
    registered: Path, local: BentoServer
) -> None:
    rows, truth = holdout(registered)
    before = scrape(local)
    _, values = _predict(local, rows.head(30))
    after = scrape(local)
    key = '{model="diabetes",version="v1"}'
    assert (
        after[n.PREDICTION_VALUE + "_count" + key] - before.get(n.PREDICTION_VALUE + "_count" + key, 0) == 30
    )
    assert after[n.PREDICTION_VALUE + "_sum" + key] - before.get(
        n.PREDICTION_VALUE + "_sum" + key, 0
    ) == pytest.approx(sum(values))
    bounds = sorted(
        float(name.split('le="')[1].split('"')[0])
        for name in after
        if name.startswith(n.PREDICTION_VALUE + "_bucket") and "+Inf" not in name
    )
    assert bounds[-1] == truth.max() and 10 <= len(bounds) <= 20
    low = bounds[len(bounds) // 2]
    bucket = f'{n.PREDICTION_VALUE}_bucket{{le="{low}",model="diabetes",version="v1"}}'
    assert after[bucket] - before.get(bucket, 0) == sum(v <= low for v in values)
    zscores = [name for name in after if name.startswith(n.FEATURE_ZSCORE + "_count")]
    assert len(zscores) == 10


def test_labels_through_redis_count_for_the_version_that_answered_and_the_exporter_serves_them(
    registered: Path, store: RedisServer
) -> None:
    env = {
        "BENTO_JOIN_STORE": store.url,
        "BENTO_JOIN_PASSWORD": store.password,
        "BENTO_FEEDBACK_TOKEN": TOKEN,
    }
    v1, bad = _serve(registered, "diabetes:v1", env), _serve(registered, "diabetes:bad", env)
    try:
        rows, truth = holdout(registered)
        errors: dict[str, list[float]] = {"v1": [], "bad": []}
        for start in range(0, 30, 10):
            part, labels = rows.iloc[start : start + 10], truth[start : start + 10].tolist()
            for server, version in ((v1, "v1"), (bad, "bad")):
                rid, values = _predict(server, part)
                other = bad if server is v1 else v1  # the label reaches a server of the other version
                answer = _label(other, rid, labels, TOKEN)
                assert answer.status_code == 200, answer.text
                assert answer.json()["counted_for"] == [version]
                assert _label(server, rid, labels, TOKEN).json()["duplicate"] is True
                assert _label(server, rid, [0.0] * 10, TOKEN).status_code == 409
                assert _label(server, rid, [0.0], TOKEN).status_code == 409  # labelled: a conflict first
                errors[version] += np.subtract(values, labels).tolist()
        rid, _ = _predict(v1, rows.head(3))
        assert _label(bad, rid, [1.0], TOKEN).status_code == 422
        assert _label(bad, "never-made", [1.0], TOKEN).status_code == 404
        assert _label(bad, rid, [1.0, 2.0, 3.0]).status_code == 401
        found = counters(connect(store.url, store.password))
        text = render_exporter(connect(store.url, store.password))
        for version, e in errors.items():
            total = found[(n.FEEDBACK_TOTAL, "diabetes", version)]
            absolute = found[(n.FEEDBACK_ABSOLUTE_ERROR_SUM, "diabetes", version)]
            squared = found[(n.FEEDBACK_SQUARED_ERROR_SUM, "diabetes", version)]
            assert total == 30 and absolute / total == pytest.approx(np.mean(np.abs(e)))
            assert np.sqrt(squared / total) == pytest.approx(np.sqrt(np.mean(np.square(e))))
            line = f'{n.FEEDBACK_ABSOLUTE_ERROR_SUM}{{model="diabetes",version="{version}"}} '
            assert float(text.split(line)[1].split("\n")[0]) == pytest.approx(absolute)
        assert (n.FEEDBACK_CORRECT_TOTAL, "diabetes", "v1") not in found
        assert f"# TYPE {n.FEEDBACK_SQUARED_ERROR_SUM} counter" in text
        assert errors["bad"] and np.mean(np.abs(errors["bad"])) > np.mean(np.abs(errors["v1"]))
        # the servers count no labels themselves with the shared store
        assert scrape(v1)[n.FEEDBACK_TOTAL + '{model="diabetes",version="v1"}'] == 0
    finally:
        v1.stop()
        bad.stop()


def test_the_redis_join_of_a_regressor_refuses_late_labels_and_answers_503_when_redis_is_away(
    store: RedisServer,
) -> None:
    j = RedisJoin(connect(store.url, store.password), "diabetes", "v1", window_seconds=1.0, lookup_wait=0.1,
                  prefix=f"t{uuid.uuid4().hex[:8]}:", regression=True)  # fmt: skip
    j.record("late", [150.25])
    j.flush()
    time.sleep(1.3)
    with pytest.raises(BadRequest) as late:
        j.resolve("late", [150.0])
    assert (late.value.status, late.value.code) == (410, "feedback_too_late")
    j.window_seconds = 60.0
    j.record("huge", [1.0])
    j.flush()
    with pytest.raises(BadRequest) as huge:
        j.resolve("huge", [1e200])
    assert (huge.value.status, huge.value.code) == (422, "value_out_of_range")
    exact = j.resolve("huge", [0.75])  # the refusal recorded nothing
    assert (exact.absolute_error, exact.squared_error) == (0.25, 0.0625)
    assert counters(j.client, j.prefix)[(n.FEEDBACK_ABSOLUTE_ERROR_SUM, "diabetes", "v1")] == 0.25
    away = RedisJoin(
        connect(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2), "diabetes", "v1", regression=True
    )
    with pytest.raises(BadRequest) as unavailable:
        away.resolve("any", [1.0])
    assert (unavailable.value.status, unavailable.value.retry_after) == (503, 1)
