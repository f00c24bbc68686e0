"""Hostile input against one real ``bentoml serve`` of the model service (iris:v1, 1 worker).

Given the server's own OpenAPI document (``bentos/openapi.py``: /predict, /v1/models/{name}:predict,
/v2/models/{name}/infer, /feedback and the v2 metadata routes), when schemathesis sends valid and
invalid requests generated from it, and hypothesis sends arbitrary bodies (random JSON, deep
nesting, huge numbers, "NaN" strings, unicode keys, wrong types, broken bytes), then:
- no answer is a 5xx, and every answer is the documented JSON (errors as ``{"error": {...}}``, on
  /v2 as the Open Inference Protocol's ``{"error": "<message>"}``);
- valid requests are answered 200 and invalid ones are refused with a 4xx;
- the server keeps answering, and its processes' resident memory (VmRSS) grows by less than
  ``RSS_BUDGET_MB`` over the whole run;
- a body over the limit is refused with 413 before it is read (the server answers while the client
  is still sending), and JSON nested deeper than the parser's limit with a 4xx, quickly.
Counts and time are bounded (max_examples per test, no deadline, one server for the module).
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from bentos.openapi import openapi_document
from rollout.local.bento import BentoServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
CLASSES = ["setosa", "versicolor", "virginica"]
MAX_BODY = 64 * 1024  # BENTO_MAX_BODY_BYTES for this server: small, so oversized bodies are cheap
RSS_BUDGET_MB = 50
ENDPOINTS = ["/predict", "/v2/models/iris/infer", "/feedback"]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)


@pytest.fixture(scope="module")
def server(bento_server: Callable[..., BentoServer]) -> Iterator[BentoServer]:
    srv = bento_server("iris:v1", workers=1, extra_env={"BENTO_MAX_BODY_BYTES": str(MAX_BODY)})
    yield srv
    assert srv.alive(), f"the server died during the fuzzing:\n{srv.log_tail()}"


@pytest.fixture(scope="module")
def client(server: BentoServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def rss_mb(server: BentoServer) -> float:
    """Resident memory of the server's processes (supervisor and workers), from /proc."""
    pids = [server.pid] + [p.pid for p in psutil.Process(server.pid).children(recursive=True)]
    total_kb = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return total_kb / 1024


def error_message(path: str, resp: Any) -> str:
    """The message of an error answer, which is always JSON: on /v2 the Open Inference Protocol's
    ``{"error": "<message>"}`` and nothing else, elsewhere a code and a message."""
    doc = resp.json()
    if path.startswith("/v2/"):
        assert set(doc) == {"error"} and isinstance(doc["error"], str) and doc["error"], doc
        return str(doc["error"])
    assert doc["error"]["code"] and doc["error"]["message"], doc
    return str(doc["error"]["message"])


def assert_answered(path: str, resp: httpx.Response, what: str) -> None:
    assert resp.status_code < 500, f"{what}: {resp.status_code} {resp.text[:300]}"
    if resp.status_code >= 400:
        error_message(path, resp)


def healthy(client: httpx.Client) -> None:
    r = client.post("/predict", json={"instances": [[5.1, 3.5, 1.4, 0.2]]})
    assert r.status_code == 200 and r.json()["predictions"] == ["setosa"], r.text


# --- the whole run's memory budget -----------------------------------------------------------------


@pytest.fixture(scope="module")
def rss_baseline(server: BentoServer, client: httpx.Client) -> Iterator[float]:
    for i in range(200):  # warm up: first requests allocate caches, arenas, the feedback store
        r = client.post("/predict", json={"instances": [[5.0 + i % 3, 3.0, 1.5, 0.2]]})
        client.post("/feedback", json={"request_id": r.json()["request_id"], "label": "setosa"})
        client.post("/predict", json={"instances": [[6.0, 2.9, 4.5, 1.5]] * (1 + i % 50)})
        client.post("/predict", content=b"{not json")
    yield rss_mb(server)


# --- schemathesis, from the service's OpenAPI document -------------------------------------------

SCHEMA = schemathesis.openapi.from_dict(openapi_document("iris", "v1", FEATURES, CLASSES))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize(("path", "method"), [("/predict", "POST"), ("/v1/models/iris:predict", "POST"),
                                              ("/v2/models/{name}/infer", "POST"), ("/feedback", "POST"),
                                              ("/v2/models/{name}", "GET")])  # fmt: skip
def test_schemathesis_cases_from_the_openapi_document(
    server: BentoServer,
    client: httpx.Client,
    rss_baseline: float,
    path: str,
    method: str,
    mode: GenerationMode,
) -> None:
    operation = SCHEMA[path][method]
    statuses: list[int] = []

    @settings(FUZZ, max_examples=60 if path == "/feedback" else 100)  # unknown feedback ids wait 0.6 s
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        resp = case.call_and_validate(base_url=server.url, checks=CHECKS, timeout=30)
        statuses.append(resp.status_code)
        if mode == GenerationMode.NEGATIVE:  # refused, as a client error (413 included, which
            # schemathesis' own negative_data_rejection check does not expect)
            assert 400 <= resp.status_code < 500, f"{case.body!r} -> {resp.status_code} {resp.text[:300]}"
        if mode == GenerationMode.POSITIVE and path != "/feedback":
            # every request the document calls valid is answered, but for what a schema cannot say:
            # feedback may name an unknown id (404), a v2 shape must match its data, and values
            # such as 1e308 overflow the model (refused rather than answered with NaN)
            if resp.status_code == 200:
                return
            refused = f"{case.body!r} -> {resp.status_code} {resp.text[:300]}"
            if path.startswith("/v2/"):  # no code on /v2 (the OIP error is one string): its message
                message = error_message(path, resp)
                allowed = ("inputs[0].shape", "features per row") if path.endswith("/infer") else ()
                allowed += ("make the model's output overflow",)
                assert any(what in message for what in allowed), refused
            else:
                assert resp.json()["error"]["code"] == "value_out_of_range", refused

    run()
    assert statuses, "schemathesis generated no case"
    healthy(client)


# --- hypothesis: arbitrary bodies ----------------------------------------------------------------

keys = st.one_of(st.sampled_from(["instances", "inputs", "request_id", "label", "labels", "data", "shape",
                                  "datatype", "id", *FEATURES]), st.text(max_size=12))  # fmt: skip
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e308, -1e308, 5e-324, 2**63, -(2**63) - 1, 10**30]),
    st.sampled_from(["NaN", "nan", "Infinity", "-inf", "1e999", "setosa", "", "\x00", "\ud7ff", "🙂" * 50]),
    st.text(max_size=30),
)
json_docs = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(keys, inner, max_size=6),
    max_leaves=40,
)


@st.composite
def near_valid(draw: st.DrawFn, path: str) -> Any:
    """A valid body of ``path`` with one part replaced by something random: gets deeper than noise."""
    rows = draw(
        st.lists(st.lists(scalars | st.floats(-10, 10), min_size=3, max_size=5), min_size=1, max_size=5)
    )
    if path == "/predict":
        body: Any = {"instances": rows}
        if draw(st.booleans()):
            body["instances"] = [
                dict(zip(draw(st.permutations(FEATURES + ["x"])), row, strict=False)) for row in rows
            ]
    elif path.endswith("/infer"):
        body = {"inputs": [{"name": draw(scalars), "shape": draw(st.lists(st.integers(-3, 2**40), max_size=3)),
                            "datatype": draw(st.sampled_from(["FP64", "FP32", "BYTES", "INT8", "fp64"]) | json_docs),
                            "data": draw(st.sampled_from([rows, sum(rows, [])]))}]}  # fmt: skip
        if draw(st.booleans()):
            body["id"] = draw(scalars)
    else:
        body = {"request_id": draw(scalars), "label": draw(scalars)}
        if draw(st.booleans()):
            body["labels"] = draw(json_docs)
    return body


def raw_bodies() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=200),
        st.builds(lambda d: json.dumps(d, ensure_ascii=False).encode("utf-8", "surrogatepass"), json_docs),
        st.integers(1, 20_000).map(lambda n: b"[" * n + b"]" * n),  # deep nesting, up to 20k levels
        st.integers(1, 20_000).map(lambda n: b'{"instances":' + b"[" * n + b"1" + b"]" * n + b"}"),
        st.integers(1, 5_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
        # nesting just under the parser's limit, where a value is shown in an error message
        st.integers(900, 1030).map(lambda n: b'{"instances":[[' + b"[" * n + b"]" * n + b"]]}"),
        st.integers(900, 1030).map(
            lambda n: b'{"inputs":[{"shape":[1,4],"datatype":' + b"[" * n + b"]" * n + b',"data":[1,2,3,4]}]}'
        ),
        st.integers(900, 1030).map(lambda n: b'{"request_id":"r-1","label":' + b"[" * n + b"]" * n + b"}"),
        st.sampled_from(
            [
                b'{"instances": [[NaN, 1, 2, 3]]}',
                b'{"instances": [[1e999, 1, 2, 3]]}',
                b'{"instances": [[' + b"9" * 5000 + b", 1, 2, 3]]}",
                b'{"instances": [[1,2,3,4]]',
                b"\xff\xfe{}",
                b'{"instances": "[[1,2,3,4]]"}',
                b"null",
                b'""',
                b"{}" * 100,
            ]
        ),  # fmt: skip
    )


@pytest.mark.parametrize("path", ENDPOINTS)
def test_arbitrary_json_bodies_never_get_a_5xx(
    server: BentoServer, client: httpx.Client, rss_baseline: float, path: str
) -> None:
    seen: set[int] = set()

    @settings(FUZZ, max_examples=60 if path == "/feedback" else 150)
    @given(body=st.one_of(json_docs, near_valid(path)))
    def run(body: Any) -> None:
        resp = client.post(
            path, content=json.dumps(body).encode(), headers={"content-type": "application/json"}
        )
        assert_answered(path, resp, f"POST {path} {json.dumps(body)[:200]}")
        seen.add(resp.status_code)

    run()
    assert seen & {400, 404, 409, 413, 422}, f"nothing was refused: {seen}"
    healthy(client)


@pytest.mark.parametrize("path", ENDPOINTS)
def test_broken_bytes_and_deep_nesting_are_refused_with_a_4xx(
    server: BentoServer, client: httpx.Client, rss_baseline: float, path: str
) -> None:
    @settings(FUZZ, max_examples=100)
    @given(body=raw_bodies())
    def run(body: bytes) -> None:
        resp = client.post(path, content=body, headers={"content-type": "application/json"})
        assert_answered(path, resp, f"POST {path} {body[:120]!r} ({len(body)} bytes)")
        if len(body) > 2000 and body.startswith((b"[[[", b'{"a":{"a":', b'{"instances":[[[')):
            assert 400 <= resp.status_code < 500

    run()
    healthy(client)


def test_deeply_nested_json_is_refused_quickly(client: httpx.Client) -> None:
    # under the body limit, so it is the nesting that is refused (orjson stops at 1024 levels)
    for body in (b"[" * 30_000 + b"]" * 30_000, b'{"a":' * 10_000 + b"1" + b"}" * 10_000):
        assert len(body) < MAX_BODY
        t0 = time.monotonic()
        resp = client.post("/predict", content=body)
        assert resp.status_code == 400, resp.text[:300]
        assert resp.json()["error"]["code"] == "too_deeply_nested"
        assert time.monotonic() - t0 < 10  # generous: a shared, loaded machine
    healthy(client)


def _first_answer(sock: socket.socket, header: bytes, chunk: bytes, cap: int) -> tuple[str, int]:
    """Send ``header`` then ``chunk`` over and over (up to ``cap`` bytes) until the server answers."""
    sock.sendall(header)
    sent = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        readable, _, _ = select.select([sock], [], [], 0 if sent < cap else 1.0)
        if readable:
            return sock.recv(4096).decode("latin-1"), sent
        if sent < cap:
            try:
                sock.sendall(chunk)
            except OSError:  # the server closed the connection after answering
                continue
            sent += len(chunk)
    raise AssertionError(f"no answer within 60 s after sending {sent} bytes")


def test_oversized_body_is_refused_before_it_is_read(server: BentoServer, client: httpx.Client) -> None:
    row = b"[5.1, 3.5, 1.4, 0.2],"
    # a declared length over the limit: 413 while the client has sent only the headers
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        head = (
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {50 * 1024 * 1024}\r\n\r\n".encode()
        )
        answer, sent = _first_answer(sock, head, row * 500, cap=0)
    assert answer.startswith("HTTP/1.1 413") and sent == 0, answer[:200]
    # chunked, with no length: refused once the limit is passed, long before the body ends
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        piece = row * 500
        chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        answer, sent = _first_answer(sock, head, chunk, cap=200 * 1024 * 1024)
    print(f"chunked body refused after {sent} bytes sent (limit {MAX_BODY}; socket buffers hold a few MB)")
    assert answer.startswith("HTTP/1.1 413"), answer[:200]
    assert sent < 32 * 1024 * 1024, "the server read far past its limit before answering"
    healthy(client)


def test_memory_stays_bounded_after_all_the_fuzzing(
    server: BentoServer, client: httpx.Client, rss_baseline: float
) -> None:
    """Runs last in this module (pytest keeps file order): every fuzz test above has run by now."""
    for _ in range(3):  # a few big-but-valid requests too
        r = client.post("/predict", json={"instances": [[6.0, 2.9, 4.5, 1.5]] * 1000})
        assert r.status_code == 200
    healthy(client)
    grown = rss_mb(server) - rss_baseline
    print(f"server RSS: {rss_baseline:.1f} MB after warm-up, {rss_baseline + grown:.1f} MB after fuzzing")
    assert grown < RSS_BUDGET_MB, f"RSS grew by {grown:.1f} MB"
    assert server.alive()
