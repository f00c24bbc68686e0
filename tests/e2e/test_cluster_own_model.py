"""A user's own model on real pods: the Bento image packs the user's models, the chart's values
name them, and a canary of the user's next version is gated on the labels of the user's own rows.

The user has fitted wine pipelines (tests/e2e/test_own_models.py ``make_wine``) and registered them
with `rollout import` in a model store of their own; the image is built from it as
``BENTO_MODELS="wine:v1 wine:v2 wine:bad" k8s/build/build-bento-image.sh`` would
(tests/k8s/buildah_images.py ``bento_image(models=...)``, the derived bentofile of
rollout/k8s/bentofile.py), then the chart is installed in gateway-api mode with ``service.name:
wine`` and ``models.stable: wine:v1`` (tests/k8s/cluster_rollouts.py). Locust sends the holdout's
rows through the Gateway and half of their true labels (LOAD_DATA, LOAD_TARGET); the accuracy gate
reads the chart's join store.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest

from tests.e2e import test_own_models as own
from tests.k8s import buildah_images
from tests.k8s import cluster_rollouts as cr
from tests.k8s.kserve import KServe

pytestmark = pytest.mark.k8s

ACCURACY = {
    "interval": "10s",
    "metrics": [
        {"name": "error-rate", "template": "error-rate", "threshold": {"max": 0.02}, "failureLimit": 1},
        {"name": "accuracy", "template": "accuracy", "direction": "higher",
         "judge": {"kind": "sequential", "minEffect": 0.05, "alpha": 0.01, "minSamples": 20}},
    ],
}  # fmt: skip
CANARY = {"canary": {"steps": [{"setWeight": 40}, {"analysis": {"intervals": 3}}, {"setWeight": 100}]}}


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cluster-own-model")
    own.make_wine(d)
    for args in own.WINE_IMPORTS:
        done = own.cli(d, "import", *args)
        assert done.returncode == 0, (args, done.stderr)
    return d


@pytest.fixture(scope="module")
def stack(
    kserve_node: KServe, user: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[cr.ClusterStack]:
    image = buildah_images.bento_image(models=["wine:v1", "wine:v2", "wine:bad"], home=user / "bentoml")
    rows = pd.read_csv(user / "wine-holdout.csv").drop(columns=["cultivar"])
    sample = {"instances": json.loads(rows.head(1).to_json(orient="records"))}
    extra = {"service.name": "wine", "models.stable": "wine:v1"}
    load = {"LOAD_DATA": str(user / "wine-holdout.csv"), "LOAD_TARGET": "cultivar"}
    with cr.cluster_stack(kserve_node, tmp_path_factory.mktemp("cluster"), extra, bento=image, sample=sample,
                          load_env=load) as s:  # fmt: skip
        s.until("the join store's exporter scraped", lambda: s.prom.query("model_join_store_up") == 1, 120,
                s.pod_state)  # fmt: skip
        yield s


def test_the_users_model_answers_through_the_gateway_in_its_own_terms(stack: cr.ClusterStack) -> None:
    answer = httpx.post(f"{stack.traefik.url}/predict", json=stack.sample, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-model-name"] == "wine" and answer.headers["x-model-version"] == "v1"
    assert answer.json()["predictions"][0] in {"0", "1", "2"}
    meta = httpx.get(f"{stack.traefik.url}/v2/models/wine", timeout=10).json()
    assert meta["parameters"]["feature_names"][:2] == ["alcohol", "malic_acid"], meta
    refused = httpx.post(f"{stack.traefik.url}/predict", json={"instances": [{"alcohol": 13.2}]}, timeout=10)
    assert refused.status_code == 422 and "malic_acid" in refused.text, refused.text


def test_a_users_good_version_is_promoted_and_a_bad_one_rolled_back_by_its_labels(
    stack: cr.ClusterStack,
) -> None:
    good = cr.ship(stack, "wine-good", "wine:v2", strategy=CANARY, extra={"rollout.analysis": ACCURACY},
                   feedback_share=0.5)  # fmt: skip
    assert good.phase == "Promoted", good.why()
    assert good.locust.get("labels_by_status", {}).get("200", 0) > 50, good.locust
    assert good.failed == 0, good.why()
    bad = cr.ship(stack, "wine-bad", "wine:bad", strategy=CANARY, feedback_share=0.5,
                  extra={"rollout.analysis": ACCURACY, "models.stable": "wine:v2"})  # fmt: skip
    assert bad.phase == "RolledBack", bad.why()
    failed = [e["message"] for e in bad.history if e["reason"] in ("AnalysisFailed", "MeasurementFailed")]
    assert any("accuracy" in m for m in failed) and not any("error-rate" in m for m in failed), bad.why()
