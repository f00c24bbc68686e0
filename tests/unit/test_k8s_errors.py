"""Kubernetes API failures become the project's errors once, at the client boundary, each with the
retry policy a caller needs (409 retry, 5xx/unreachable wait, 422 give up with the server's words)."""

from __future__ import annotations

import json

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from rollout.errors import (
    ApiUnavailableError,
    ConflictError,
    ForbiddenError,
    InvalidObjectError,
    NotFoundError,
    PermanentError,
    TemporaryError,
)
from rollout.k8s.client import translate


def _api(status: int, message: str = "boom", headers: dict | None = None) -> ApiException:
    exc = ApiException(status=status, reason="r", body=json.dumps({"kind": "Status", "message": message}))
    exc.headers = headers
    return exc


@pytest.mark.parametrize(
    ("status", "kind", "retryable"),
    [
        (404, NotFoundError, False),
        (409, ConflictError, True),
        (422, InvalidObjectError, False),
        (400, InvalidObjectError, False),
        (403, ForbiddenError, False),
        (401, ForbiddenError, False),
        (500, ApiUnavailableError, True),
        (503, ApiUnavailableError, True),
        (429, ApiUnavailableError, True),
    ],
)
def test_status_codes_map_to_errors_with_their_retry_policy(status: int, kind: type, retryable: bool) -> None:
    err = translate(_api(status, "spec.http[0].route: Invalid value"), "VirtualService ns/iris")
    assert isinstance(err, kind)
    assert isinstance(err, TemporaryError) is retryable
    assert isinstance(err, PermanentError) is (kind in (InvalidObjectError, ForbiddenError))
    assert "VirtualService ns/iris" in str(err) and "spec.http[0].route: Invalid value" in str(err)


def test_retry_after_is_honoured_and_connection_errors_are_temporary() -> None:
    err = translate(_api(429, headers={"Retry-After": "7"}), "x")
    assert isinstance(err, ApiUnavailableError) and err.delay == 7.0
    err = translate(urllib3.exceptions.MaxRetryError(None, "/apis", "connection refused"), "x")
    assert isinstance(err, ApiUnavailableError) and "cannot reach" in str(err)


def test_a_non_json_body_is_still_reported() -> None:
    exc = ApiException(status=422, reason="Unprocessable", body="plain text from a proxy")
    assert "plain text from a proxy" in str(translate(exc, "x"))
