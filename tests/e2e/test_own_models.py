"""A user's own scikit-learn models, registered, gated and served as the README's "Your own model"
steps do it: `rollout import`, `rollout gate`, `bentoml serve` of the imported model (the rollouts
under Locust: tests/e2e/test_own_model_rollouts.py, which reuses make_models / register_models).

Three of scikit-learn's bundled datasets other than iris, each saved a way a user saves a model:
- wine: Pipeline(StandardScaler, LogisticRegression) fitted on a DataFrame, dumped with joblib;
  a RandomForest pipeline as the good candidate; one trained on 40 % flipped labels as the bad one;
- breast cancer: Pipeline(StandardScaler, LinearSVC) (no predict_proba) and a LogisticRegression
  pipeline, string classes, saved with ``bentoml.sklearn.save_model`` (no metadata of ours) and
  registered in place, the holdout a Parquet file;
- digits: a RandomForest fitted on a numpy array (no feature names: the CSV's columns name them),
  pickled.
Every server is a real ``bentoml serve``.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import httpx
import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_digits, load_wine
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from rollout.local.bento import start_bento_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ROLLOUT = str(BIN / "rollout")


def make_wine(d: Path) -> None:
    """The wine user's files in ``d``: three fitted pipelines (joblib) and the holdout CSV."""
    w = load_wine(as_frame=True)
    X_tr, X_ho, y_tr, y_ho = train_test_split(
        w.data, w.target, test_size=0.3, random_state=0, stratify=w.target
    )
    joblib.dump(make_pipeline(StandardScaler(), LogisticRegression()).fit(X_tr, y_tr), d / "wine-lr.joblib")
    forest = RandomForestClassifier(n_estimators=50, random_state=0)
    joblib.dump(make_pipeline(StandardScaler(), forest).fit(X_tr, y_tr), d / "wine-rf.joblib")
    flipped = y_tr.to_numpy().copy()
    idx = np.random.default_rng(1).choice(len(flipped), int(0.4 * len(flipped)), replace=False)
    flipped[idx] = (flipped[idx] + 1) % 3
    joblib.dump(
        make_pipeline(StandardScaler(), LogisticRegression()).fit(X_tr, flipped), d / "wine-bad.joblib"
    )
    X_ho.assign(cultivar=y_ho).to_csv(d / "wine-holdout.csv", index=False)


WINE_IMPORTS = (
    ("wine-lr.joblib", "--name", "wine:v1", "--data", "wine-holdout.csv", "--target", "cultivar"),
    ("wine-rf.joblib", "--name", "wine:v2", "--data", "wine-holdout.csv", "--target", "cultivar"),
    ("wine-bad.joblib", "--name", "wine:bad", "--data", "wine-holdout.csv", "--target", "cultivar"),
)


def save_with_bentoml(d: Path, name: str, model: object) -> str:
    """``model`` saved as a user of BentoML saves it (``bentoml.sklearn.save_model``, no metadata
    of ours) in ``d``'s model store; its tag."""
    joblib.dump(model, d / f"{name}.joblib")
    code = (
        "import bentoml, joblib, sys; m = joblib.load(sys.argv[1]); "
        "print(bentoml.sklearn.save_model(sys.argv[2], m).tag)"
    )
    saved = subprocess.run(
        [sys.executable, "-c", code, str(d / f"{name}.joblib"), name], env=_env(d), capture_output=True,
        text=True, timeout=120, check=True,
    )  # fmt: skip
    return saved.stdout.strip().splitlines()[-1]


def make_models(d: Path) -> Path:
    """The user's files in ``d``: fitted models and holdout data, and a model store of their own."""
    make_wine(d)

    digits = load_digits()
    X_tr, X_ho, y_tr, y_ho = train_test_split(digits.data, digits.target, test_size=0.3, random_state=0)
    (d / "digits.pkl").write_bytes(
        pickle.dumps(RandomForestClassifier(n_estimators=30, random_state=0).fit(X_tr, y_tr))
    )
    frame = pd.DataFrame(X_ho, columns=[f"px{i}" for i in range(64)]).assign(digit=y_ho)
    frame.to_csv(d / "digits-holdout.csv", index=False)

    b = load_breast_cancer(as_frame=True)
    y = b.target.map(dict(enumerate(b.target_names)))
    X_tr, X_ho, y_tr, y_ho = train_test_split(b.data, y, test_size=0.3, random_state=0, stratify=y)
    X_ho.assign(diagnosis=y_ho.values).to_parquet(d / "cancer-holdout.parquet")
    svm = make_pipeline(StandardScaler(), LinearSVC()).fit(X_tr, y_tr)
    (d / "cancer-tag").write_text(save_with_bentoml(d, "cancer", svm))
    logistic = make_pipeline(StandardScaler(), LogisticRegression()).fit(X_tr, y_tr)
    (d / "cancer-tag-2").write_text(save_with_bentoml(d, "cancer", logistic))
    return d


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_models(tmp_path_factory.mktemp("own-models"))


def _env(d: Path, state: Path | None = None) -> dict[str, str]:
    return {
        **os.environ, "BENTOML_HOME": str(d / "bentoml"), "ROLLOUT_HOME": str(state or d / "state"),
        "BENTOML_DO_NOT_TRACK": "True",
    }  # fmt: skip


def cli(
    d: Path, *args: str, timeout: float = 300, state: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ROLLOUT, *args], env=_env(d, state), cwd=d, capture_output=True, text=True, timeout=timeout
    )


def register_models(work: Path) -> Path:
    """`rollout import` of every model make_models made (the BentoML-saved ones in place)."""
    for args in (
        *WINE_IMPORTS,
        ("digits.pkl", "--name", "digits:v1", "--data", "digits-holdout.csv", "--target", "digit"),
        *(((work / tag).read_text(), "--data", "cancer-holdout.parquet", "--target", "diagnosis")
          for tag in ("cancer-tag", "cancer-tag-2")),  # in place, in the store
    ):  # fmt: skip
        done = cli(work, "import", *args)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        assert " registered " in done.stdout and "sha256:" in done.stdout, done.stdout
    return work


@pytest.fixture(scope="module")
def registered(work: Path) -> Path:
    return register_models(work)


def test_imported_models_are_listed_with_what_was_derived(registered: Path) -> None:
    listed = {row["tag"]: row for row in json.loads(cli(registered, "models", "--json").stdout)}
    cancer = (registered / "cancer-tag").read_text()
    second = (registered / "cancer-tag-2").read_text()
    assert set(listed) == {"wine:v1", "wine:v2", "wine:bad", "digits:v1", cancer, second}
    assert listed[cancer]["estimator"] == "Pipeline(StandardScaler, LinearSVC)"
    assert listed["wine:v1"]["holdoutAccuracy"] > 0.9 > listed["wine:bad"]["holdoutAccuracy"]
    assert cli(registered, "models", "--verify").returncode == 0


def test_the_gate_passes_a_good_model_and_fails_a_bad_one_on_the_users_holdout(registered: Path) -> None:
    good = cli(registered, "gate", "wine:v2", "--against", "wine:v1")
    assert good.returncode == 0 and "PASSED" in good.stdout, good
    bad = cli(registered, "gate", "wine:bad", "--against", "wine:v1")
    assert bad.returncode == 3 and "holdout_accuracy" in bad.stderr, bad
    other = cli(registered, "gate", "digits:v1", "--against", "wine:v1")  # other data: not comparable
    assert other.returncode == 3 and "not comparable" in other.stderr, other


def test_importing_again_or_with_a_wrong_target_is_one_line_exit_2(registered: Path) -> None:
    again = cli(registered, "import", "wine-lr.joblib", "--name", "wine:v1", "--data", "wine-holdout.csv",
                "--target", "cultivar")  # fmt: skip
    assert again.returncode == 2 and "pass --force" in again.stderr and again.stderr.count("\n") == 1, again
    wrong = cli(registered, "import", "wine-lr.joblib", "--name", "wine:v9", "--data", "wine-holdout.csv",
                "--target", "alcohol")  # fmt: skip
    assert wrong.returncode == 2 and "--target 'alcohol' is one of the model's features" in wrong.stderr, (
        wrong
    )
    assert "wine:v9" not in cli(registered, "models").stdout


@pytest.mark.parametrize(
    ("model", "data", "target"),
    [("cancer", "cancer-holdout.parquet", "diagnosis"), ("digits:v1", "digits-holdout.csv", "digit")],
)
def test_a_served_model_answers_records_and_rows_in_its_class_names_and_takes_labels(
    registered: Path, model: str, data: str, target: str
) -> None:
    tag = (registered / "cancer-tag").read_text() if model == "cancer" else model
    table = (
        pd.read_parquet(registered / data) if data.endswith(".parquet") else pd.read_csv(registered / data)
    )
    rows, truth = table.drop(columns=[target]).head(20), [str(v) for v in table[target].head(20)]
    server = start_bento_server(
        tag, _free_port(), bentoml_home=registered / "bentoml", log_path=registered / f"{model}.log",
        timeout=120,
    )  # fmt: skip
    try:
        name = tag.split(":")[0]
        meta = httpx.get(f"{server.url}/v2/models/{name}", timeout=10).json()
        assert meta["parameters"]["feature_names"] == [str(c) for c in rows.columns]
        by_record = httpx.post(f"{server.url}/predict", json={"instances": json.loads(rows.to_json(orient="records"))},
                               timeout=10)  # fmt: skip
        by_row = httpx.post(f"{server.url}/predict", json={"instances": rows.to_numpy().tolist()}, timeout=10)
        assert by_record.status_code == by_row.status_code == 200, (by_record.text, by_row.text)
        predicted = by_record.json()["predictions"]
        assert predicted == by_row.json()["predictions"]
        assert set(predicted) <= set(meta["parameters"]["class_names"])
        assert np.mean([p == t for p, t in zip(predicted, truth, strict=True)]) > 0.8
        label = httpx.post(f"{server.url}/feedback", json={"request_id": by_record.headers["x-request-id"],
                           "labels": truth}, timeout=10)  # fmt: skip
        assert label.status_code == 200, label.text
        missing = httpx.post(f"{server.url}/predict", json={"instances": [{"nope": 1}]}, timeout=10)
        assert missing.status_code == 422 and str(rows.columns[0]) in missing.text, missing.text
    finally:
        server.stop()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
