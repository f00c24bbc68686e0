"""The error shapes of the model app (bentos/app.py), called as an ASGI app with no server: on the
Open Inference Protocol's routes ``{"error": "<message>"}`` and nothing else, elsewhere the
project's ``{"error": {"code", "message"}, "request_id"}``; the status is the same either way. The
answers a loaded model gives run against a real server in tests/integration/test_oip_clients.py."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from bentos.app import Limits, ModelApp, is_oip_path


def call(
    app: ModelApp, method: str, path: str, headers: list[tuple[bytes, bytes]] | None = None
) -> tuple[int, dict[str, bytes], Any]:
    """One request with an empty body: (status, headers, the JSON body)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": headers or []}
    asyncio.run(app(scope, receive, send))
    start, body = sent
    return start["status"], dict(start["headers"]), orjson.loads(body["body"])


@pytest.mark.parametrize("path", ["/v2", "/v2/health/ready", "/v2/models/iris", "/v2/models/iris/infer"])
def test_a_model_still_loading_is_a_503_in_the_oip_shape_on_v2(path: str) -> None:
    status, headers, body = call(ModelApp(Limits()), "GET", path)
    assert (status, body) == (503, {"error": "the model is still loading"})
    assert headers[b"x-request-id"]  # the request id travels in the header, not in the OIP body


def test_a_bad_request_id_on_v2_is_a_400_in_the_oip_shape() -> None:
    status, _, body = call(
        ModelApp(Limits()), "POST", "/v2/models/iris/infer", [(b"x-request-id", b"x" * 200)]
    )
    assert (status, body) == (400, {"error": "X-Request-ID must be 1-128 visible ASCII characters"})


@pytest.mark.parametrize("path", ["/predict", "/v1/models/iris:predict", "/feedback", "/v2x"])
def test_other_paths_keep_the_projects_own_shape(path: str) -> None:
    status, _, body = call(ModelApp(Limits()), "POST", path, [(b"x-request-id", b"r-1")])
    assert status == 503
    assert body == {
        "error": {"code": "not_ready", "message": "the model is still loading"},
        "request_id": "r-1",
    }


def test_which_paths_are_the_protocols() -> None:
    assert is_oip_path("/v2") and is_oip_path("/v2/") and is_oip_path("/v2/models/iris/infer")
    assert not is_oip_path("/v2x") and not is_oip_path("/v1/models/iris:predict") and not is_oip_path("/")
