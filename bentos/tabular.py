"""Request parsing for a model with string (or boolean) features: JSON to a pandas DataFrame.

A model registered with string features (``feature_dtypes`` in its metadata, rollout/
registration.py) is called with a DataFrame of its feature columns by name (numbers float64,
strings str, booleans bool), so a ColumnTransformer selects its columns as it did at fitting.
``bentos/parsing.py`` hands such a model's bodies here (its ``Schema`` says ``tabular``); an
all-numeric model's requests never use pandas (imported here for a tabular model only).

Accepted, with every value checked against its feature's type (a 422 names the row, the field and
what was expected):
- records ``{"instances": [{"age": 41, "city": "Lyon"}]}`` and rows ``[[41, "Lyon"]]`` (in
  feature order);
- Open Inference Protocol v2: one input per feature, named after it, of shape ``[n]`` or
  ``[n, 1]``: a number feature FP64/FP32/INT*, a string feature ``BYTES`` (JSON strings), a
  boolean ``BOOL``. An all-numeric model takes them too (then a float64 matrix, as its one 2-D
  input gives). :func:`v2_inputs` is what the OIP model metadata lists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from bentos.parsing import V2_NUMERIC_TYPES, BadRequest, Schema, brief
from rollout.registry import BOOL, NUMBER, STRING

if TYPE_CHECKING:
    import pandas as pd

V2_TYPES = {NUMBER: "FP64", STRING: "BYTES", BOOL: "BOOL"}  # what the OIP metadata names
EXPECTED = {NUMBER: "a number", STRING: "a string", BOOL: "true or false"}


@dataclass(frozen=True)
class Table:
    """Parsed rows of a tabular model: the DataFrame the estimator takes and its numeric
    features as a float64 matrix (the z-scores' input, columns in feature order)."""

    frame: pd.DataFrame | None  # None for an all-numeric model (its OIP inputs per feature)
    numeric: np.ndarray

    def __len__(self) -> int:
        return len(self.numeric)


def _fits(value: Any, kind: str) -> bool:
    if kind == NUMBER:
        return type(value) is float or type(value) is int
    if kind == STRING:
        return type(value) is str
    return type(value) is bool


def _wrong(where: str, name: str, kind: str, value: Any) -> BadRequest:
    got = "null" if value is None else brief(value)
    return BadRequest(422, "wrong_type", f"{where}: feature {name!r} must be {EXPECTED[kind]}, got {got}")


def _table(columns: list[list[Any]], schema: Schema) -> Table:
    """The DataFrame and numeric matrix of checked columns (one list per feature); an all-numeric
    model's matrix only (no pandas)."""
    data: dict[str, Any] = {}
    numeric: list[np.ndarray] = []
    for name, kind, values in zip(schema.feature_names, schema.dtypes, columns, strict=True):
        if kind == NUMBER:
            column = np.asarray(values, dtype=np.float64)
            if not np.isfinite(column).all():
                raise BadRequest(
                    422, "non_finite_value", f"feature {name!r} must be a finite number (no NaN or Infinity)"
                )
            numeric.append(column)
        else:
            column = np.asarray(values, dtype=object if kind == STRING else bool)
        data[name] = column
    n = len(columns[0]) if columns else 0
    matrix = np.column_stack(numeric) if numeric else np.zeros((n, 0), dtype=np.float64)
    if not schema.tabular:
        return Table(None, matrix)
    import pandas as pd

    return Table(pd.DataFrame(data), matrix)


def parse_instances(instances: list[Any], schema: Schema) -> Table:
    """Records (objects keyed by feature name) or rows (lists in feature order) -> a Table."""
    names, dtypes = schema.feature_names, schema.dtypes
    columns: list[list[Any]] = [[] for _ in names]
    records = type(instances[0]) is dict
    expected = set(names)
    for i, instance in enumerate(instances):
        if records:
            if type(instance) is not dict:
                raise BadRequest(
                    422, "bad_row", "instances must all be lists, or all be objects of named features"
                )
            if instance.keys() != expected:
                unknown = sorted(set(instance) - expected)
                missing = [n for n in names if n not in instance]
                parts = [f"unknown feature names {unknown}"] if unknown else []
                parts += [f"missing features {missing}"] if missing else []
                code = "unknown_feature" if unknown else "missing_feature"
                raise BadRequest(422, code, f"instance {i}: {' and '.join(parts)}; expected {list(names)}")
            row = [instance[n] for n in names]
        else:
            if type(instance) is not list:
                raise BadRequest(
                    422,
                    "bad_row",
                    "every instance must be a list of feature values or an object of named features",
                )
            if len(instance) != len(names):
                raise BadRequest(
                    422,
                    "wrong_feature_count",
                    f"expected {len(names)} features per row ({', '.join(names)}), row {i} has {len(instance)}",
                )
            row = instance
        for j, value in enumerate(row):
            if not _fits(value, dtypes[j]):
                raise _wrong(f"instance {i}", names[j], dtypes[j], value)
            columns[j].append(value)
    return _table(columns, schema)


def _v2_column(k: int, tensor: Any, schema: Schema) -> tuple[str, list[Any], int]:
    """inputs[k]: its feature's name, its values and its row count; a BadRequest naming it."""
    if type(tensor) is not dict:
        raise BadRequest(
            422, "bad_inputs", f'inputs[{k}] must be an object {{"name", "shape", "datatype", "data"}}'
        )
    name = tensor.get("name")
    if type(name) is not str or name not in schema.feature_names:
        raise BadRequest(
            422,
            "unknown_input",
            f"inputs[{k}] is named {brief(name)}, not a feature of the model; send one input per "
            f"feature: {signature(schema)}"
            + ("" if schema.tabular else f", or one input of shape [rows, {schema.n_features}]"),
        )
    kind = schema.dtypes[schema.feature_names.index(name)]
    shape, datatype, data = tensor.get("shape"), tensor.get("datatype"), tensor.get("data")
    if (
        type(shape) is not list
        or len(shape) not in (1, 2)
        or not all(type(d) is int and d >= 0 for d in shape)
        or (len(shape) == 2 and shape[1] != 1)
    ):
        raise BadRequest(
            422, "bad_shape", f"input {name!r} must have shape [rows] or [rows, 1], got {brief(shape)}"
        )
    allowed = V2_NUMERIC_TYPES if kind == NUMBER else {V2_TYPES[kind]}
    if type(datatype) is not str or datatype not in allowed:
        raise BadRequest(
            422,
            "bad_datatype",
            f"input {name!r} has datatype {brief(datatype)}; feature {name!r} is a {kind}: send "
            f"{'FP64, FP32 or an INT type' if kind == NUMBER else V2_TYPES[kind]}",
        )
    if type(data) is not list:
        raise BadRequest(422, "bad_data", f"input {name!r}: data must be a list of {EXPECTED[kind]} values")
    values = [v for row in data for v in row] if data and type(data[0]) is list else data
    for i, value in enumerate(values):
        if not _fits(value, kind):
            raise _wrong(f"input {name!r} row {i}", name, kind, value)
    if len(values) != shape[0]:
        raise BadRequest(
            422, "bad_shape", f"input {name!r} has shape {shape} but {len(values)} values in data"
        )
    return name, values, shape[0]


def parse_v2_inputs(inputs: list[Any], schema: Schema) -> Table | np.ndarray:
    """One input per feature, named after it -> a Table (an all-numeric model: its matrix)."""
    columns: dict[str, list[Any]] = {}
    rows: int | None = None
    for k, tensor in enumerate(inputs):
        name, values, n = _v2_column(k, tensor, schema)
        if name in columns:
            raise BadRequest(422, "bad_inputs", f"input {name!r} is given twice")
        if rows is not None and n != rows:
            raise BadRequest(
                422,
                "bad_shape",
                f"input {name!r} has {n} rows, the inputs before it {rows}: one row count for all",
            )
        columns[name], rows = values, n
    missing = [n for n in schema.feature_names if n not in columns]
    if missing:
        raise BadRequest(
            422,
            "missing_input",
            f"inputs lack the features {missing}; send one input per feature: {signature(schema)}",
        )
    if not rows:
        raise BadRequest(422, "empty_batch", "the inputs have no rows; send at least one row")
    if rows > schema.max_batch:
        raise BadRequest(
            422,
            "batch_too_large",
            f"batch of {rows} rows is over the limit of {schema.max_batch} rows per request",
        )
    table = _table([columns[n] for n in schema.feature_names], schema)
    return table if schema.tabular else table.numeric


def signature(schema: Schema) -> str:
    """``age (FP64), city (BYTES)``: the inputs a v2 request names, for an error message."""
    shown = [f"{n} ({V2_TYPES[t]})" for n, t in zip(schema.feature_names, schema.dtypes, strict=True)]
    return ", ".join(shown[:8]) + (f" and {len(shown) - 8} more" if len(shown) > 8 else "")


def v2_inputs(schema: Schema) -> list[dict[str, Any]]:
    """The OIP model metadata's inputs of a tabular model: one per feature."""
    return [
        {"name": n, "datatype": V2_TYPES[t], "shape": [-1]}
        for n, t in zip(schema.feature_names, schema.dtypes, strict=True)
    ]


def sample(schema: Schema, means: list[float], categories: dict[str, list[str]]) -> Table:
    """One row to warm the model up with: numeric means, each string feature's first category."""
    numeric = iter(means)
    row = [
        next(numeric) if t == NUMBER else (categories.get(n) or [""])[0] if t == STRING else False
        for n, t in zip(schema.feature_names, schema.dtypes, strict=True)
    ]
    return _table([[v] for v in row], schema)
