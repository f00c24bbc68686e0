"""The OpenAPI 3.0 document of the model service's own endpoints (the lean ASGI app in app.py).

BentoML documents only its ``@bentoml.api`` endpoints (``/docs.json``); the endpoints clients use
here are a raw ASGI app mounted at ``/``, so BentoML knows nothing about them and its document is
shadowed by the mount. ``openapi_document`` describes them for one served model (its name,
feature names and types, task, class names and the request limits): ``/predict``, ``/v1/models/{name}:predict``,
``/v2/models/{name}/infer``, ``/feedback``, the v2 health and metadata routes and ``/metrics``.
What the model answers and which labels it takes follow its task, as ``bentos/served.py`` says
them (``served_class(task)``): the fields of ``/predict``'s answer are its OIP outputs (a
classifier's class names and probabilities, a regressor's numbers), a label is what the
``predictions`` output holds (a class, by name or index; a number), and a ``/feedback`` answer has
the task's ``feedback_fields``, typed as :class:`bentos.join.Resolved` types them.
Every request body schema says what the parser in ``bentos/parsing.py`` accepts; every 4xx is the
``Error`` object, and on the ``/v2`` routes the Open Inference Protocol's ``OipError``
(``{"error": "<message>"}``, what KServe's and Triton's clients read). Who calls it: the service fuzz test (schemathesis, tests/integration/
test_fuzz_service.py), and anyone who wants a client (``python -m bentos.openapi iris:v1``).
"""

from __future__ import annotations

import json
import sys
from typing import Any, get_type_hints

from bentos.join import Resolved
from bentos.served import served_class
from rollout.registry import CLASSIFICATION

JSON = "application/json"
_FIELD_TYPES = {int: "integer", float: "number", bool: "boolean", str: "string"}  # Resolved's, as JSON


def _error() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            },
            "request_id": {"type": "string"},
            "model": {"type": "string"},
            "version": {"type": "string"},
        },
    }


def _oip_error() -> dict[str, Any]:
    """The Open Inference Protocol's REST error object: one descriptive string, nothing else."""
    return {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string", "minLength": 1}},
        "additionalProperties": False,
    }


def _responses(ok: dict[str, Any], *client_errors: int, error: str = "Error") -> dict[str, Any]:
    """``ok`` for 200 and the ``error`` schema (``Error``, or ``OipError`` on /v2) for each status."""
    out: dict[str, Any] = {"200": {"description": "OK", "content": {JSON: {"schema": ok}}}}
    for status in client_errors:
        out[str(status)] = {
            "description": "client error",
            "content": {JSON: {"schema": {"$ref": f"#/components/schemas/{error}"}}},
        }
    return out


def _body(ref: str) -> dict[str, Any]:
    return {"required": True, "content": {JSON: {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def _value(datatype: str, class_names: list[str]) -> dict[str, Any]:
    """One value of an OIP output as JSON: BYTES are the classifier's class names, else numbers."""
    return {"type": "string", "enum": list(class_names)} if datatype == "BYTES" else {"type": "number"}


def _output(output: dict[str, Any], class_names: list[str]) -> dict[str, Any]:
    """An OIP output (``shape`` [-1] or [-1, k]) as ``/predict`` answers it: a list per row."""
    schema = _value(output["datatype"], class_names)
    for _ in output["shape"]:
        schema = {"type": "array", "items": schema}
    return schema


def _label(outputs: list[dict[str, Any]], class_names: list[str]) -> dict[str, Any]:
    """A true label is what the ``predictions`` output holds: a class (its name or its index), or
    a number."""
    predicted = next(o for o in outputs if o["name"] == "predictions")
    if predicted["datatype"] != "BYTES":
        return {"type": "number"}
    return {"oneOf": [{"type": "string", "enum": list(class_names)},
                      {"type": "integer", "minimum": 0, "maximum": len(class_names) - 1}]}  # fmt: skip


def openapi_document(
    name: str,
    version: str,
    feature_names: list[str],
    class_names: list[str],
    max_batch: int = 1000,
    feature_dtypes: list[str] | None = None,
    task: str = CLASSIFICATION,
) -> dict[str, Any]:
    """The OpenAPI 3.0.3 document for a server of model ``name`` (``feature_dtypes``: number,
    string or bool per feature; None: all numbers; ``task``: the metadata's, classification or
    regression)."""
    kind = served_class(task)
    outputs = kind.oip_outputs(class_names)
    n = len(feature_names)
    number = {"type": "number"}
    dtypes = feature_dtypes or ["number"] * n
    kinds = {"number": number, "string": {"type": "string"}, "bool": {"type": "boolean"}}
    tabular = any(t != "number" for t in dtypes)
    value = {"anyOf": [kinds[t] for t in dict.fromkeys(dtypes)]} if tabular else number
    row = {"type": "array", "items": value, "minItems": n, "maxItems": n}
    record = {
        "type": "object",
        "required": list(feature_names),
        "properties": {f: kinds[t] for f, t in zip(feature_names, dtypes, strict=True)},
        "additionalProperties": False,
    }
    instances = {"minItems": 1, "maxItems": max_batch}
    predict = {
        "type": "object",
        "required": ["instances"],
        "properties": {
            "instances": {
                "oneOf": [
                    {"type": "array", "items": row, **instances},
                    {"type": "array", "items": record, **instances},
                ]
            }
        },
    }
    tensor = {
        "type": "object",
        "required": ["name", "shape", "datatype", "data"],
        "properties": {
            "name": {"type": "string"},
            "shape": {
                "type": "array",
                "items": {"type": "integer", "minimum": 1, "maximum": max_batch},
                "minItems": 2,
                "maxItems": 2,
            },  # fmt: skip
            "datatype": {"type": "string", "enum": ["FP32", "FP64", "INT32", "INT64"]},
            "data": {"type": "array", "items": number, "minItems": 1},
        },
    }
    if tabular:  # one input per feature, named after it, one column (bentos/tabular.py)
        tensor["properties"] = {
            **tensor["properties"],
            "name": {"type": "string", "enum": list(feature_names)},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": max_batch},
                      "minItems": 1, "maxItems": 1},
            "datatype": {"type": "string", "enum": ["FP32", "FP64", "INT32", "INT64", "BYTES", "BOOL"]},
            "data": {"type": "array", "items": value, "minItems": 1},
        }  # fmt: skip
    infer = {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "inputs": {
                "type": "array",
                "items": tensor,
                "minItems": n if tabular else 1,
                "maxItems": n if tabular else 1,
            },
        },  # fmt: skip
    }
    feedback = {
        "type": "object",
        "required": ["request_id", "label"],
        "properties": {
            "request_id": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[!-~]+$"},
            "label": _label(outputs, class_names),
        },
    }
    prediction = {
        "type": "object",
        "required": [*(o["name"] for o in outputs), "model", "version", "request_id"],
        "properties": {
            **{o["name"]: _output(o, class_names) for o in outputs},
            "model": {"type": "string"},
            "version": {"type": "string"},
            "request_id": {"type": "string"},
        },
    }
    inferred = {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "outputs": {"type": "array"},
        },  # fmt: skip
    }
    resolved = get_type_hints(Resolved)
    received = {
        "type": "object",
        "required": ["request_id", *kind.feedback_fields],
        "properties": {
            "request_id": {"type": "string"},
            **{f: {"type": _FIELD_TYPES[resolved[f]]} for f in kind.feedback_fields},
        },  # fmt: skip
    }
    name_param = {
        "name": "name",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "enum": [name]},
    }
    ok_object = {"type": "object"}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": f"model {name}",
            "version": version,
            "description": "bento-rollout model server (OIP v2, KServe v1, /predict, /feedback)",
        },  # fmt: skip
        "paths": {
            "/predict": {
                "post": {
                    "operationId": "predict",
                    "requestBody": _body("PredictRequest"),
                    "responses": _responses(prediction, 400, 413, 422),
                }  # fmt: skip
            },
            f"/v1/models/{name}:predict": {
                "post": {
                    "operationId": "predictV1",
                    "requestBody": _body("PredictRequest"),
                    "responses": _responses(prediction, 400, 413, 422),
                }  # fmt: skip
            },
            "/v2/models/{name}/infer": {
                "post": {
                    "operationId": "infer",
                    "parameters": [name_param],
                    "requestBody": _body("InferRequest"),
                    "responses": _responses(inferred, 400, 404, 413, 422, error="OipError"),
                }  # fmt: skip
            },
            "/feedback": {
                "post": {
                    "operationId": "feedback",
                    "requestBody": _body("Feedback"),
                    "responses": _responses(received, 400, 404, 409, 413, 422),
                }  # fmt: skip
            },
            "/v2/models/{name}": {
                "get": {
                    "operationId": "modelMetadata",
                    "parameters": [name_param],
                    "responses": _responses(ok_object, 404, error="OipError"),
                }  # fmt: skip
            },
            "/v2/health/live": {"get": {"operationId": "live", "responses": _responses(ok_object)}},
            "/v2/health/ready": {"get": {"operationId": "ready", "responses": _responses(ok_object)}},
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "responses": {
                        "200": {
                            "description": "Prometheus text format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }  # fmt: skip
            },
        },
        "components": {
            "schemas": {
                "PredictRequest": predict,
                "InferRequest": infer,
                "Feedback": feedback,
                "Error": _error(),
                "OipError": _oip_error(),
            }
        },
    }


def main() -> None:
    """Print the document for a model tag of the local model store."""
    from rollout.registry import get_record

    record = get_record(sys.argv[1] if len(sys.argv) > 1 else "iris:v1")
    meta = record.metadata
    doc = openapi_document(
        record.name,
        record.version,
        list(meta.feature_names),
        list(meta.class_names),
        feature_dtypes=meta.dtypes,
        task=meta.task,
    )
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
