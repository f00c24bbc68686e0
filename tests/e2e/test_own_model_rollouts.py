"""A user's own models rolled out on the local stack under Locust, as the README's "Your own model"
steps do it: `rollout up`, Locust sending the user's rows and labels (LOAD_DATA, LOAD_TARGET),
`rollout run` gated on those labels. The models are made and registered with
tests/e2e/test_own_models.py's make_models / register_models (wine pipelines from joblib files,
breast cancer saved with ``bentoml.sklearn.save_model``); a diabetes regressor and winery (wine
with a string ``region`` column: a ColumnTransformer + OneHotEncoder pipeline, served records,
rows and OIP v2 inputs per feature incl. BYTES) are made here. Every server, nginx, Prometheus, the join store and Locust are real processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import joblib
import numpy as np
import pandas as pd
import pytest
import tritonclient.http as triton
import yaml
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_diabetes, load_wine
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from tritonclient.utils import InferenceServerException

from rollout.local.bento import start_bento_server
from tests.e2e import test_own_models as own
from tests.e2e.test_own_models import BIN, REPO, _env, _free_port, cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return own.register_models(own.make_models(tmp_path_factory.mktemp("own-rollouts")))


ACCURACY = {"name": "accuracy", "template": "accuracy", "direction": "higher",
            "judge": {"kind": "sequential", "minEffect": 0.05, "alpha": 0.01, "minSamples": 20}}  # fmt: skip
# a regressor's absolute errors spread wide (diabetes: MAE ~45, sd ~35): proving a candidate within
# 10 % of stable takes thousands of labels; within 25 % a minute of this load
MAE = {"name": "mae", "template": "mae", "judge": {"kind": "sequential", "minEffect": 0.25, "alpha": 0.01,
       "minSamples": 20}}  # fmt: skip


def _spec(d: Path, name: str, candidate: str, stable: str = "wine:v1", gate: dict = ACCURACY) -> Path:
    spec = {
        "apiVersion": "bento-rollout.io/v1alpha1", "kind": "ModelRollout", "metadata": {"name": name},
        "spec": {
            "service": stable.split(":")[0], "stable": {"model": stable}, "candidate": {"model": candidate},
            "progressDeadline": "90s",
            "strategy": {"canary": {"steps": [{"setWeight": 30}, {"analysis": {"intervals": 3}}, {"setWeight": 100}]}},
            "analysis": {"interval": "4s", "metrics": [
                {"name": "error-rate", "template": "error-rate", "threshold": {"max": 0.01}}, gate,
            ]},
        },
    }  # fmt: skip
    path = d / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@contextlib.contextmanager
def _up(d: Path, state: Path, model: str) -> Iterator[tuple[str, Path]]:
    """`rollout up` of ``model`` (its name the service): a stack of the test's own, at ``state``."""
    up = cli(d, "up", "--service", model.split(":")[0], "--model", model, state=state)
    assert up.returncode == 0, (up.stdout, up.stderr)
    url = next(w for w in up.stdout.split() if w.startswith("http://"))
    try:
        yield url, state
    finally:
        cli(d, "down", state=state)


@pytest.fixture
def wine_up(registered: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    with _up(registered, tmp_path / "state", "wine:v1") as stack:
        yield stack


def _under_locust(
    d: Path, stack: tuple[str, Path], spec: Path, data: str = "wine-holdout.csv", target: str = "cultivar"
) -> tuple[subprocess.CompletedProcess[str], dict]:
    """`rollout run SPEC` while Locust sends the user's rows and labels (LOAD_DATA, LOAD_TARGET)."""
    url, state = stack
    summary = state / f"{spec.stem}-locust.json"
    token = (state / "stack" / "join" / "feedback-token").read_text().strip()
    env = {**_env(d, state), "LOAD_DATA": str(d / data), "LOAD_TARGET": target,
           "LOAD_FEEDBACK_TOKEN": token, "LOAD_SUMMARY": str(summary)}  # fmt: skip
    with (state / f"{spec.stem}-locust.log").open("wb") as log:
        locust = subprocess.Popen(
            [str(BIN / "locust"), "-f", str(REPO / "loadtests" / "locustfile.py"), "--headless", "-u", "6",
             "-r", "3", "-t", "150s", "--host", url],
            env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        run = cli(d, "run", str(spec), timeout=200, state=state)
    finally:
        os.killpg(locust.pid, signal.SIGINT)  # Locust writes its summary on the way out
        locust.wait(timeout=30)
    return run, json.loads(summary.read_text())


def test_a_users_good_model_is_promoted_under_locust_with_its_own_rows_and_labels(
    registered: Path, wine_up: tuple[str, Path]
) -> None:
    run, load = _under_locust(registered, wine_up, _spec(registered, "wine-good", "wine:v2"))
    assert run.returncode == 0 and "Promoted" in run.stdout.splitlines()[-1], (run.stdout, run.stderr)
    assert "accuracy: Successful" in run.stdout, run.stdout  # the labels decided, not a timer
    assert load["labels_by_status"].get("200", 0) > 50 and not load.get("failures"), load
    assert load["answers_by_version"].get("v2", 0) > 50, load
    # wine:v2 serves now: a spec that starts from wine:v1 is refused before anything starts
    again = cli(registered, "run", str(_spec(registered, "wine-again", "wine:bad")), state=wine_up[1])
    assert again.returncode == 2 and "is served by version v2" in again.stderr, again
    assert again.stderr.count("\n") == 1, again.stderr


def test_a_users_bad_model_is_rolled_back_by_the_accuracy_gate(
    registered: Path, wine_up: tuple[str, Path]
) -> None:
    run, load = _under_locust(registered, wine_up, _spec(registered, "wine-bad", "wine:bad"))
    assert run.returncode == 1 and "RolledBack" in run.stdout, (run.returncode, run.stdout, run.stderr)
    assert "accuracy: Failed" in run.stdout and "regression proven" in run.stdout, run.stdout
    assert load["labels_by_status"].get("200", 0) > 20, load


def test_a_users_regressor_is_promoted_when_as_good_and_rolled_back_by_its_mae(
    registered: Path, tmp_path: Path
) -> None:
    """diabetes: Ridge pipelines (a good v2 with a different alpha; a bad one fitted on shuffled
    targets), labels their true values, the mae gate (sequential, minEffect 25 %)."""
    d = load_diabetes(as_frame=True)
    X_tr, X_ho, y_tr, y_ho = train_test_split(d.data, d.target, test_size=0.3, random_state=0)
    for name, alpha, target in (
        ("v1", 1.0, y_tr),
        ("v2", 0.5, y_tr),
        ("bad", 1.0, y_tr.sample(frac=1, random_state=3)),
    ):
        model = make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(X_tr, target.to_numpy())
        joblib.dump(model, registered / f"diabetes-{name}.joblib")
    X_ho.assign(progression=y_ho).to_csv(registered / "diabetes-holdout.csv", index=False)
    for name in ("v1", "v2", "bad"):
        done = cli(registered, "import", f"diabetes-{name}.joblib", "--name", f"diabetes:{name}", "--force",
                   "--data", "diabetes-holdout.csv", "--target", "progression")  # fmt: skip
        assert done.returncode == 0 and "registered" in done.stdout, done
    assert cli(registered, "gate", "diabetes:bad", "--against", "diabetes:v1").returncode == 3
    with _up(registered, tmp_path / "state", "diabetes:v1") as stack:
        good, load = _under_locust(registered, stack, _spec(registered, "diabetes-good", "diabetes:v2",
                                   "diabetes:v1", MAE), "diabetes-holdout.csv", "progression")  # fmt: skip
        assert good.returncode == 0 and "mae: Successful" in good.stdout, (good.stdout, good.stderr)
        assert load["labels_by_status"].get("200", 0) > 50 and not load.get("failures"), load
        bad, load = _under_locust(registered, stack, _spec(registered, "diabetes-bad", "diabetes:bad",
                                  "diabetes:v2", MAE), "diabetes-holdout.csv", "progression")  # fmt: skip
        assert bad.returncode == 1 and "mae: Failed" in bad.stdout, (bad.stdout, bad.stderr)


def make_winery(d: Path) -> list[str]:
    """Wine with a string feature: ``region`` ("north", "centre", "south": color intensity's
    terciles); Pipelines of a ColumnTransformer fitted on the DataFrame (v1 LogisticRegression, v2 a
    RandomForest), the holdout CSV. The numeric feature names."""
    w = load_wine(as_frame=True)
    regions = pd.qcut(w.data["color_intensity"], 3, labels=["north", "centre", "south"]).astype(str)
    numeric = [c for c in w.data.columns if c != "color_intensity"]
    frame = w.data[numeric].assign(region=regions)
    X_tr, X_ho, y_tr, y_ho = train_test_split(
        frame, w.target, test_size=0.3, random_state=0, stratify=w.target
    )
    for version, last in (
        ("v1", LogisticRegression(max_iter=1000)),
        ("v2", RandomForestClassifier(random_state=0)),
    ):
        columns = ColumnTransformer([("num", StandardScaler(), numeric),
                                     ("cat", OneHotEncoder(handle_unknown="ignore"), ["region"])])  # fmt: skip
        joblib.dump(
            Pipeline([("columns", columns), ("model", last)]).fit(X_tr, y_tr), d / f"winery-{version}.joblib"
        )
    X_ho.assign(cultivar=y_ho).to_csv(d / "winery-holdout.csv", index=False)
    return numeric


@pytest.fixture(scope="module")
def winery(registered: Path) -> Path:
    make_winery(registered)
    for version in ("v1", "v2"):
        done = cli(registered, "import", f"winery-{version}.joblib", "--name", f"winery:{version}", "--data",
                   "winery-holdout.csv", "--target", "cultivar")  # fmt: skip
        assert done.returncode == 0 and " registered " in done.stdout, done
    return registered


def test_a_pipeline_with_a_string_column_is_imported_gated_and_served_by_name_and_type(winery: Path) -> None:
    gate = cli(winery, "gate", "winery:v2", "--against", "winery:v1")
    assert gate.returncode == 0 and "PASSED" in gate.stdout, gate
    table = pd.read_csv(winery / "winery-holdout.csv").head(12)
    rows, truth = table.drop(columns=["cultivar"]), [str(v) for v in table["cultivar"]]
    names = [str(c) for c in rows.columns]
    server = start_bento_server("winery:v1", _free_port(), bentoml_home=winery / "bentoml",
                                log_path=winery / "winery.log", timeout=120)  # fmt: skip
    try:
        meta = httpx.get(f"{server.url}/v2/models/winery", timeout=10).json()
        assert meta["inputs"][-1] == {"name": "region", "datatype": "BYTES", "shape": [-1]}
        assert [i["name"] for i in meta["inputs"]] == names and meta["inputs"][0]["datatype"] == "FP64"
        assert meta["parameters"]["feature_categories"] == {"region": ["centre", "north", "south"]}
        records = json.loads(rows.to_json(orient="records"))
        by_record = httpx.post(f"{server.url}/predict", json={"instances": records}, timeout=10)
        by_row = httpx.post(f"{server.url}/predict", json={"instances": [list(r.values()) for r in records]},
                            timeout=10)  # fmt: skip
        assert by_record.status_code == by_row.status_code == 200, (by_record.text, by_row.text)
        predicted = by_record.json()["predictions"]
        assert predicted == by_row.json()["predictions"]
        assert np.mean([p == t for p, t in zip(predicted, truth, strict=True)]) > 0.8
        inputs = [{"name": n, "shape": [len(rows), 1], "datatype": "BYTES" if n == "region" else "FP64",
                   "data": rows[n].tolist()} for n in names]  # fmt: skip
        v2 = httpx.post(f"{server.url}/v2/models/winery/infer", json={"inputs": inputs}, timeout=10)
        assert v2.status_code == 200 and v2.json()["outputs"][0]["data"] == predicted, v2.text
        client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}", network_timeout=30.0)
        tensors = []
        for n in names:
            values = rows[n].to_numpy(dtype=object if n == "region" else np.float64).reshape(-1, 1)
            tensors.append(triton.InferInput(n, list(values.shape), "BYTES" if n == "region" else "FP64"))
            tensors[-1].set_data_from_numpy(values, binary_data=False)
        out = [triton.InferRequestedOutput("predictions", binary_data=False)]
        assert client.infer("winery", tensors, outputs=out).as_numpy("predictions").tolist() == predicted
        unseen = {**records[0], "region": "atlantis"}  # the model decides: OneHotEncoder ignores it
        assert (
            httpx.post(f"{server.url}/predict", json={"instances": [unseen]}, timeout=10).status_code == 200
        )
        wrong = httpx.post(f"{server.url}/predict", json={"instances": [records[0], {**records[1], "region": 3}]},
                           timeout=10)  # fmt: skip
        assert wrong.status_code == 422, wrong.text
        assert wrong.json()["error"]["message"] == "instance 1: feature 'region' must be a string, got 3"
        inputs[-1] = {**inputs[-1], "datatype": "FP64"}
        bad = httpx.post(f"{server.url}/v2/models/winery/infer", json={"inputs": inputs}, timeout=10)
        assert bad.status_code == 422 and bad.json() == {
            "error": "input 'region' has datatype 'FP64'; feature 'region' is a string: send BYTES"
        }, bad.text
        tensors[-1] = triton.InferInput("region", [len(rows), 1], "FP64")
        tensors[-1].set_data_from_numpy(np.zeros((len(rows), 1)), binary_data=False)
        with pytest.raises(InferenceServerException, match="input 'region' has datatype 'FP64'"):
            client.infer("winery", tensors, outputs=out)
        client.close()
    finally:
        server.stop()


def test_a_pipeline_with_a_string_column_is_promoted_under_locust_sending_records(
    winery: Path, tmp_path: Path
) -> None:
    with _up(winery, tmp_path / "state", "winery:v1") as stack:
        spec = _spec(winery, "winery-good", "winery:v2", "winery:v1")
        run, load = _under_locust(winery, stack, spec, "winery-holdout.csv", "cultivar")
    assert run.returncode == 0 and "Promoted" in run.stdout.splitlines()[-1], (run.stdout, run.stderr)
    assert "accuracy: Successful" in run.stdout, run.stdout
    assert load["labels_by_status"].get("200", 0) > 50 and not load.get("failures"), load
    assert load["answers_by_version"].get("v2", 0) > 50, load


def test_a_model_saved_with_bentoml_is_rolled_out_under_locust(registered: Path, tmp_path: Path) -> None:
    """breast cancer, both versions saved with bentoml.sklearn.save_model and registered in place:
    LinearSVC (no predict_proba) serving, LogisticRegression the candidate, string labels from a
    Parquet holdout."""
    stable, candidate = ((registered / f).read_text() for f in ("cancer-tag", "cancer-tag-2"))
    with _up(registered, tmp_path / "state", stable) as stack:
        run, load = _under_locust(registered, stack, _spec(registered, "cancer-canary", candidate, stable),
                                  "cancer-holdout.parquet", "diagnosis")  # fmt: skip
    assert run.returncode == 0 and "accuracy: Successful" in run.stdout, (run.stdout, run.stderr)
    assert load["labels_by_status"].get("200", 0) > 50 and not load.get("failures"), load
