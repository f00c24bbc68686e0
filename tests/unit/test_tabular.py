"""Models with string (and boolean) feature columns: what `rollout import` records of them
(rollout/registration.py), how the server parses records, rows and OIP v2 inputs per feature into
the DataFrame they take (bentos/tabular.py), the 422s naming the row and the field, and what the
served model answers and describes (bentos/served.py), all in-process."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from bentos.parsing import BadRequest, Schema, parse_predict, parse_v2_infer
from bentos.served import Limits, Served
from bentos.tabular import Table
from rollout.errors import ModelError, UsageError
from rollout.registration import _features, derive_metadata, read_reference
from rollout.registry import LoadedModel, ModelMetadata, ModelRecord

SCHEMA = Schema(("age", "city", "member"), 100, ("number", "string", "bool"))


@pytest.fixture(scope="module")
def wine() -> tuple[Pipeline, pd.DataFrame]:
    """Wine with a string column derived from the data (color intensity's tercile) and a boolean."""
    w = load_wine(as_frame=True)
    frame = w.data.assign(
        region=pd.qcut(w.data["color_intensity"], 3, labels=["low", "mid", "high"]).astype(str),
        strong=w.data["alcohol"] > 13,
    )
    columns = ColumnTransformer(
        [("num", StandardScaler(), list(w.data.columns)),
         ("cat", OneHotEncoder(handle_unknown="ignore"), ["region", "strong"])]
    )  # fmt: skip
    model = Pipeline([("columns", columns), ("lr", LogisticRegression(max_iter=1000))]).fit(frame, w.target)
    return model, frame.assign(cultivar=w.target)


def _metadata(model: Pipeline, frame: pd.DataFrame, tmp_path: Path) -> ModelMetadata:
    path = tmp_path / "holdout.csv"
    frame.to_csv(path, index=False)
    ref = read_reference(path, "cultivar", model)
    return derive_metadata(model, ref, "v1", "", pickle.dumps(model), "file wine.joblib")


def test_string_and_boolean_columns_register_with_their_types_and_categories(
    wine: tuple[Pipeline, pd.DataFrame], tmp_path: Path
) -> None:
    model, frame = wine
    meta = _metadata(model, frame, tmp_path)
    assert meta.feature_dtypes == ["number"] * 13 + ["string", "bool"]
    assert meta.feature_categories == {"region": ["high", "low", "mid"]}
    assert len(meta.feature_means) == len(meta.feature_stds) == 13  # the numeric features only
    assert meta.numeric_features == list(frame.columns[:13])
    assert meta.holdout_accuracy > 0.95
    again = ModelMetadata.from_dict(meta.to_dict())
    assert again.dtypes == meta.feature_dtypes and again.feature_categories == meta.feature_categories


def test_a_model_stored_without_feature_types_loads_as_all_numeric(
    wine: tuple[Pipeline, pd.DataFrame], tmp_path: Path
) -> None:
    model, frame = wine
    stored = _metadata(model, frame, tmp_path).to_dict()
    stored = {k: v for k, v in stored.items() if k not in ("feature_dtypes", "feature_categories")}
    old = ModelMetadata.from_dict(stored)
    assert old.dtypes == ["number"] * 15 and old.feature_categories == {}
    with pytest.raises(ModelError, match="feature_dtypes .* register it again"):
        ModelMetadata.from_dict({**stored, "feature_dtypes": ["number", "text"]})


def test_a_string_column_with_gaps_or_numbers_among_its_strings_is_named(
    wine: tuple[Pipeline, pd.DataFrame], tmp_path: Path
) -> None:
    model, frame = wine
    path = tmp_path / "holdout.parquet"
    frame.assign(region=frame["region"].where(frame.index != 4)).to_parquet(path)
    with pytest.raises(UsageError, match=r"feature column region has missing values in .* \(row 4\)") as info:
        read_reference(path, "cultivar", model)
    assert "\n" not in str(info.value)
    mixed = pd.DataFrame({"region": pd.Series(["low", 7], dtype=object)})
    with pytest.raises(
        UsageError, match="region holds int values .* all numbers, all strings or all booleans"
    ):
        _features(mixed, path)


def test_a_category_column_is_a_string_feature(wine: tuple[Pipeline, pd.DataFrame], tmp_path: Path) -> None:
    model, frame = wine
    path = tmp_path / "holdout.parquet"
    frame.assign(region=frame["region"].astype("category")).to_parquet(path)  # parquet keeps the dtype
    ref = read_reference(path, "cultivar", model)
    assert ref.feature_dtypes[-2:] == ("string", "bool") and ref.categories() == {
        "region": ["high", "low", "mid"]
    }


def test_records_and_rows_become_a_dataframe_with_the_models_names_and_types() -> None:
    by_record = parse_predict(
        orjson.dumps({"instances": [{"age": 41, "city": "Lyon", "member": True}, {"city": "Nice", "age": 2.5,
                      "member": False}]}), SCHEMA,
    )  # fmt: skip
    by_row = parse_predict(orjson.dumps({"instances": [[41, "Lyon", True], [2.5, "Nice", False]]}), SCHEMA)
    for table in (by_record, by_row):
        assert isinstance(table, Table) and table.frame is not None
        assert list(table.frame.columns) == ["age", "city", "member"]
        assert table.frame["age"].dtype == np.float64 and table.frame["member"].dtype == bool
        assert table.frame["city"].tolist() == ["Lyon", "Nice"]
        assert table.numeric.tolist() == [[41.0], [2.5]]


@pytest.mark.parametrize(
    ("instances", "message"),
    [
        (
            [{"age": "41", "city": "Lyon", "member": True}],
            "instance 0: feature 'age' must be a number, got '41'",
        ),
        ([[1, "a", True], [2, 3, True]], "instance 1: feature 'city' must be a string, got 3"),
        ([{"age": 1, "city": None, "member": True}], "feature 'city' must be a string, got null"),
        ([{"age": 1, "city": "a", "member": 1}], "feature 'member' must be true or false, got 1"),
        ([{"age": 1, "member": True}], "instance 0: missing features ['city']"),
        ([{"age": 1, "city": "a", "member": True, "zip": 1}], "instance 0: unknown feature names ['zip']"),
        ([[1, "a"]], "expected 3 features per row (age, city, member), row 0 has 2"),
        ([[1, "a", True], "x"], "every instance must be a list"),
    ],
    ids=[
        "string-for-number",
        "number-for-string",
        "null",
        "int-for-bool",
        "missing",
        "extra",
        "short",
        "mixed",
    ],
)
def test_a_value_of_the_wrong_type_is_a_422_naming_the_row_and_the_field(
    instances: list[Any], message: str
) -> None:
    with pytest.raises(BadRequest) as info:
        parse_predict(orjson.dumps({"instances": instances}), SCHEMA)
    assert info.value.status == 422 and message in info.value.message, info.value.message


def _input(name: str, datatype: str, data: list[Any], shape: list[int] | None = None) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape or [len(data)], "data": data}


def test_oip_v2_takes_one_input_per_feature_with_bytes_for_strings() -> None:
    body = {"id": "r-1", "inputs": [
        _input("city", "BYTES", [["Lyon"], ["Nice"]], [2, 1]), _input("age", "INT64", [41, 3]),
        _input("member", "BOOL", [True, False]),
    ]}  # fmt: skip
    table, v2_id = parse_v2_infer(orjson.dumps(body), SCHEMA)
    assert v2_id == "r-1" and isinstance(table, Table) and table.frame is not None
    assert table.frame.to_dict("list") == {
        "age": [41.0, 3.0],
        "city": ["Lyon", "Nice"],
        "member": [True, False],
    }


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([_input("age", "FP64", [1.0]), _input("city", "FP64", [1.0]), _input("member", "BOOL", [True])],
         "input 'city' has datatype 'FP64'; feature 'city' is a string: send BYTES"),
        ([_input("age", "FP64", [1.0]), _input("city", "BYTES", [3]), _input("member", "BOOL", [True])],
         "input 'city' row 0: feature 'city' must be a string, got 3"),
        ([_input("age", "FP64", [1.0]), _input("member", "BOOL", [True])], "inputs lack the features ['city']"),
        ([_input("input-0", "FP64", [1.0, 2.0, 3.0], [1, 3])], "inputs[0] is named 'input-0', not a feature"),
        ([_input("age", "FP64", [1.0, 2.0]), _input("city", "BYTES", ["a"]), _input("member", "BOOL", [True])],
         "input 'city' has 1 rows, the inputs before it 2"),
        ([_input("age", "FP64", [1.0], [1, 2])], "input 'age' must have shape [rows] or [rows, 1]"),
    ],
    ids=["datatype", "value", "missing", "one-tensor", "rows", "shape"],
)  # fmt: skip
def test_an_oip_input_that_does_not_match_the_signature_is_named(inputs: list[Any], message: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_v2_infer(orjson.dumps({"inputs": inputs}), SCHEMA)
    assert info.value.status == 422 and message in info.value.message, info.value.message


def test_an_all_numeric_model_takes_inputs_per_feature_too_as_its_matrix_without_pandas() -> None:
    code = (
        "import sys, orjson; from bentos.parsing import Schema, parse_predict, parse_v2_infer\n"
        "s = Schema(('a', 'b'), 10)\n"
        "x, _ = parse_v2_infer(orjson.dumps({'inputs': [{'name': 'b', 'shape': [1], 'datatype': 'FP32', "
        "'data': [2]}, {'name': 'a', 'shape': [1], 'datatype': 'INT64', 'data': [1]}]}), s)\n"
        "assert x.tolist() == [[1.0, 2.0]] and x.dtype == 'float64', x\n"
        'assert parse_predict(b\'{"instances": [{"a": 1, "b": 2}]}\', s).tolist() == [[1.0, 2.0]]\n'
        "import bentos.served, bentos.app\n"
        "assert 'pandas' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


class _Join:
    def __init__(self) -> None:
        self.recorded: list[tuple[str, list[int]]] = []

    def record(self, request_id: str, predicted: list[int]) -> None:
        self.recorded.append((request_id, predicted))


def test_the_served_pipeline_answers_records_unseen_categories_and_describes_its_inputs(
    wine: tuple[Pipeline, pd.DataFrame], tmp_path: Path
) -> None:
    model, frame = wine
    meta = _metadata(model, frame, tmp_path)
    record = ModelRecord("wine:v1", "wine", "v1", tmp_path, meta)
    served = Served(LoadedModel(record, model), Limits(), tmp_path, _Join())  # type: ignore[arg-type]
    served.warm_up(served.sample_input())
    rows = frame.drop(columns=["cultivar"]).head(5)
    records = [
        {k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in rows.to_dict("records")
    ]
    records[0]["region"] = "Atlantis"  # never seen: OneHotEncoder(handle_unknown="ignore") takes it
    answer = orjson.loads(
        served.predict_body(parse_predict(orjson.dumps({"instances": records}), served.schema), "r")
    )
    assert len(answer["predictions"]) == 5 and set(answer["predictions"]) <= {"0", "1", "2"}
    assert len(served.metrics._zscores.children) == 13  # z-scores of the numeric features only
    described = orjson.loads(served.v2_metadata)
    assert described["inputs"][-2:] == [
        {"name": "region", "datatype": "BYTES", "shape": [-1]},
        {"name": "strong", "datatype": "BOOL", "shape": [-1]},
    ]
    assert described["inputs"][0] == {"name": "alcohol", "datatype": "FP64", "shape": [-1]}
    assert described["parameters"]["feature_dtypes"][-2:] == ["string", "bool"]
    assert described["parameters"]["feature_categories"] == {"region": ["high", "low", "mid"]}


def test_a_category_the_model_refuses_is_a_422_with_the_models_message(
    wine: tuple[Pipeline, pd.DataFrame], tmp_path: Path
) -> None:
    _, frame = wine
    strict = ColumnTransformer(
        [("cat", OneHotEncoder(handle_unknown="error"), ["region"])], remainder="passthrough"
    )
    model = Pipeline([("columns", strict), ("lr", LogisticRegression(max_iter=2000))])
    model.fit(frame.drop(columns=["cultivar"]), frame["cultivar"])
    record = ModelRecord("wine:v2", "wine", "v2", tmp_path, _metadata(model, frame, tmp_path))
    served = Served(LoadedModel(record, model), Limits(), tmp_path, _Join())  # type: ignore[arg-type]
    row = [float(v) for v in frame.iloc[0, :13]] + ["Atlantis", True]
    with pytest.raises(BadRequest) as info:
        served.predict_body(parse_predict(orjson.dumps({"instances": [row]}), served.schema), "r")
    assert (
        info.value.status == 422
        and "the model refuses these rows: Found unknown categories" in info.value.message
    )
