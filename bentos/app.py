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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bentos.join import FeedbackAuth, Join
from bentos.metrics import ModelMetrics, render
from bentos.parsing import BadRequest, Schema, parse_feedback, parse_predict, parse_v2_infer, valid_request_id
from rollout.errors import ModelError
from rollout.registry import LoadedModel

logger = logging.getLogger("bentos.app")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

JSON = b"application/json"
NUMPY = orjson.OPT_SERIALIZE_NUMPY


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


@dataclass(frozen=True)
class Limits:
    max_batch: int = 1000
    max_body_bytes: int = 1 << 20


class Served:
    """Everything about the loaded model that a request needs, computed once at start-up."""

    def __init__(
        self,
        loaded: LoadedModel,
        limits: Limits,
        metrics_dir: Path,
        feedback: Join,
        auth: FeedbackAuth | None = None,
    ) -> None:
        meta = loaded.record.metadata
        self.estimator = loaded.estimator
        self.name = loaded.record.name
        self.version = loaded.record.version
        self.class_names = list(meta.class_names)
        self.classes = np.asarray(self.estimator.classes_)
        self.column_class = column_classes(self.classes, self.class_names)
        # a classifier without predict_proba (LinearSVC, RidgeClassifier...) answers one-hot
        # probabilities: its predicted class with confidence 1
        self.has_proba = hasattr(self.estimator, "predict_proba")
        self.means = np.asarray(meta.feature_means, dtype=np.float64)
        self.stds = np.where(np.asarray(meta.feature_stds) > 0, np.asarray(meta.feature_stds), 1.0)
        self.schema = Schema(tuple(meta.feature_names), limits.max_batch)
        self.metrics_dir = metrics_dir
        self.metrics = ModelMetrics(
            self.name,
            self.version,
            list(meta.feature_names),
            self.class_names,
            meta.sklearn_version,
            meta.dataset_sha256,
        )
        self.feedback = feedback
        self.auth = auth or FeedbackAuth(None)
        self.base_headers = [
            (b"x-model-name", self.name.encode()),
            (b"x-model-version", self.version.encode()),
        ]
        self.v2_metadata = orjson.dumps(
            {
                "name": self.name,
                "versions": [self.version],
                "platform": "sklearn",
                "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, len(meta.feature_names)]}],
                "outputs": [
                    {"name": "predictions", "datatype": "BYTES", "shape": [-1]},
                    {"name": "probabilities", "datatype": "FP64", "shape": [-1, len(self.class_names)]},
                ],
                "parameters": {
                    "feature_names": meta.feature_names,
                    "class_names": self.class_names,
                    "digest": loaded.record.digest,
                },
            }
        )

    def probabilities(self, X: np.ndarray) -> np.ndarray:
        """One row of class probabilities per row of ``X``, columns in ``classes_`` order."""
        if self.has_proba:
            return np.asarray(self.estimator.predict_proba(X), dtype=np.float64)
        columns = np.searchsorted(self.classes, self.estimator.predict(X))  # classes_ is sorted
        proba = np.zeros((len(X), len(self.classes)), dtype=np.float64)
        proba[np.arange(len(X)), columns] = 1.0
        return proba

    def predict(self, X: np.ndarray, request_id: str) -> tuple[list[str], np.ndarray]:
        proba = self.probabilities(X)
        if not np.isfinite(proba).all():  # e.g. 1e308 overflows inside the model: no answer is better
            raise BadRequest(
                422, "value_out_of_range", "feature values this large make the model's output overflow"
            )
        best = proba.argmax(axis=1)
        classes = self.column_class[best]
        self.metrics.predictions(classes, proba[np.arange(len(best)), best], (X - self.means) / self.stds)
        predicted = classes.tolist()
        self.feedback.record(request_id, predicted)
        names = self.class_names
        return [names[c] for c in predicted], proba


def column_classes(classes: np.ndarray, class_names: list[str]) -> np.ndarray:
    """``predict_proba`` column -> index into ``class_names``. A model registered by ``rollout
    import`` has its ``classes_`` as text for class names; the iris variants have class indices
    (0, 1, 2) as ``classes_`` and the target names as class names."""
    text = [str(c) for c in classes.tolist()]
    if all(t in class_names for t in text):
        return np.asarray([class_names.index(t) for t in text], dtype=np.int64)
    if np.issubdtype(classes.dtype, np.integer) and all(0 <= int(c) < len(class_names) for c in classes):
        return classes.astype(np.int64)
    raise ModelError(
        f"the model's classes {text[:10]} are not the class_names of its metadata {class_names[:10]}: "
        "register it again with `rollout import`"
    )


class ModelApp:
    """The ASGI callable. ``bind()`` it to a loaded model before serving (in the worker)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.served: Served | None = None
        self._rid_prefix = secrets.token_hex(6)
        self._rid_counter = itertools.count(1)
        self.fault_rate = fault_error_rate()

    def bind(self, served: Served) -> None:
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
                predictions, proba = served.predict(X, rid)
                body = orjson.dumps(
                    {
                        "predictions": predictions,
                        "probabilities": proba,
                        "model": served.name,
                        "version": served.version,
                        "request_id": rid,
                    },
                    option=NUMPY,
                )
                status = 200
            elif is_oip_path(path):
                # named before the call: a failed infer counts too (the error-rate gate's 5xx)
                endpoint = "infer" if path.endswith("/infer") else ""
                endpoint, status, body, rid = await self._v2(served, path, method, scope, receive, rid)
            elif path == "/feedback":
                endpoint = "feedback"
                self._expect(method, "POST")
                served.auth.check(scope["headers"])
                feedback = parse_feedback(await self._body(scope, receive), served.class_names)
                resolved = await asyncio.to_thread(
                    served.feedback.resolve, feedback.request_id, feedback.labels
                )
                if served.feedback.counts_itself and not resolved.duplicate:
                    served.metrics.feedback(resolved.received, resolved.correct)
                answer: dict[str, Any] = {
                    "request_id": feedback.request_id,
                    "received": resolved.received,
                    "correct": resolved.correct,
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
        self, served: Served, path: str, method: str, scope: Scope, receive: Receive, rid: str
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
        predictions, proba = served.predict(X, rid)
        body = orjson.dumps(
            {
                "model_name": served.name,
                "model_version": served.version,
                "id": v2_id or rid,
                "outputs": [
                    {
                        "name": "predictions",
                        "datatype": "BYTES",
                        "shape": [len(predictions)],
                        "data": predictions,
                    },
                    {
                        "name": "probabilities",
                        "datatype": "FP64",
                        "shape": list(proba.shape),
                        "data": proba.ravel(),
                    },
                ],
            },
            option=NUMPY,
        )
        return "infer", 200, body, rid

    def _maybe_fail(self) -> None:
        if self.fault_rate and random.random() < self.fault_rate:
            raise InjectedFault

    @staticmethod
    def _expect(method: str, allowed: str) -> None:
        if method != allowed:
            raise BadRequest(405, "method_not_allowed", f"method {method} is not allowed here; use {allowed}")

    @staticmethod
    def _check_model(served: Served, name: str) -> None:
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
    def _error_body(path: str, code: str, message: str, rid: str, served: Served | None) -> bytes:
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
        served: Served | None,
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
