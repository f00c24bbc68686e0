"""The ModelRollout CRD and the chart's values schema are generated from rollout/spec.py, are
structural (the API server would take them), and the committed files never drift from the spec."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from rollout.errors import SpecError
from rollout.k8s import crd, generate, values_schema
from rollout.spec import RolloutSpec, load_rollout, parse_rollout

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "k8s" / "examples").glob("*.yaml"))


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        out.append((path, node))
        for key, sub in (node.get("properties") or {}).items():
            out.extend(_walk(sub, f"{path}.{key}"))
        if isinstance(node.get("items"), dict):
            out.extend(_walk(node["items"], f"{path}[]"))
    return out


def _spec_schema(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def test_committed_crd_file_is_what_the_generator_produces_from_the_spec() -> None:
    committed = generate.CRD_FILE.read_text(encoding="utf-8")
    assert committed == crd.render_crd(), "k8s/crd is stale: run `python -m rollout.k8s.generate`"


def test_no_generated_file_is_stale() -> None:
    assert generate.stale() == [], "run `python -m rollout.k8s.generate` and commit the result"


def test_check_mode_names_a_stale_file_and_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    stale_copy = tmp_path / "crd.yaml"
    stale_copy.write_text("kind: Stale\n", encoding="utf-8")
    monkeypatch.setattr(generate, "outputs", lambda: {stale_copy: crd.render_crd})
    monkeypatch.setattr(generate, "ROOT", tmp_path)
    assert generate.main(["--check"]) == 1
    assert "stale: crd.yaml" in capsys.readouterr().err


def test_schema_is_structural_no_refs_unions_defaults_or_untyped_nodes() -> None:
    doc = yaml.safe_load(generate.CRD_FILE.read_text(encoding="utf-8"))
    schema = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    text = json.dumps(schema)
    for banned in ('"$ref"', '"anyOf"', '"oneOf"', '"allOf"', '"default"', '"$defs"', '"title"'):
        assert banned not in text, f"{banned} in the CRD schema: the API server rejects or mangles it"
    for path, node in _walk(schema):
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node, f"{path}: int-or-string fields must not carry a type"
        else:
            assert "type" in node, f"{path} has no type: not a structural schema"
        if "properties" in node:
            assert "additionalProperties" not in node, f"{path}: properties and additionalProperties together"
        for flag in ("exclusiveMinimum", "exclusiveMaximum"):
            assert node.get(flag, True) is True, f"{path}.{flag} must be a boolean in OpenAPI v3.0"
        if node.get("pattern") and node.get("type") == "string":
            assert "maxLength" in node, f"{path}: unbounded strings make CEL rules too costly"


def test_every_spec_field_of_the_pydantic_model_is_in_the_crd_with_its_wire_name() -> None:
    spec = crd.structural_schema()

    def names(model: type, node: dict[str, Any], path: str) -> None:
        for field_name, info in model.model_fields.items():
            wire = info.alias or field_name
            assert wire in node["properties"], f"{path}.{wire} missing from the CRD"

    names(RolloutSpec, spec, "spec")
    assert set(spec["required"]) == {"service", "stable", "candidate", "strategy"}
    strategy = spec["properties"]["strategy"]["properties"]
    assert set(strategy) == {"canary", "blueGreen", "shadow", "abTest"}
    assert strategy["canary"]["properties"]["steps"]["minItems"] == 1
    metrics = spec["properties"]["analysis"]["properties"]["metrics"]
    assert metrics["x-kubernetes-list-type"] == "map" and metrics["x-kubernetes-list-map-keys"] == ["name"]
    duration = spec["properties"]["analysis"]["properties"]["interval"]
    assert duration["x-kubernetes-int-or-string"] is True and "pattern" in duration


def test_cross_field_rules_of_pydantic_are_cel_rules_on_the_same_objects() -> None:
    spec = crd.structural_schema()
    rules = {r["message"] for r in spec["x-kubernetes-validations"]}
    assert "stable and candidate are the same model" in rules
    strategy_rules = spec["properties"]["strategy"]["x-kubernetes-validations"]
    assert "exactly one of canary, blueGreen, shadow, abTest" in strategy_rules[0]["message"]


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda s: s["strategy"].update(shadow={}), "exactly one of canary, blueGreen, shadow, abTest"),
        (lambda s: s["candidate"].update(model=s["stable"]["model"]), "same model"),
        (lambda s: s["strategy"]["canary"].update(stepWeight=10), "exactly one of steps, stepWeight"),
        (lambda s: s["strategy"]["canary"]["steps"][0].update(pause={}), "exactly one of setWeight, pause"),
        (lambda s: s["analysis"]["metrics"][0].pop("threshold"), "needs a threshold"),
        (lambda s: s["analysis"]["metrics"][0].update(query="up"), "exactly one of template, query"),
    ],
)
def test_each_cel_rule_matches_an_object_pydantic_rejects(mutate: Any, words: str) -> None:
    """The CEL rules restate the pydantic validators: an object one rejects, the other must too."""
    doc = yaml.safe_load((ROOT / "k8s" / "examples" / "canary.yaml").read_text(encoding="utf-8"))
    mutate(doc["spec"])
    with pytest.raises(SpecError):
        parse_rollout(doc)
    all_messages = json.dumps(crd.crd())
    assert words.split(",")[0] in all_messages


def test_status_subresource_printer_columns_and_names() -> None:
    version = crd.crd()["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase"
    assert columns["Candidate"] == ".spec.candidate.model"
    assert columns["Age"] == ".metadata.creationTimestamp"
    names = crd.crd()["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("ModelRollout", "modelrollouts", ["mro"])
    assert crd.crd()["metadata"]["name"] == "modelrollouts.bento-rollout.io"


def test_chart_carries_the_crd_through_a_symlink_not_a_second_copy() -> None:
    chart_crd = ROOT / "helm" / "bento-rollout" / "crds" / generate.CRD_FILE.name
    assert chart_crd.is_symlink(), "helm/bento-rollout/crds must link to k8s/crd (single source)"
    assert Path(os.path.realpath(chart_crd)) == generate.CRD_FILE.resolve()
    copies = [
        p
        for p in (ROOT / "helm").rglob("*.yaml")
        if not p.is_symlink() and "CustomResourceDefinition" in p.read_text(encoding="utf-8")
    ]
    assert copies == [], f"hand-kept CRD copies in the chart: {copies}"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_examples_are_valid_rollouts(path: Path) -> None:
    rollout = load_rollout(path)
    assert rollout.metadata.name.startswith("iris-")


def test_there_is_an_example_for_every_strategy() -> None:
    strategies = {load_rollout(p).spec.strategy.name for p in EXAMPLES}
    assert strategies == {"canary", "blue_green", "shadow", "ab_test"}


def test_values_schema_takes_the_rollout_parts_from_the_spec() -> None:
    schema = json.loads(generate.VALUES_SCHEMA_FILE.read_text(encoding="utf-8"))
    assert schema == values_schema.values_schema()
    rollout = schema["properties"]["rollout"]["properties"]
    assert rollout["strategy"]["$ref"] == "#/$defs/Strategy"  # with the spec field's description
    assert set(schema["$defs"]["Strategy"]["properties"]) == {"canary", "blueGreen", "shadow", "abTest"}
    tag = schema["properties"]["models"]["properties"]["stable"]["pattern"]
    assert tag == RolloutSpec.model_json_schema()["$defs"]["ModelRef"]["properties"]["model"]["pattern"]
    interval = schema["$defs"]["AnalysisSpec"]["properties"]["interval"]
    assert interval["type"] == ["string", "integer"], "durations are '30s' or a number of seconds"
    assert schema["properties"]["routing"]["properties"]["mode"]["enum"] == [
        "kserve",
        "istio",
        "gateway-api",
        "traefik",
    ]


def test_default_values_rollout_section_is_a_valid_spec() -> None:
    values = yaml.safe_load((ROOT / "helm" / "bento-rollout" / "values.yaml").read_text(encoding="utf-8"))
    doc = {
        "apiVersion": "bento-rollout.io/v1alpha1",
        "kind": "ModelRollout",
        "metadata": {"name": values["service"]["name"]},
        "spec": {
            "service": values["service"]["name"],
            "stable": {"model": values["models"]["stable"]},
            # the defaults name no candidate (stable alone): the one a user sets
            "candidate": {"model": values["models"]["candidate"] or "iris:v2"},
            "strategy": values["rollout"]["strategy"],
            "analysis": values["rollout"]["analysis"],
            "router": {"provider": values["routing"]["mode"]},
        },
    }
    assert parse_rollout(doc).spec.strategy.name == "canary"


def test_generator_refuses_what_a_structural_schema_cannot_express() -> None:
    from pydantic import BaseModel

    class Union(BaseModel):
        value: int | str

    with pytest.raises(SpecError, match="cannot express a union of 2 types"):
        crd.structural_schema(Union)  # type: ignore[arg-type]


def test_default_values_satisfy_the_values_schema_and_a_typo_does_not() -> None:
    import jsonschema

    schema = json.loads(generate.VALUES_SCHEMA_FILE.read_text(encoding="utf-8"))
    values = yaml.safe_load((ROOT / "helm" / "bento-rollout" / "values.yaml").read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    assert [e.message for e in validator.iter_errors(values)] == []
    values["routing"]["candidateWieght"] = 10
    values["rollout"]["strategy"]["canary"]["steps"][0]["setWeight"] = 120
    errors = sorted(e.message for e in validator.iter_errors(values))
    assert any("candidateWieght" in m for m in errors)
    assert any("120" in m for m in errors)
