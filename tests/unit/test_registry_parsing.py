"""Request parsing of the model service (bentos/parsing.py): what a client sends becomes the feature
matrix the registered model expects, or a 4xx naming the problem. Pure functions, no server."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bentos.parsing import BadRequest, Schema, parse_feedback, parse_predict, parse_v2_infer, valid_request_id

SCHEMA = Schema(("sepal_length", "sepal_width", "petal_length", "petal_width"), max_batch=3)
CLASSES = ["setosa", "versicolor", "virginica"]


def body(payload: object) -> bytes:
    return json.dumps(payload).encode()


def rejected(call: object, *args: object) -> BadRequest:
    with pytest.raises(BadRequest) as excinfo:
        call(*args)  # type: ignore[operator]
    return excinfo.value


def test_rows_and_records_give_the_same_matrix() -> None:
    rows = parse_predict(body({"instances": [[5.1, 3.5, 1.4, 0.2], [6, 3, 5, 2]]}), SCHEMA)
    records = parse_predict(
        body(
            {
                "instances": [
                    {"petal_width": 0.2, "sepal_length": 5.1, "petal_length": 1.4, "sepal_width": 3.5},
                    {"sepal_length": 6, "sepal_width": 3, "petal_length": 5, "petal_width": 2},
                ]
            }
        ),
        SCHEMA,
    )
    assert rows.dtype == np.float64 and rows.shape == (2, 4)
    assert np.array_equal(rows, records)


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        (b"{not json", 400, "malformed_json"),
        (b'{"instances": [[NaN, 1, 2, 3]]}', 422, "non_finite_value"),
        (b'{"instances": [[1e999, 1, 2, 3]]}', 422, "non_finite_value"),
        (b'{"instances": [[1, 2, 3]]}', 422, "wrong_feature_count"),
        (b'{"instances": [[1, 2, 3, 4], [1, 2, 3]]}', 422, "wrong_feature_count"),
        (b'{"instances": [[1, "2", 3, 4]]}', 422, "non_numeric_value"),
        (b'{"instances": [[1, true, 3, 4]]}', 422, "non_numeric_value"),
        (b'{"instances": [[1, null, 3, 4]]}', 422, "non_numeric_value"),
        (b'{"instances": []}', 422, "empty_batch"),
        (b'{"instances": [[1,2,3,4],[1,2,3,4],[1,2,3,4],[1,2,3,4]]}', 422, "batch_too_large"),
        (b'{"rows": [[1, 2, 3, 4]]}', 422, "missing_instances"),
        (
            b'{"instances": [{"sepal_length": 1, "sepal_width": 2, "petal_length": 3}]}',
            422,
            "missing_feature",
        ),
        (
            b'{"instances": [{"sepal_length": 1, "sepal_width": 2, "petal_length": 3, "petal_width": 4, "x": 1}]}',
            422,
            "unknown_feature",
        ),
        (b'{"instances": [[1, 2, 3, 4], {"sepal_length": 1}]}', 422, "bad_row"),
    ],
)
def test_bad_predict_bodies_are_named(payload: bytes, status: int, code: str) -> None:
    error = rejected(parse_predict, payload, SCHEMA)
    assert (error.status, error.code) == (status, code)
    assert error.message


def test_unknown_feature_message_names_the_feature() -> None:
    payload = body(
        {
            "instances": [
                {"sepal_length": 1, "sepal_width": 2, "petal_length": 3, "petal_width": 4, "colour": 1}
            ]
        }
    )
    assert "colour" in rejected(parse_predict, payload, SCHEMA).message


def test_v2_infer_accepts_flat_and_nested_data() -> None:
    flat = {
        "inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6, 7, 8]}]
    }
    nested = {
        "id": "r1",
        "inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP64", "data": [[1, 2, 3, 4], [5, 6, 7, 8]]}],
    }
    a, a_id = parse_v2_infer(body(flat), SCHEMA)
    b, b_id = parse_v2_infer(body(nested), SCHEMA)
    assert np.array_equal(a, b) and a.shape == (2, 4)
    assert (a_id, b_id) == (None, "r1")


@pytest.mark.parametrize(
    ("tensor", "code"),
    [
        ({"shape": [1, 4], "datatype": "BYTES", "data": [1, 2, 3, 4]}, "bad_datatype"),
        ({"shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3]}, "bad_shape"),
        ({"shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}, "wrong_feature_count"),
        ({"shape": "1,4", "datatype": "FP32", "data": [1, 2, 3, 4]}, "bad_shape"),
        ({"shape": [1, 4], "datatype": "FP32", "data": [1, "a", 3, 4]}, "non_numeric_value"),
    ],
)
def test_bad_v2_tensors_are_named(tensor: dict[str, object], code: str) -> None:
    assert rejected(parse_v2_infer, body({"inputs": [{"name": "x", **tensor}]}), SCHEMA).code == code


def test_feedback_accepts_names_and_indices() -> None:
    assert parse_feedback(body({"request_id": "a", "label": "virginica"}), CLASSES).labels == [2]
    assert parse_feedback(body({"request_id": "a", "labels": ["setosa", 1]}), CLASSES).labels == [0, 1]
    for bad in (
        {"request_id": "a", "label": "rose"},
        {"request_id": "a", "label": 3},
        {"request_id": "a"},
        {"label": 1},
    ):
        assert rejected(parse_feedback, body(bad), CLASSES).status == 422


def test_request_ids() -> None:
    assert valid_request_id("abc-123_x:y")
    assert not valid_request_id("")
    assert not valid_request_id("has space")
    assert not valid_request_id("x" * 129)
    assert not valid_request_id("caf\u00e9")
