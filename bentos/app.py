"""The model service's HTTP endpoints: a lean raw-ASGI app that BentoML mounts at ``/``.

A plain ``@bentoml.api`` endpoint spends most of a request in per-request schema and validation
work (see ANCHORS.md), so the hot path here is a bare ASGI callable: one dict lookup to route,
orjson + one numpy conversion to parse, ``predict_proba`` under sklearn's ``assume_finite`` (after
our own finiteness check), orjson with numpy support to answer. BentoML still owns packaging,
process management, start-up and shutdown (``bentoml serve``, ``bentoml build``).

Endpoints (every response carries ``X-Model-Name``, ``X-Model-Version``, ``X-Request-ID``; an
incoming ``X-Request-ID`` is honoured):

    POST /predict                      {"instances": [[...]] | [{"sepal_length": ...}]}
    POST /v1/models/{name}:predict     the same body (KServe v1 protocol)
    POST /v2/models/{name}/infer       Open Inference Protocol v2
    GET  /v2, /v2/health/live, /v2/health/ready, /v2/models/{name}, /v2/models/{name}/ready
    POST /feedback                     {"request_id": ..., "label": ...}: joined by bentos/join.py
                                       (bearer token when BENTO_FEEDBACK_TOKEN is set)
    GET  /metrics                      Prometheus text, aggregated over the server's workers

A classifier answers class names and probabilities, a regressor its predicted values (one FP64
output on /v2) and takes numbers as labels: what either task does is in bentos/served.py. A model
with string features takes records, rows and /v2 inputs per feature (BYTES) of its features'
types, parsed into a DataFrame by bentos/tabular.py.

Bad input is a 4xx JSON ``{"error": {"code", "message"}, "request_id"}``; on ``/v2`` every
error (4xx and 5xx) is the Open Inference Protocol's ``{"error": "<message>"}`` instead, the
string KServe's and Triton's clients read (the request id is in ``X-Request-ID``). Requests to
predict, infer and feedback are counted in ``model_requests_total`` by status code. Built by
``bentos/service.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from bentos.metrics import render
from bentos.parsing import BadRequest, parse_predict, parse_v2_infer, valid_request_id
from bentos.served import Limits, ServedModel

logger = logging.getLogger("bentos.app")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

JSON = b"application/json"


def fault_error_rate() -> float:
    """Fault injection for drills and benchmarks: ``BENTO_FAULT_ERROR_RATE`` (0..1) of predictions
    fail with HTTP 500, as a bad release would. 0 (the default) in normal serving."""
    raw = os.environ.get("BENTO_FAULT_ERROR_RATE", "0")
    try:
        rate = float(raw)
    except ValueError:
        raise ValueError(f"BENTO_FAULT_ERROR_RATE must be a number between 0 and 1, not {raw!r}") from None
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"BENTO_FAULT_ERROR_RATE must be between 0 and 1, not {rate}")
    return rate


def is_oip_path(path: str) -> bool:
    """The Open Inference Protocol's routes: ``/v2`` and everything under ``/v2/``."""
    return path == "/v2" or path.startswith("/v2/")


class InjectedFault(Exception):
    """A prediction failed on purpose (BENTO_FAULT_ERROR_RATE)."""


class ModelApp:
    """The ASGI callable. ``bind()`` it to a loaded model before serving (in the worker)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.served: ServedModel | None = None
        self._rid_prefix = secrets.token_hex(6)
        self._rid_counter = itertools.count(1)
        self.fault_rate = fault_error_rate()

    def bind(self, served: ServedModel) -> None:
        self.served = served

    def _request_id(self, scope: Scope) -> str:
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                rid = value.decode("latin-1")
                if not valid_request_id(rid):
                    raise BadRequest(
                        400, "bad_request_id", "X-Request-ID must be 1-128 visible ASCII characters"
                    )
                return rid
        return f"{self._rid_prefix}-{next(self._rid_counter):x}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        served = self.served
        path: str = scope["path"]
        method: str = scope["method"]
        endpoint = ""
        rid = ""
        extra: list[tuple[bytes, bytes]] = []
        try:
            rid = self._request_id(scope)
            if served is None:
                raise BadRequest(503, "not_ready", "the model is still loading")
            if path == "/predict" or (path.startswith("/v1/models/") and path.endswith(":predict")):
                endpoint = "predict"
                self._expect(method, "POST")
                if path != "/predict":
                    self._check_model(served, path[len("/v1/models/") : -len(":predict")])
                X = parse_predict(await self._body(scope, receive), served.schema)
                self._maybe_fail()
                body = served.predict_body(X, rid)
                status = 200
            elif is_oip_path(path):
                # named before the call: a failed infer counts too (the error-rate gate's 5xx)
                endpoint = "infer" if path.endswith("/infer") else ""
                endpoint, status, body, rid = await self._v2(served, path, method, scope, receive, rid)
            elif path == "/feedback":
                endpoint = "feedback"
                self._expect(method, "POST")
                served.auth.check(scope["headers"])
                feedback = served.parse_labels(await self._body(scope, receive))
                resolved = await asyncio.to_thread(
                    served.feedback.resolve, feedback.request_id, feedback.labels
                )
                if served.feedback.counts_itself and not resolved.duplicate:
                    served.count_feedback(resolved)
                answer: dict[str, Any] = {
                    "request_id": feedback.request_id,
                    **served.feedback_answer(resolved),
                    "duplicate": resolved.duplicate,
                }
                if resolved.versions:
                    answer["counted_for"] = list(resolved.versions)
                body = orjson.dumps(answer)
                status = 200
            elif path == "/metrics":
                self._expect(method, "GET")
                served.metrics.flush()
                text, content_type = await asyncio.to_thread(render, served.metrics_dir)
                await self._send(send, 200, text, rid, served, content_type.encode())
                return
            else:
                raise BadRequest(
                    404,
                    "not_found",
                    f"no endpoint {path}; see /predict, /v2/models/{{name}}/infer, /feedback",
                )
        except BadRequest as exc:
            status = exc.status
            body = self._error_body(path, exc.code, exc.message, rid, served)
            if exc.retry_after is not None:
                extra = [(b"retry-after", b"%d" % exc.retry_after)]
        except InjectedFault:
            status = 500
            body = self._error_body(
                path, "injected_fault", "prediction failed (fault injection is on)", rid, served
            )
        except Exception:  # a bug, never bad input: answer 500 and keep serving
            logger.exception("request %s %s failed", method, path)
            status = 500
            body = self._error_body(path, "internal", "internal error; see the server log", rid, served)
        await self._send(send, status, body, rid, served, extra=extra)
        if endpoint and served is not None:
            served.metrics.request(endpoint, status, time.perf_counter() - started)

    async def _v2(
        self, served: ServedModel, path: str, method: str, scope: Scope, receive: Receive, rid: str
    ) -> tuple[str, int, bytes, str]:
        if path == "/v2/health/live":
            return "", 200, b'{"live":true}', rid
        if path == "/v2/health/ready":
            return "", 200, b'{"ready":true}', rid
        if path == "/v2":
            return "", 200, orjson.dumps({"name": "bento-rollout", "version": "2", "extensions": []}), rid
        if not path.startswith("/v2/models/"):
            raise BadRequest(404, "not_found", f"no endpoint {path}")
        rest = path[len("/v2/models/") :]
        name, _, tail = rest.partition("/")
        if tail.startswith("versions/"):  # /v2/models/{name}/versions/{version}[/...]
            version, _, tail = tail[len("versions/") :].partition("/")
            if version != served.version:
                raise BadRequest(
                    404,
                    "model_not_found",
                    f"model {name} has no version {version!r}; this server serves {served.version}",
                )
        self._check_model(served, name)
        if tail == "":
            self._expect(method, "GET")
            return "", 200, served.v2_metadata, rid
        if tail == "ready":
            return "", 200, orjson.dumps({"name": served.name, "ready": True}), rid
        if tail != "infer":
            raise BadRequest(404, "not_found", f"no endpoint {path}")
        self._expect(method, "POST")
        if any(key == b"inference-header-content-length" for key, _ in scope["headers"]):
            # Triton's binary tensor extension (tritonclient's default for set_data_from_numpy):
            # a JSON header, then raw bytes. Without this, the answer would be "not valid JSON".
            raise BadRequest(
                400,
                "binary_data_unsupported",
                "binary tensor data (Inference-Header-Content-Length) is not supported here; send "
                "every input as JSON data (tritonclient: set_data_from_numpy(..., binary_data=False))",
            )
        X, v2_id = parse_v2_infer(await self._body(scope, receive), served.schema)
        self._maybe_fail()
        return "infer", 200, served.infer_body(X, rid, v2_id), rid

    def _maybe_fail(self) -> None:
        if self.fault_rate and random.random() < self.fault_rate:
            raise InjectedFault

    @staticmethod
    def _expect(method: str, allowed: str) -> None:
        if method != allowed:
            raise BadRequest(405, "method_not_allowed", f"method {method} is not allowed here; use {allowed}")

    @staticmethod
    def _check_model(served: ServedModel, name: str) -> None:
        if name != served.name:
            raise BadRequest(
                404, "model_not_found", f"this server serves model {served.name!r}, not {name!r}"
            )

    async def _body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.limits.max_body_bytes
        for key, value in scope["headers"]:
            if key == b"content-length":
                if value.isdigit() and int(value) > limit:
                    raise BadRequest(
                        413,
                        "body_too_large",
                        f"request body of {int(value)} bytes is over the limit of {limit} bytes",
                    )
                break
        message = await receive()
        body: bytes = message.get("body", b"")
        if not message.get("more_body"):
            if len(body) > limit:
                raise BadRequest(413, "body_too_large", f"request body is over the limit of {limit} bytes")
            return body
        chunks = [body]
        size = len(body)
        while message.get("more_body"):
            message = await receive()
            if message["type"] == "http.disconnect":
                raise BadRequest(400, "client_disconnected", "the client went away mid-request")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BadRequest(413, "body_too_large", f"request body is over the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    @staticmethod
    def _error_body(path: str, code: str, message: str, rid: str, served: ServedModel | None) -> bytes:
        """The JSON of an error answer: on the Open Inference Protocol's routes its REST error
        object, ``{"error": "<message>"}`` and nothing else (KServe's and Triton's clients raise
        with that string); elsewhere the project's own shape, with the code and identity."""
        if is_oip_path(path):
            return orjson.dumps({"error": message})
        payload: dict[str, Any] = {"error": {"code": code, "message": message}, "request_id": rid}
        if served is not None:
            payload["model"], payload["version"] = served.name, served.version
        return orjson.dumps(payload)

    @staticmethod
    async def _send(
        send: Send,
        status: int,
        body: bytes,
        rid: str,
        served: ServedModel | None,
        content_type: bytes = JSON,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        headers.extend(extra or ())
        if served is not None:
            headers.extend(served.base_headers)
        if rid:
            headers.append((b"x-request-id", rid.encode("latin-1")))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
