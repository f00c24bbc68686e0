"""The controller compares what each InferenceService's model server runs (its BENTO_MODEL_TAG and
BENTO_MODEL_DIGEST, as the chart sets them) with the ModelRollout: a hand-edited rollout whose
model or pin never reached the InferenceService would otherwise be judged on another model."""

from __future__ import annotations

from typing import Any

from rollout.controller.readiness import served_as
from rollout.spec import ModelRef

PIN = "sha256:" + "a" * 64


def isvc(
    *env: tuple[str, str], name: str = "iris-candidate", extra: list[Any] | None = None
) -> dict[str, Any]:
    server = {"name": "kserve-container", "env": [{"name": k, "value": v} for k, v in env]}
    return {"metadata": {"name": name}, "spec": {"predictor": {"containers": [*(extra or []), server]}}}


def test_the_model_the_rollout_names_and_pins_passes() -> None:
    obj = isvc(("BENTO_MODEL_TAG", "iris:v2"), ("BENTO_MODEL_DIGEST", PIN))
    assert served_as(obj, ModelRef(model="iris:v2", digest=PIN), "candidate") is None
    assert served_as(obj, ModelRef(model="iris:v2"), "candidate") is None  # no pin asked for


def test_another_model_is_named_with_both_tags() -> None:
    why = served_as(isvc(("BENTO_MODEL_TAG", "iris:v2")), ModelRef(model="iris:v3"), "candidate")
    assert why == "iris-candidate serves BENTO_MODEL_TAG=iris:v2, but the ModelRollout's candidate is iris:v3"


def test_a_pin_the_server_does_not_enforce_names_the_value_to_set() -> None:
    why = served_as(isvc(("BENTO_MODEL_TAG", "iris:v1")), ModelRef(model="iris:v1", digest=PIN), "stable")
    assert why is not None and "without BENTO_MODEL_DIGEST" in why and PIN in why
    assert "models.stableDigest" in why
    other = "sha256:" + "b" * 64
    why = served_as(
        isvc(("BENTO_MODEL_TAG", "iris:v1"), ("BENTO_MODEL_DIGEST", other)),
        ModelRef(model="iris:v1", digest=PIN),
        "stable",
    )
    assert why is not None and f"with BENTO_MODEL_DIGEST={other}" in why


def test_the_model_server_is_kserve_container_even_behind_a_sidecar() -> None:
    sidecar = {"name": "proxy", "env": [{"name": "BENTO_MODEL_TAG", "value": "not-this"}]}
    obj = isvc(("BENTO_MODEL_TAG", "iris:v2"), extra=[sidecar])
    assert served_as(obj, ModelRef(model="iris:v2"), "candidate") is None


def test_a_predictor_that_is_not_a_bento_is_not_judged_by_tag_but_a_pin_still_needs_the_server() -> None:
    bare: dict[str, Any] = {
        "metadata": {"name": "x"},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}}}},
    }
    assert served_as(bare, ModelRef(model="iris:v2"), "candidate") is None
    assert served_as(bare, ModelRef(model="iris:v2", digest=PIN), "candidate") is not None
