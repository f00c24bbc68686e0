"""Every field of the ModelRollout API is documented, from one source: the field descriptions of
the pydantic models in rollout/spec.py. The generated CRD (what `kubectl explain` prints) and the
chart's values schema carry them for every property, spec and status, word for word."""

from __future__ import annotations

import json
import types
import typing
from typing import Any

import yaml
from pydantic import BaseModel

from rollout import spec
from rollout.k8s import crd, generate, values_schema


def _models(model: type[BaseModel], seen: set[type[BaseModel]] | None = None) -> set[type[BaseModel]]:
    """``model`` and every model its fields hold (through lists, dicts and optionals)."""
    seen = set() if seen is None else seen
    seen.add(model)
    for info in model.model_fields.values():
        for sub in _inner_models(info.annotation):
            if sub not in seen:
                _models(sub, seen)
    return seen


def _inner_models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, list, dict, typing.Annotated):
        return [m for a in args for m in _inner_models(a)]
    return []


def _undocumented(node: dict[str, Any], path: str, defs: dict[str, Any]) -> list[str]:
    """Properties without a description under ``node`` ($refs into ``defs`` and unions followed)."""
    if "$ref" in node:
        node = {**defs[node["$ref"].rsplit("/", 1)[-1]], **node}
    out: list[str] = []
    for branch in node.get("anyOf", []):
        out.extend(_undocumented(branch, path, defs))
    for key, sub in (node.get("properties") or {}).items():
        if not str(sub.get("description", "")).strip():
            out.append(f"{path}.{key}")
        out.extend(_undocumented(sub, f"{path}.{key}", defs))
    if isinstance(node.get("items"), dict):
        out.extend(_undocumented(node["items"], f"{path}[]", defs))
    return out


def _descriptions(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["description"]] if isinstance(node.get("description"), str) else []
        return own + [d for k, v in node.items() if k != "description" for d in _descriptions(v)]
    if isinstance(node, list):
        return [d for v in node for d in _descriptions(v)]
    return []


def _committed_crd_schema() -> dict[str, Any]:
    doc = yaml.safe_load(generate.CRD_FILE.read_text(encoding="utf-8"))
    return doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_every_field_of_the_spec_models_has_a_description() -> None:
    missing = [
        f"{model.__name__}.{name}"
        for model in _models(spec.ModelRollout)
        for name, info in model.model_fields.items()
        if not (info.description or "").strip()
    ]
    assert missing == [], f"fields without Field(description=...): {missing}"


def test_no_crd_property_lacks_a_description_spec_and_status() -> None:
    schema = _committed_crd_schema()
    # the one exception the API server makes: metadata may hold nothing but name and generateName
    # (it refuses even a description) and is documented by the server as ObjectMeta
    assert schema["properties"]["metadata"] == {"type": "object"}
    missing = [p for p in _undocumented(schema, "", {}) if p != ".metadata"]
    assert missing == [], f"CRD properties without a description: {missing}"
    assert schema["description"] and schema["properties"]["status"]["description"]


def test_no_values_schema_property_lacks_a_description() -> None:
    schema = json.loads(generate.VALUES_SCHEMA_FILE.read_text(encoding="utf-8"))
    missing = _undocumented(schema, "", schema["$defs"])
    assert missing == [], f"values.schema.json properties without a description: {missing}"


def test_crd_descriptions_are_the_spec_field_descriptions_word_for_word() -> None:
    """Walk each spec model beside its CRD node: each property says what its field says."""
    schema = crd.structural_schema()
    checked = 0

    def walk(model: type[BaseModel], node: dict[str, Any], path: str) -> None:
        nonlocal checked
        for name, info in model.model_fields.items():
            wire = info.alias or name
            prop = node["properties"][wire]
            assert prop["description"] == (info.description or "").replace("``", "`"), f"{path}.{wire}"
            checked += 1
            for sub in _inner_models(info.annotation):
                inner = prop["items"] if prop.get("type") == "array" else prop
                walk(sub, inner, f"{path}.{wire}")

    walk(spec.RolloutSpec, schema, "spec")
    assert checked >= 70
    top = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for wire, name in (("apiVersion", "api_version"), ("kind", "kind"), ("spec", "spec")):
        assert top["properties"][wire]["description"] == spec.ModelRollout.model_fields[name].description


def test_the_chart_takes_the_rollout_fields_descriptions_from_the_spec() -> None:
    values = values_schema.values_schema()
    defs = values["$defs"]
    strategy = defs["Strategy"]["properties"]["canary"]
    assert strategy["description"] == spec.Strategy.model_fields["canary"].description
    canary = defs["CanaryStrategy"]["properties"]
    assert canary["stepWeight"]["description"] == spec.CanaryStrategy.model_fields["step_weight"].description
    rollout = values["properties"]["rollout"]["properties"]
    assert rollout["analysis"]["description"] == spec.RolloutSpec.model_fields["analysis"].description
    models = values["properties"]["models"]["properties"]
    assert models["stable"]["description"] == spec.ModelRef.model_fields["model"].description


def test_descriptions_are_sentences_of_plain_text() -> None:
    """Read by people in `kubectl explain` and editors: whole sentences, no reST markup."""
    crd_text = _descriptions(_committed_crd_schema())
    values_text = _descriptions(json.loads(generate.VALUES_SCHEMA_FILE.read_text(encoding="utf-8")))
    for text in crd_text + values_text:
        assert "``" not in text, text
        whole = text.endswith(".") or "More info: https://" in text  # Kubernetes' own end on a link
        assert text == text.strip() and whole, f"not a sentence: {text!r}"


def test_duration_fields_say_their_format() -> None:
    durations = []
    for model in _models(spec.ModelRollout):
        for name, info in model.model_fields.items():
            optional = spec.Duration in typing.get_args(info.annotation)  # Duration | None
            if optional or any(getattr(m, "func", None) is spec.parse_duration for m in info.metadata):
                durations.append(f"{model.__name__}.{name}")
                assert (info.description or "").endswith(spec.DURATION_FORMAT), f"{model.__name__}.{name}"
    assert {"RolloutSpec.progress_deadline", "Pause.duration"} <= set(durations) and len(durations) >= 10
