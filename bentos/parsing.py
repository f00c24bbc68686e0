"""Request parsing for the model service: JSON bodies to a float64 feature matrix, or a BadRequest.

Pure functions (no I/O), called by the ASGI app in ``bentos/app.py`` on every request, so they stay
cheap: orjson, one numpy conversion, a finiteness check, no schema objects. Every rejection is a
:class:`BadRequest` with an HTTP status, a stable machine-readable ``code`` and a message naming the
problem (the field, what was expected), which stands on its own: the app turns it into a 4xx JSON
response, and on ``/v2`` (the Open Inference Protocol's ``{"error": "<message>"}``) the message is
all a client gets.

Accepted bodies:
- JSON predict: ``{"instances": [[5.1, 3.5, 1.4, 0.2], ...]}`` or
  ``{"instances": [{"sepal_length": 5.1, ...}, ...]}``
- Open Inference Protocol v2: ``{"inputs": [{"name": "input-0", "shape": [1, 4],
  "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}``, or one input per feature named after it
- a model with string features (``Schema.tabular``): records and rows of numbers, strings and
  booleans, and OIP v2 inputs per feature (``BYTES`` for strings): parsed by ``bentos/tabular.py``
  into the DataFrame it takes
- feedback: ``{"request_id": "...", "label": "setosa"}`` (a class name or index; a regressor's
  true value: a number)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from rollout.registry import NUMBER

if TYPE_CHECKING:
    from bentos.tabular import Table

V2_NUMERIC_TYPES = frozenset(
    {"FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
)
MAX_REQUEST_ID_LENGTH = 128
MAX_JSON_DEPTH = 1024  # orjson's own limit


class BadRequest(Exception):
    """A client error: becomes ``{"error": {"code": ..., "message": ...}}`` with ``status``, or
    ``{"error": message}`` on ``/v2`` (and a ``Retry-After`` header of ``retry_after`` seconds, for
    a 503 worth sending again)."""

    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True)
class Schema:
    """What the model expects, from its training metadata: feature names and types (``dtypes``:
    number, string or bool each; empty: all numbers). ``tabular`` (a feature is not a number)
    sends a body to bentos/tabular.py, which builds the DataFrame such a model takes."""

    feature_names: tuple[str, ...]
    max_batch: int
    dtypes: tuple[str, ...] = ()
    tabular: bool = field(init=False)

    def __post_init__(self) -> None:
        if not self.dtypes:
            object.__setattr__(self, "dtypes", (NUMBER,) * len(self.feature_names))
        object.__setattr__(self, "tabular", any(t != NUMBER for t in self.dtypes))

    @property
    def n_features(self) -> int:
        return len(self.feature_names)


def brief(value: Any) -> str:
    """A short description of a JSON value for an error message: never the repr of a nested array
    (``repr`` of one nested ~1000 levels deep raises RecursionError), never a long one."""
    if isinstance(value, list | dict):
        return f"(a JSON {'array' if isinstance(value, list) else 'object'})"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def load_json(body: bytes, what: str = "feature values") -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc):  # refused by orjson at 1024 levels, before anything is built
            raise BadRequest(
                400, "too_deeply_nested", f"request body nests JSON deeper than {MAX_JSON_DEPTH} levels"
            ) from None
        # Python's json accepts NaN/Infinity; orjson (correctly) does not: name the real problem
        try:
            json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise BadRequest(400, "malformed_json", f"request body is not valid JSON: {exc}") from None
        raise BadRequest(
            422, "non_finite_value", f"NaN and Infinity are not valid {what} (nor valid JSON)"
        ) from None


def _check_batch(n_rows: int, schema: Schema, empty: str = "instances is empty") -> None:
    if n_rows == 0:
        raise BadRequest(422, "empty_batch", f"{empty}; send at least one row")
    if n_rows > schema.max_batch:
        raise BadRequest(
            422,
            "batch_too_large",
            f"batch of {n_rows} rows is over the limit of {schema.max_batch} rows per request",
        )


def _finish(matrix: np.ndarray, schema: Schema) -> np.ndarray:
    """Dtype, shape and finiteness checks shared by every input format."""
    if matrix.dtype.kind not in "fiu":
        raise BadRequest(422, "non_numeric_value", "every feature value must be a number")
    if matrix.ndim != 2:
        raise BadRequest(
            422,
            "bad_shape",
            f"expected rows of {schema.n_features} numbers, got an array of {matrix.ndim} dimensions",
        )
    if matrix.shape[1] != schema.n_features:
        raise BadRequest(
            422,
            "wrong_feature_count",
            f"expected {schema.n_features} features per row ({', '.join(schema.feature_names)}), got {matrix.shape[1]}",
        )
    if matrix.dtype != np.float64:
        matrix = matrix.astype(np.float64)
    if not np.isfinite(matrix).all():
        raise BadRequest(
            422, "non_finite_value", "feature values must be finite numbers (no NaN or Infinity)"
        )
    return matrix


def _rows_to_matrix(rows: list[Any], schema: Schema) -> np.ndarray:
    for row in rows:
        if type(row) is not list:
            raise BadRequest(
                422, "bad_row", "every instance must be a list of numbers or an object of named features"
            )
        for value in row:
            if type(value) is not float and type(value) is not int:
                raise BadRequest(422, "non_numeric_value", f"feature value {brief(value)} is not a number")
    n = schema.n_features
    for i, row in enumerate(rows):
        if len(row) != n:
            raise BadRequest(
                422,
                "wrong_feature_count",
                f"expected {n} features per row ({', '.join(schema.feature_names)}), row {i} has {len(row)}",
            )
    return _finish(np.array(rows, dtype=np.float64), schema)


def _records_to_matrix(records: list[Any], schema: Schema) -> np.ndarray:
    names = schema.feature_names
    expected = set(names)
    rows: list[list[float]] = []
    for i, record in enumerate(records):
        if type(record) is not dict:
            raise BadRequest(
                422, "bad_row", "instances must all be lists, or all be objects of named features"
            )
        if record.keys() != expected:
            unknown = sorted(set(record) - expected)
            missing = [n for n in names if n not in record]
            parts = []
            if unknown:
                parts.append(f"unknown feature names {unknown}")
            if missing:
                parts.append(f"missing features {missing}")
            code = "unknown_feature" if unknown else "missing_feature"
            raise BadRequest(422, code, f"instance {i}: {' and '.join(parts)}; expected {list(names)}")
        row = [record[n] for n in names]
        for value in row:
            if type(value) is not float and type(value) is not int:
                raise BadRequest(422, "non_numeric_value", f"feature value {brief(value)} is not a number")
        rows.append(row)
    return _finish(np.array(rows, dtype=np.float64), schema)


def parse_predict(body: bytes, schema: Schema) -> np.ndarray | Table:
    """``{"instances": [...]}`` -> an (n, n_features) float64 matrix (a tabular model: a Table)."""
    payload = load_json(body)
    if type(payload) is not dict or "instances" not in payload:
        raise BadRequest(422, "missing_instances", 'expected a JSON object {"instances": [[...], ...]}')
    instances = payload["instances"]
    if type(instances) is not list:
        raise BadRequest(422, "missing_instances", "instances must be a list of rows")
    _check_batch(len(instances), schema)
    if schema.tabular:
        from bentos.tabular import parse_instances

        return parse_instances(instances, schema)
    if type(instances[0]) is dict:
        return _records_to_matrix(instances, schema)
    return _rows_to_matrix(instances, schema)


def _v2_id(payload: dict[str, Any]) -> str | None:
    request_id = payload.get("id")
    if request_id is not None and type(request_id) is not str:
        raise BadRequest(422, "bad_id", "id must be a string")
    return request_id


def parse_v2_infer(body: bytes, schema: Schema) -> tuple[np.ndarray | Table, str | None]:
    """An Open Inference Protocol v2 request -> (matrix, the request's ``id`` if given): one 2-D
    numeric input of every feature, or one input per feature named after it (bentos/tabular.py;
    a tabular model takes only these, and gets a Table)."""
    payload = load_json(body)
    if type(payload) is not dict or type(payload.get("inputs")) is not list or not payload["inputs"]:
        raise BadRequest(
            422,
            "missing_inputs",
            'inputs is missing or empty: expected {"inputs": [{"name", "shape", "datatype", "data"}]}',
        )
    if len(payload["inputs"]) != 1 or schema.tabular:
        from bentos.tabular import parse_v2_inputs

        return parse_v2_inputs(payload["inputs"], schema), _v2_id(payload)
    tensor = payload["inputs"][0]
    if type(tensor) is not dict:
        raise BadRequest(
            422, "bad_inputs", 'inputs[0] must be an object {"name", "shape", "datatype", "data"}'
        )
    shape, datatype, data = tensor.get("shape"), tensor.get("datatype"), tensor.get("data")
    if type(shape) is not list or not shape or not all(type(d) is int and d >= 0 for d in shape):
        raise BadRequest(
            422,
            "bad_shape",
            f"inputs[0].shape must be a list of non-negative integers, e.g. [1, {schema.n_features}]",
        )
    if type(datatype) is not str or datatype not in V2_NUMERIC_TYPES:  # a list is unhashable
        raise BadRequest(
            422,
            "bad_datatype",
            f"inputs[0].datatype {brief(datatype)} is not supported; use FP32, FP64 or an INT type",
        )
    if type(data) is not list:
        raise BadRequest(422, "bad_data", "inputs[0].data must be a list of numbers")
    if len(shape) == 1:
        shape = [1, shape[0]]
    if len(shape) != 2:
        raise BadRequest(
            422, "bad_shape", f"inputs[0].shape must be [rows, {schema.n_features}], got {shape}"
        )
    _check_batch(shape[0], schema, f"inputs[0] has no rows (shape {shape})")
    flat = (
        data
        if not data or type(data[0]) is not list
        else [v for row in data for v in (row if type(row) is list else [row])]
    )
    for value in flat:
        if type(value) is not float and type(value) is not int:
            raise BadRequest(422, "non_numeric_value", f"feature value {brief(value)} is not a number")
    if len(flat) != shape[0] * shape[1]:
        raise BadRequest(
            422,
            "bad_shape",
            f"inputs[0].shape {shape} needs {shape[0] * shape[1]} values, inputs[0].data has {len(flat)}",
        )
    request_id = _v2_id(payload)
    return _finish(np.array(flat, dtype=np.float64).reshape(shape), schema), request_id


@dataclass(frozen=True)
class Feedback:
    request_id: str
    labels: list[int] | list[float]  # class indices; a regressor's true values


def _feedback_rows(payload: Any, what: str, noun: str) -> tuple[str, list[Any]]:
    """``request_id`` and the raw labels of a feedback body (``label``, or ``labels`` for a batch)."""
    if type(payload) is not dict:
        raise BadRequest(422, "bad_feedback", f'expected {{"request_id": "...", "label": {what}}}')
    request_id = payload.get("request_id")
    if type(request_id) is not str or not valid_request_id(request_id):
        raise BadRequest(
            422, "bad_request_id", "request_id must be the X-Request-ID of an earlier prediction"
        )
    if "labels" in payload:
        raw = payload["labels"]
        if type(raw) is not list or not raw:
            raise BadRequest(422, "bad_label", "labels must be a non-empty list, one per predicted row")
        return request_id, raw
    if "label" in payload:
        if type(payload["label"]) is list:
            raise BadRequest(
                422, "bad_label", f'label is one {noun}; send one per predicted row as "labels": [...]'
            )
        return request_id, [payload["label"]]
    raise BadRequest(422, "bad_label", f'give the true {noun} as "label"')


def parse_feedback(body: bytes, class_names: list[str]) -> Feedback:
    """``{"request_id": ..., "label": name-or-index}`` or ``"labels": [...]`` for a batch request."""
    request_id, raw = _feedback_rows(load_json(body), '"<class>"', "class")
    return Feedback(request_id, [_label_index(v, class_names) for v in raw])


def parse_value_feedback(body: bytes) -> Feedback:
    """A regressor's labels: ``{"request_id": ..., "label": 151.0}`` or ``"labels": [...]``, finite
    numbers (NaN and Infinity are not JSON; a number too large for a double is refused too)."""
    request_id, raw = _feedback_rows(load_json(body, "labels"), "<number>", "value")
    for value in raw:
        if type(value) is not float and type(value) is not int:
            raise BadRequest(
                422, "bad_label", f"label {brief(value)} is not a number: the model is a regressor"
            )
    labels = [float(v) for v in raw]
    if not all(np.isfinite(labels)):  # an int beyond a double's range converts to inf
        raise BadRequest(422, "non_finite_value", "labels must be finite numbers")
    return Feedback(request_id, labels)


def _label_index(value: Any, class_names: list[str]) -> int:
    """A class name, or an integer: the class of that value when there is one (a model registered
    with ``rollout import`` names its classes by their values: 5 is class "5" of classes 3, 5, 7),
    else an index into the class names (the iris variants: 1 is "versicolor")."""
    if type(value) is str and value in class_names:
        return class_names.index(value)
    if type(value) is int and str(value) in class_names:
        return class_names.index(str(value))
    if type(value) is int and 0 <= value < len(class_names):
        return value
    raise BadRequest(422, "bad_label", f"label {brief(value)} is not one of {class_names} (or their indices)")


def valid_request_id(value: str) -> bool:
    """1-128 visible ASCII characters (what fits safely in a header and a log line)."""
    return (
        0 < len(value) <= MAX_REQUEST_ID_LENGTH
        and value.isascii()
        and value.isprintable()
        and " " not in value
    )
