"""The BentoML service: one definition that serves any registered model, chosen by tag at start.

    BENTO_MODEL_TAG=iris:v2 bentoml serve bentos.service:ModelService --host 127.0.0.1 --port 3000

Stable, candidate and shadow servers are this same code with different tags. Environment:

    BENTO_MODEL_TAG        the model to serve (default iris:v1); refused if its artifact hash is wrong
    BENTO_MODEL_DIGEST     sha256:<64 hex>: refuse any artifact but this one, whatever the model store
                           records (the pin of a ModelRollout or of the chart's values); unset: none
    BENTO_WORKERS          worker processes (default 1)
    BENTO_MAX_BATCH        rows per request (default 1000); more is a 422
    BENTO_MAX_BODY_BYTES   request body size (default 1 MiB); more is a 413
    BENTO_METRICS_DIR      override the per-server metrics/feedback directory (see bentos/metrics.py)
    BENTO_LEAN             0 sends every request through BentoML's full middleware stack (default 1:
                           the model app's paths skip it, see _LeanService)
    BENTO_GC_LOG           1 logs garbage-collection pauses over 5 ms (diagnosis)
    BENTO_JOIN_STORE       where labels meet predictions: local (default, SQLite per server) or
                           redis://host:port/db (every pod of every version; see bentos/join.py)
    BENTO_FEEDBACK_TOKEN   bearer token /feedback requires (or _TOKEN_FILE)

The endpoints are a raw ASGI app (``bentos/app.py``) mounted at ``/``, bound to the served
classifier or regressor (``bentos/served.py``); BentoML's own per-request extras that cost time
without serving this app (its request metrics, access log, tracing spans) are switched off in the
service config. Each worker loads the model once (hash-checked), warms it up,
then freezes the start-up objects out of the garbage collector's way (``gc.freeze``). Built by the
root ``bentofile.yaml``; started by ``rollout/local/bento.py`` and the tests.
"""

from __future__ import annotations

import gc
import logging
import os
import warnings
from typing import Any

import bentoml
import sklearn
from bentoml._internal.context import server_context

from bentos.app import ModelApp
from bentos.join import FeedbackAuth, open_join
from bentos.join import check_env as check_join_env
from bentos.metrics import use_server_metrics_dir
from bentos.parsing import BadRequest
from bentos.served import Limits, serve_model
from rollout.registry import MODEL_DIGEST_ENV, MODEL_TAG_ENV, get_record, load_model, verify_artifact

logger = logging.getLogger("bentos.service")

DEFAULT_MODEL_TAG = "iris:v1"
WORKERS = int(os.environ.get("BENTO_WORKERS", "1"))
LIMITS = Limits(
    max_batch=int(os.environ.get("BENTO_MAX_BATCH", "1000")),
    max_body_bytes=int(os.environ.get("BENTO_MAX_BODY_BYTES", str(1 << 20))),
)
# paths answered by the mounted app: no tracing spans for them
APP_PATHS = ["/predict", "/v1/models/", "/v2", "/feedback", "/metrics"]


def _accept_one_connection_per_wakeup() -> None:
    """Share new connections between the workers.

    The workers of a server all accept on one listening socket (circus passes its fd). asyncio
    accepts up to ``backlog`` (BentoML: 2048) pending connections per wake-up, so the first worker
    to wake takes a whole burst — wrk's or nginx's keep-alive pool all land on one worker while the
    other idles (seen in the metrics files: 1808 requests against 0). Accepting one connection per
    wake-up (as gunicorn's workers do) lets the other workers take the next ones. The listen
    backlog itself is unchanged. Worker processes only.
    """
    from asyncio import selector_events

    original = selector_events.BaseSelectorEventLoop._accept_connection
    if getattr(original, "__accepts_one__", False):
        return

    def accept_one(self: Any, protocol_factory: Any, sock: Any, *args: Any, **kwargs: Any) -> Any:
        # called as (protocol_factory, sock, sslcontext, server, backlog, ...): backlog -> 1
        if len(args) >= 3:
            args = (*args[:2], 1, *args[3:])
        else:
            kwargs["backlog"] = 1
        return original(self, protocol_factory, sock, *args, **kwargs)

    accept_one.__accepts_one__ = True  # type: ignore[attr-defined]
    selector_events.BaseSelectorEventLoop._accept_connection = accept_one  # type: ignore[method-assign]


SUPERVISOR_PID_ENV = "BENTO_SUPERVISOR_PID"  # set by the supervisor, inherited by its workers


def _die_with_the_supervisor() -> None:
    """Circus starts each worker in a process group of its own, so a SIGKILL of the supervisor's
    group (or of the supervisor) would leave the workers running, still holding the port. Ask
    Linux to send SIGTERM to this worker when its parent dies (PR_SET_PDEATHSIG); elsewhere a no-op.

    The supervisor died before the request took effect when this worker's parent is no longer the
    supervisor whose pid it inherited (``BENTO_SUPERVISOR_PID``; without it, the parent at this
    call's start). Not "the parent is pid 1": in a container the image's entrypoint execs
    ``bentoml serve``, so the supervisor IS pid 1, and every worker exited at once."""
    import ctypes
    import signal

    supervisor = int(os.environ.get(SUPERVISOR_PID_ENV) or os.getppid())
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != supervisor:  # the supervisor died before the request took effect
        os._exit(1)


if server_context.worker_index is not None:
    # in a worker process: route prometheus_client to this server's directory before any metric
    # exists (the supervisor has no worker index and must not touch it)
    _die_with_the_supervisor()
    use_server_metrics_dir()
    if WORKERS > 1:
        _accept_one_connection_per_wakeup()
else:
    # in `bentoml serve`'s supervisor (also `bentoml build`, harmlessly): its workers copy this
    # environment (circus copy_env), so each knows which parent is its supervisor
    os.environ[SUPERVISOR_PID_ENV] = str(os.getpid())
    if os.environ.get(MODEL_TAG_ENV):
        # fail fast, before any worker starts, on a missing or tampered model or one that is not
        # the pinned artifact (workers would otherwise be restarted over and over); the error
        # names both digests and the server never becomes ready
        verify_artifact(get_record(os.environ[MODEL_TAG_ENV]), os.environ.get(MODEL_DIGEST_ENV))
    check_join_env()  # a wrong join store or a shared one without a token: fail once, here

APP = ModelApp(LIMITS)


@bentoml.service(
    name="model",
    workers=WORKERS,
    traffic={"timeout": 60},
    metrics={"enabled": False},  # /metrics is ours: model series, aggregated per server
    logging={"access": {"enabled": False}},
    tracing={"sample_rate": 0.0, "excluded_urls": APP_PATHS},
    envs=[{"name": MODEL_TAG_ENV, "value": DEFAULT_MODEL_TAG}],
)
@bentoml.asgi_app(APP, path="/")
class ModelService:
    """Loads the model named by $BENTO_MODEL_TAG and binds it to the mounted ASGI app."""

    def __init__(self) -> None:
        tag = os.environ.get(MODEL_TAG_ENV) or DEFAULT_MODEL_TAG
        metrics_dir = use_server_metrics_dir()
        loaded = load_model(tag, os.environ.get(MODEL_DIGEST_ENV))  # checked again: what is unpickled
        # our parser rejects NaN/inf before predict, so skip sklearn's own finiteness scan
        sklearn.set_config(assume_finite=True)
        # a model fitted on a DataFrame gets rows in its feature_names_in_ order (the parser's
        # Schema is those names): sklearn's per-call warning about a nameless array says nothing
        warnings.filterwarnings("ignore", message="X does not have valid feature names")
        record = loaded.record
        self.feedback = open_join(record.name, record.version, metrics_dir, record.metadata.is_regressor)
        self.feedback.start()
        served = serve_model(loaded, LIMITS, metrics_dir, self.feedback, FeedbackAuth.from_env())
        warm = served.sample_input()
        for _ in range(3):
            served.warm_up(warm)
        served.metrics.flush_interval = float(os.environ.get("BENTO_METRICS_FLUSH_SECONDS", "0.5"))
        served.metrics.start()
        self.served = served
        APP.bind(served)
        gc.collect()
        gc.freeze()
        if os.environ.get("BENTO_GC_LOG"):
            _log_gc_pauses()
        logger.info(
            "serving %s (%s, %s%s) from worker %s",
            tag,
            loaded.record.metadata.estimator,
            loaded.record.digest,
            ", pinned" if os.environ.get(MODEL_DIGEST_ENV) else "",
            server_context.worker_index,
        )

    @bentoml.on_shutdown
    def close(self) -> None:
        self.served.metrics.close()
        self.feedback.close()


def _log_gc_pauses(threshold: float = 0.005) -> None:
    """Log every garbage-collection pause over ``threshold`` seconds (BENTO_GC_LOG=1; diagnosis)."""
    import time

    started = [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        elif (pause := time.perf_counter() - started[0]) > threshold:
            logger.warning(
                "gc pause %.1f ms (generation %d, %d collected)",
                pause * 1000,
                info["generation"],
                info["collected"],
            )

    gc.callbacks.append(callback)


class _LeanService(type(ModelService)):  # type: ignore[misc]
    """BentoML's service object with one change: the app handed to uvicorn sends the mounted
    app's paths straight to it, past BentoML's per-request middleware stack (context, timeout
    task, tracing and metrics wrappers, routing), which costs more CPU than the model itself on a
    single-row predict (an in-process A/B of the two ASGI apps on this 2-core machine: 0.5-1 ms per
    request, against ~0.3-0.6 ms for predict_proba). Everything else — start-up and shutdown
    (lifespan: the service instance, the model load), BentoML's health routes and UI — is
    BentoML's app, unchanged."""

    __slots__ = ()

    def to_asgi(self, is_main: bool = True) -> Any:
        return LeanDispatch(super().to_asgi(is_main=is_main), APP)


class LeanDispatch:
    """ASGI: HTTP requests under APP_PATHS go to the model app, the rest to BentoML's app."""

    def __init__(self, bentoml_app: Any, model_app: ModelApp) -> None:
        self.bentoml_app = bentoml_app
        self.model_app = model_app
        self.prefixes = tuple(APP_PATHS)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.bentoml_app(scope, receive, send)
        elif scope["path"].startswith(self.prefixes):
            await self.model_app(scope, receive, send)
        else:
            await self.bentoml_app(scope, receive, self._identified(scope, send))

    def _identified(self, scope: dict[str, Any], send: Any) -> Any:
        """``send`` that adds the model name, version and request id to BentoML's responses too."""
        served = self.model_app.served
        try:
            rid = self.model_app._request_id(scope)
        except BadRequest:
            rid = ""
        extra = [(b"x-request-id", rid.encode("latin-1"))] if rid else []
        if served is not None:
            extra.extend(served.base_headers)

        async def send_with_identity(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        return send_with_identity


if os.environ.get("BENTO_LEAN", "1") != "0":
    ModelService.__class__ = _LeanService
