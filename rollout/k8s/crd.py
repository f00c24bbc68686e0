"""The ModelRollout CustomResourceDefinition, generated from the pydantic spec (rollout/spec.py).

The API server only accepts *structural* schemas: no ``$ref``, no ``anyOf``/``oneOf`` that carry
types, ``type`` everywhere except on int-or-string fields, no ``additionalProperties`` beside
``properties``, and defaults that validate. ``structural_schema`` turns pydantic's JSON schema into
one; the cross-field checks that pydantic does in Python validators (exactly one strategy, a canary
with steps or stepWeight, ...) are repeated as CEL rules (``x-kubernetes-validations``) so the API
server rejects the same objects with the same message. Defaults are left out on purpose: the
controller parses objects with pydantic, which applies them, and ``kubectl get -o yaml`` shows what
the user wrote. Every property's description is its pydantic field's (``kubectl explain`` prints
them; tests/unit/test_field_docs.py); the status schema, which the controller's status.py fills
and pydantic does not model, is described here.

Who calls it: ``python -m rollout.k8s.generate`` (writes k8s/crd/), the Helm values-schema
generator (rollout/k8s/values_schema.py) and tests/unit/test_crd*.py (drift and structure checks).
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from rollout import spec
from rollout.errors import SpecError
from rollout.spec import API_GROUP, KIND, RolloutSpec

PLURAL = "modelrollouts"
SINGULAR = "modelrollout"
SHORT_NAMES = ["mro"]
VERSION = "v1alpha1"
CRD_NAME = f"{PLURAL}.{API_GROUP}"

# JSON-schema keys the API server does not need or does not accept in a structural schema
_DROP = {"title", "default", "examples", "$defs", "additionalProperties", "$schema"}

# Cross-field rules the pydantic validators enforce, as CEL, keyed by the pydantic model's name.
# Each message is the one pydantic gives, so users see the same words from kubectl and the CLI.
CEL_RULES: dict[str, list[dict[str, str]]] = {
    "RolloutSpec": [
        {
            "rule": "self.stable.model != self.candidate.model",
            "message": "stable and candidate are the same model",
        },
        {
            "rule": "!has(self.strategy.abTest) || (has(self.analysis) && has(self.analysis.metrics)"
            " && self.analysis.metrics.exists(m, m.name == self.strategy.abTest.metric))",
            "message": "strategy.abTest.metric is not one of analysis.metrics",
        },
    ],
    "Strategy": [
        {
            "rule": "[has(self.canary), has(self.blueGreen), has(self.shadow), has(self.abTest)]"
            ".filter(x, x).size() == 1",
            "message": "strategy needs exactly one of canary, blueGreen, shadow, abTest",
        }
    ],
    "CanaryStrategy": [
        {
            "rule": "has(self.steps) != has(self.stepWeight)",
            "message": "a canary needs exactly one of steps, stepWeight",
        }
    ],
    "CanaryStep": [
        {
            "rule": "[has(self.setWeight), has(self.pause), has(self.analysis)].filter(x, x).size() == 1",
            "message": "a canary step needs exactly one of setWeight, pause, analysis",
        }
    ],
    "HeaderMatch": [
        {
            "rule": "has(self.header) != has(self.cookie)",
            "message": "a match needs exactly one of header, cookie",
        }
    ],
    "StickyKey": [
        {
            "rule": "has(self.header) != has(self.cookie)",
            "message": "sticky needs exactly one of header, cookie",
        }
    ],
    "MetricSpec": [
        {
            "rule": "has(self.template) != has(self.query)",
            "message": "a metric needs exactly one of template, query",
        },
        {
            "rule": "has(self.threshold) || (has(self.judge) && has(self.judge.kind) && self.judge.kind != 'threshold')",
            "message": "a metric that uses the threshold judge needs a threshold",
        },
    ],
    "Range": [
        {"rule": "has(self.min) || has(self.max)", "message": "a range needs min, max or both"},
        {
            "rule": "!has(self.min) || !has(self.max) || self.min <= self.max",
            "message": "min is greater than max",
        },
    ],
}

# The longest string each spec pattern can match, stated as maxLength: the API server estimates
# the cost of CEL rules from it (an unbounded string makes a rule over a list too expensive).
_PATTERN_MAX_LENGTH = {
    spec.DNS_LABEL: 63,
    spec.MODEL_TAG: 63 + 1 + 128,
    spec.HEADER_NAME: 64,
    spec.MODEL_DIGEST: len("sha256:") + 64,
}

# list fields whose items are keyed by ``name``: the API server then rejects duplicates itself
_MAP_LISTS = {("AnalysisSpec", "metrics")}
# lists that pydantic rejects when empty
_NON_EMPTY_LISTS = {("CanaryStrategy", "steps")}


def _def_name(ref: str) -> str:
    prefix = "#/$defs/"
    if not ref.startswith(prefix):
        raise SpecError(f"cannot inline JSON-schema reference {ref!r}: only local $defs are supported")
    return ref[len(prefix) :]


def _structural(
    node: dict[str, Any], defs: dict[str, Any], model: str | None, seen: tuple[str, ...]
) -> dict[str, Any]:
    """One JSON-schema node -> a structural OpenAPI v3 node (recursive, $refs inlined)."""
    node = dict(node)
    if "$ref" in node:
        name = _def_name(node.pop("$ref"))
        if name in seen:
            raise SpecError(f"the spec model is recursive through {name}; a CRD schema cannot be")
        inner = _structural(defs[name], defs, name, (*seen, name))
        extra = {k: v for k, v in node.items() if k not in _DROP}
        return {**inner, **extra}
    if "anyOf" in node:
        branches = [b for b in node.pop("anyOf") if b != {"type": "null"}]
        if len(branches) != 1:
            raise SpecError(f"a CRD schema cannot express a union of {len(branches)} types: {branches}")
        return _structural({**branches[0], **node}, defs, model, seen)
    if "oneOf" in node or "allOf" in node:
        raise SpecError("a CRD schema cannot use oneOf/allOf on spec fields; use a validator and a CEL rule")

    out: dict[str, Any] = {
        k: v for k, v in node.items() if k not in _DROP and k not in ("properties", "items")
    }
    if out.get("type") == "string" and "maxLength" not in out and out.get("pattern") in _PATTERN_MAX_LENGTH:
        out["maxLength"] = _PATTERN_MAX_LENGTH[out["pattern"]]
    # JSON Schema 2020-12 (pydantic) says exclusiveMinimum: 0; OpenAPI v3.0 says minimum: 0 + true
    for bound, flag in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if isinstance(out.get(flag), int | float) and not isinstance(out.get(flag), bool):
            out[bound] = out[flag]
            out[flag] = True
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)  # int-or-string fields carry no type in a structural schema
    elif "enum" in out:
        out.setdefault("type", "string")
    elif "type" not in out:
        raise SpecError(f"schema node without a type: {node}")
    if "properties" in node:
        props: dict[str, Any] = {}
        for key, sub in node["properties"].items():
            prop = _structural(sub, defs, None, seen)
            if prop.get("type") == "array" and model is not None:
                if (model, key) in _MAP_LISTS:
                    prop["x-kubernetes-list-type"] = "map"
                    prop["x-kubernetes-list-map-keys"] = ["name"]
                if (model, key) in _NON_EMPTY_LISTS:
                    prop["minItems"] = 1
            props[key] = prop
        out["properties"] = props
    if "items" in node:
        out["items"] = _structural(node["items"], defs, None, seen)
    if model is not None and model in CEL_RULES:
        out["x-kubernetes-validations"] = copy.deepcopy(CEL_RULES[model])
    return _ordered(out)


_FIRST = ("description", "type")
_LAST = ("required", "properties", "items", "x-kubernetes-validations")


def _ordered(node: dict[str, Any]) -> dict[str, Any]:
    """description and type first, then constraints, then the nested parts: easier to read."""
    head = [k for k in _FIRST if k in node]
    tail = [k for k in _LAST if k in node]
    middle = sorted(k for k in node if k not in _FIRST and k not in _LAST)
    out = {k: node[k] for k in [*head, *middle, *tail]}
    if isinstance(out.get("description"), str):
        out["description"] = out["description"].replace("``", "`")
    return out


def structural_schema(model: type[RolloutSpec] = RolloutSpec) -> dict[str, Any]:
    """The pydantic model's validation schema as a structural OpenAPI v3 schema (wire names)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    return _structural(raw, defs, model.__name__, (model.__name__,))


def _status_schema() -> dict[str, Any]:
    """Status is written by the controller; only the fields the printer columns read are typed."""
    return {
        "type": "object",
        "description": (
            "Most recently observed state of the rollout, written by the controller: phase, reason, "
            "message, currentStep and stepName, candidateWeight and weights (stable, candidate, "
            "mirror percent), conditions (CandidateReady, StableReady, Progressing, Paused, "
            "Completed, Succeeded), analysis (per metric: newest verdict, value, counts), history "
            "(the last 30 events), startedAt, finishedAt, handoff, waitingFor, and under state the "
            "engine's whole state, from which a restarted controller resumes."
        ),
        "x-kubernetes-preserve-unknown-fields": True,
        "properties": {
            "phase": {
                "type": "string",
                "description": (
                    "Pending, Progressing, Paused (by a user, waiting for promote, or holding by "
                    "itself: see reason), Promoted, RolledBack, Aborted, Succeeded (a shadow that "
                    "passed without promoting) or Invalid (the spec was refused: see message)."
                ),
            },
            "message": {
                "type": "string",
                "description": "What the rollout does now, or why it ended, in words.",
            },
            "currentStep": {
                "type": "integer",
                "description": "Index, from 0, of the strategy's current step (stepName names it).",
            },
            "candidateWeight": {
                "type": "integer",
                "description": "Percent of user traffic the rollout routes to the candidate now.",
            },
            "observedGeneration": {
                "type": "integer",
                "description": "The metadata.generation of the spec this status was computed from.",
            },
        },
    }


PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Service", "type": "string", "jsonPath": ".spec.service"},
    {"name": "Stable", "type": "string", "jsonPath": ".spec.stable.model"},
    {"name": "Candidate", "type": "string", "jsonPath": ".spec.candidate.model"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {
        "name": "Weight",
        "type": "integer",
        "jsonPath": ".status.candidateWeight",
        "description": "candidate %",
    },
    {"name": "Step", "type": "integer", "jsonPath": ".status.currentStep", "priority": 1},
    {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _doc(model: type[Any]) -> str:
    return " ".join((model.__doc__ or "").split())


def crd() -> dict[str, Any]:
    """The whole CustomResourceDefinition object (apiextensions.k8s.io/v1)."""
    spec_schema = structural_schema()
    top = spec.ModelRollout.model_fields  # apiVersion and kind in Kubernetes' own wording
    spec_schema["description"] = top["spec"].description
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/part-of": "bento-rollout"},
        },
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": ["all", "bento-rollout"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": _doc(spec.ModelRollout),
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {
                                    "type": "string",
                                    "description": top["api_version"].description,
                                },
                                "kind": {"type": "string", "description": top["kind"].description},
                                # the API server refuses anything but name and generateName under
                                # metadata, even a description: it documents ObjectMeta itself
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": _status_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }


HEADER = "# GENERATED by `python -m rollout.k8s.generate` from rollout/spec.py - do not edit by hand.\n"


class _NoAliasDumper(yaml.SafeDumper):
    """Writes repeated sub-schemas out in full: anchors and aliases confuse readers of a CRD."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render_yaml(obj: Any, header: str = HEADER) -> str:
    """Stable YAML text for generated files (key order kept, wide lines, a header line)."""
    body = yaml.dump(obj, Dumper=_NoAliasDumper, sort_keys=False, width=120, default_flow_style=False)
    return header + body


def render_crd() -> str:
    return render_yaml(crd())
