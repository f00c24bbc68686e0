"""A standard Open Inference Protocol client against a real ``bentoml serve`` of the model service.

Given a server of iris:v1 on 127.0.0.1, when Triton's own HTTP client (``tritonclient.http``, from
PyPI: the client KServe's documentation uses for the v2 protocol too) asks it for health, metadata
and inferences, then it reads every answer: the server is live and ready, the model's metadata and
an inference read back, and the classes are the ones ``/predict`` answers for the same rows. When
the request is wrong (an unknown model or version, the binary tensor extension this server does
not speak, a wrong datatype or shape, no inputs) or the prediction fails (a second server with
``BENTO_FAULT_ERROR_RATE=1``), the client raises ``InferenceServerException`` whose message is the
server's own: the OIP error body ``{"error": "<message>"}`` is what the client reads (it raised
with the whole ``{"code", "message"}`` object, and could not print it, while /v2 answered the
project's own shape). Malformed JSON, which the client cannot send, is checked at the wire.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from rollout.local.bento import BentoServer

pytestmark = pytest.mark.integration

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.0, 2.9, 4.5, 1.5], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
FEATURES = "sepal_length, sepal_width, petal_length, petal_width"


@pytest.fixture(scope="module")
def server(bento_server: Callable[..., BentoServer]) -> BentoServer:
    return bento_server("iris:v1")


@pytest.fixture(scope="module")
def client(server: BentoServer) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}", network_timeout=30.0)
    yield c
    c.close()


def tensor(rows: object, datatype: str = "FP64", name: str = "input-0") -> triton.InferInput:
    data = np.asarray(rows, dtype=triton.triton_to_np_dtype(datatype))
    one = triton.InferInput(name, list(data.shape), datatype)
    one.set_data_from_numpy(data, binary_data=False)  # JSON tensors: this server has no binary extension
    return one


def json_outputs() -> list[triton.InferRequestedOutput]:
    return [triton.InferRequestedOutput(n, binary_data=False) for n in ("predictions", "probabilities")]


def refused(call: Callable[[], object]) -> InferenceServerException:
    """The exception ``call`` raises; its message must be a plain, non-empty string (the server's)."""
    with pytest.raises(InferenceServerException) as caught:
        call()
    exc = caught.value
    message = exc.message()
    assert isinstance(message, str) and message.strip(), repr(message)
    assert not message.lstrip().startswith("{") and "exception occurred in the client" not in message
    assert str(exc) == f"[{exc.status()}] {message}"  # what a user of the client sees printed
    return exc


def test_health_and_server_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("iris") and client.is_model_ready("iris", "v1")
    assert not client.is_model_ready("wine")  # a 4xx is "no", as the protocol says
    assert client.get_server_metadata()["name"] == "bento-rollout"


def test_model_metadata_reads(client: triton.InferenceServerClient) -> None:
    meta = client.get_model_metadata("iris")
    assert (meta["name"], meta["versions"], meta["platform"]) == ("iris", ["v1"], "sklearn")
    assert meta["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}]
    assert [o["name"] for o in meta["outputs"]] == ["predictions", "probabilities"]
    assert client.get_model_metadata("iris", model_version="v1") == meta


@pytest.mark.parametrize("datatype", ["FP64", "FP32", "INT64"])
def test_infer_answers_the_classes_predict_answers(
    server: BentoServer, client: triton.InferenceServerClient, datatype: str
) -> None:
    rows = np.round(ROWS) if datatype.startswith("INT") else ROWS
    predict = httpx.post(f"{server.url}/predict", json={"instances": np.asarray(rows).tolist()}, timeout=30)
    assert predict.status_code == 200, predict.text
    result = client.infer("iris", [tensor(rows, datatype)], request_id="oip-1", outputs=json_outputs())
    assert result.as_numpy("predictions").tolist() == predict.json()["predictions"]
    assert result.as_numpy("probabilities").shape == (len(rows), 3)
    # FP32 rounds the features on the way: probabilities agree to 1e-6, not to the last bit
    np.testing.assert_allclose(result.as_numpy("probabilities"), predict.json()["probabilities"], atol=1e-6)
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == ("iris", "v1", "oip-1")


def test_infer_with_the_clients_defaults(client: triton.InferenceServerClient) -> None:
    """No outputs named: the client asks for binary outputs, and reads the JSON ones it gets."""
    result = client.infer("iris", [tensor(ROWS[:1])], model_version="v1")
    assert result.as_numpy("predictions").tolist() == ["setosa"]


def test_unknown_model_or_version_is_a_404_naming_it(client: triton.InferenceServerClient) -> None:
    exc = refused(lambda: client.get_model_metadata("wine"))
    assert exc.status() == "404" and exc.message() == "this server serves model 'iris', not 'wine'"
    exc = refused(lambda: client.infer("wine", [tensor(ROWS[:1])]))
    assert exc.status() == "404" and "not 'wine'" in exc.message()
    exc = refused(lambda: client.get_model_metadata("iris", model_version="v9"))
    assert exc.status() == "404" and exc.message() == "model iris has no version 'v9'; this server serves v1"


def test_the_binary_tensor_extension_is_refused_by_name(client: triton.InferenceServerClient) -> None:
    """tritonclient's default (binary_data=True) sends a JSON header then raw bytes."""
    binary = triton.InferInput("input-0", [1, 4], "FP64")
    binary.set_data_from_numpy(np.asarray(ROWS[:1], dtype=np.float64))
    exc = refused(lambda: client.infer("iris", [binary]))
    assert exc.status() == "400"
    assert "binary tensor data" in exc.message() and "binary_data=False" in exc.message()


BAD_INFER = {
    "wrong datatype": (
        lambda: [tensor([[True, False, True, False]], "BOOL")],
        "inputs[0].datatype 'BOOL' is not supported; use FP32, FP64 or an INT type",
    ),
    "wrong feature count": (
        lambda: [tensor([[5.1, 3.5, 1.4]])],
        f"expected 4 features per row ({FEATURES}), got 3",
    ),
    "three dimensions": (lambda: [tensor([[ROWS[0]]])], "inputs[0].shape must be [rows, 4], got [1, 1, 4]"),
    "no inputs": (
        lambda: [],
        'inputs is missing or empty: expected {"inputs": [{"name", "shape", "datatype", "data"}]}',
    ),
    "two inputs": (  # more than one: one input per feature, named after it (bentos/tabular.py)
        lambda: [tensor(ROWS[:1]), tensor(ROWS[:1], name="input-1")],
        "inputs[0] is named 'input-0', not a feature of the model; send one input per feature: "
        "sepal_length (FP64), sepal_width (FP64), petal_length (FP64), petal_width (FP64), or one input of "
        "shape [rows, 4]",
    ),
    "no rows": (lambda: [tensor(np.zeros((0, 4)))], "inputs[0] has no rows (shape [0, 4])"),
}


@pytest.mark.parametrize("case", sorted(BAD_INFER))
def test_bad_inputs_surface_the_servers_message(client: triton.InferenceServerClient, case: str) -> None:
    inputs, message = BAD_INFER[case]
    exc = refused(lambda: client.infer("iris", inputs(), outputs=json_outputs()))
    assert exc.status() == "422" and message in exc.message(), exc.message()
    assert (
        client.infer("iris", [tensor(ROWS[:1])], outputs=json_outputs()).as_numpy("predictions") is not None
    )


def test_malformed_json_on_v2_is_the_oip_error_object(server: BentoServer) -> None:
    for path in ("/v2/models/iris/infer", "/v2/models/iris/versions/v1/infer"):
        answer = httpx.post(server.url + path, content=b'{"inputs": [', timeout=30)
        assert answer.status_code == 400
        body = answer.json()
        assert list(body) == ["error"] and body["error"].startswith("request body is not valid JSON: ")
    nowhere = httpx.get(server.url + "/v2/nowhere", timeout=30)
    assert (nowhere.status_code, nowhere.json()) == (404, {"error": "no endpoint /v2/nowhere"})
    # the project's own endpoints keep their shape, with a machine-readable code
    predict = httpx.post(server.url + "/predict", content=b'{"instances": [', timeout=30)
    assert predict.status_code == 400 and predict.json()["error"]["code"] == "malformed_json"


def test_a_failed_prediction_is_a_500_the_client_reads(bento_server: Callable[..., BentoServer]) -> None:
    failing = bento_server("iris:v1", extra_env={"BENTO_FAULT_ERROR_RATE": "1"})
    c = triton.InferenceServerClient(url=f"127.0.0.1:{failing.port}", network_timeout=30.0)
    try:
        assert c.is_server_live()
        exc = refused(lambda: c.infer("iris", [tensor(ROWS[:1])], outputs=json_outputs()))
        assert exc.status() == "500" and exc.message() == "prediction failed (fault injection is on)"
        # and the error-rate gate sees it: model_requests_total counts the failed infer as a 500
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            text = httpx.get(failing.url + "/metrics", timeout=10).text
            if 'endpoint="infer"' in text:
                break
            time.sleep(0.2)
        failed = [line for line in text.splitlines() if line.startswith("model_requests_total")
                  and 'endpoint="infer"' in line and 'code="500"' in line]  # fmt: skip
        assert failed and float(failed[0].rsplit(" ", 1)[1]) >= 1, text
    finally:
        c.close()
