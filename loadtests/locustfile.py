"""Prediction traffic for the model service, with user ids and delayed feedback labels.

Each simulated user has an id sent as the ``X-User-ID`` header and the ``uid`` cookie (the keys the
A/B and sticky routes hash). It posts single rows (iris, or LOAD_DATA's) to ``/predict`` and, for a share of answers,
posts the true label to ``/feedback`` after a delay, as a labelling pipeline would; the feedback
carries the ``X-Model-Version`` that answered so the router sends it back to that version.

Run by the demo and the benchmarks as ``locust -f loadtests/locustfile.py --headless ...``.
Settings (environment):
  LOAD_FEEDBACK_SHARE   share of predictions that get a feedback label (default 0.5)
  LOAD_FEEDBACK_DELAY   seconds between the answer and its label (default 1.0)
  LOAD_FEEDBACK_TOKEN   the bearer token the model servers want for labels (BENTO_FEEDBACK_TOKEN;
                        the chart's Secret <release>-feedback, key token); unset: none is sent
  LOAD_DATA             a CSV or Parquet file of your model's features and true labels (the holdout
                        given to `rollout import`): each request posts one of its rows as a record;
                        unset: iris
  LOAD_TARGET           LOAD_DATA's column with the true label (sent as the feedback label)
  LOAD_WAIT             seconds each user waits between requests (default 0.1)
  LOAD_SHAPE            "steady" (default: -u/-r from the command line) or "wave" (ramps up and down)
  LOAD_REQUEST_IDS      "1": every prediction carries an X-Request-ID of its own (a UUID), as a client
                        or an edge proxy that tags requests does: where the router makes none (Traefik),
                        a mirrored copy then reaches the shadow under the id stable answered, and the
                        join store compares the two answers; the summary counts the answers that
                        echoed it (default: none sent; the model server makes one)
  LOAD_SUMMARY          path of a JSON summary written at the end: per-version answers, failures by
                        kind (predictions and feedback labels), retried labels, labels by HTTP
                        status, and a per-second
                        time series (used for the demo report)
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from itertools import count
from typing import Any

import gevent
from locust import HttpUser, LoadTestShape, between, events, task
from sklearn.datasets import load_iris

DATA_PATH = os.environ.get("LOAD_DATA", "")
TARGET = os.environ.get("LOAD_TARGET", "")


def _rows() -> tuple[list[Any], list[Any]]:
    """The rows to post and their true labels: iris, or the user's LOAD_DATA file (each row sent as
    a record keyed by its column names, the target column left out and sent as the label)."""
    if not DATA_PATH:
        iris = load_iris()
        return [[float(v) for v in row] for row in iris.data], [
            str(iris.target_names[t]) for t in iris.target
        ]
    import pandas as pd

    if not TARGET:
        raise SystemExit(f"LOAD_DATA={DATA_PATH} needs LOAD_TARGET: the column with the true label")
    try:
        table = (
            pd.read_parquet(DATA_PATH) if DATA_PATH.endswith((".parquet", ".pq")) else pd.read_csv(DATA_PATH)
        )
    except (OSError, ValueError, ImportError) as exc:
        raise SystemExit(f"LOAD_DATA={DATA_PATH}: cannot read it: {exc}") from None
    if TARGET not in table.columns or len(table) == 0:
        raise SystemExit(f"LOAD_DATA={DATA_PATH} has no column {TARGET!r} (LOAD_TARGET) or no rows")
    records = json.loads(table.drop(columns=[TARGET]).to_json(orient="records"))  # plain JSON values
    # labels as their JSON values: a class name, a class's integer value, or a regressor's number
    return records, json.loads(table[TARGET].to_json(orient="values"))


ROWS, LABELS = _rows()

FEEDBACK_SHARE = float(os.environ.get("LOAD_FEEDBACK_SHARE", "0.5"))
FEEDBACK_DELAY = float(os.environ.get("LOAD_FEEDBACK_DELAY", "1.0"))
WAIT = float(os.environ.get("LOAD_WAIT", "0.1"))
SUMMARY_PATH = os.environ.get("LOAD_SUMMARY")
FEEDBACK_TOKEN = os.environ.get("LOAD_FEEDBACK_TOKEN", "")
REQUEST_IDS = os.environ.get("LOAD_REQUEST_IDS", "") == "1"
FEEDBACK_TRIES = 5  # a retryable 503 on /feedback is sent again this many times at most

_user_ids = count(1)
_lock = threading.Lock()
_by_version: Counter[str] = Counter()
_failures: Counter[str] = Counter()
_retried: Counter[str] = Counter()
_labels: Counter[str] = Counter()  # feedback answers by HTTP status ("200": accepted and counted)
_request_ids: Counter[str] = Counter()  # LOAD_REQUEST_IDS: "sent", "echoed" (the answer carried it)
_series: dict[int, Counter[str]] = defaultdict(Counter)
_versions_per_user: dict[str, set[str]] = defaultdict(set)
_started = time.time()


def _record(version: str | None, failure: str | None, user: str) -> None:
    second = int(time.time() - _started)
    with _lock:
        if failure:
            _failures[failure] += 1
            _series[second]["failed"] += 1
        else:
            v = version or "unknown"
            _by_version[v] += 1
            _series[second][v] += 1
            _versions_per_user[user].add(v)


class ModelUser(HttpUser):
    wait_time = between(WAIT * 0.5, WAIT * 1.5)

    def on_start(self) -> None:
        self.user_id = f"user-{next(_user_ids)}"
        self.client.headers["X-User-ID"] = self.user_id
        self.client.cookies.set("uid", self.user_id)

    @task
    def predict(self) -> None:
        i = random.randrange(len(ROWS))
        sent = {"X-Request-ID": uuid.uuid4().hex} if REQUEST_IDS else {}
        with self.client.post(
            "/predict", json={"instances": [ROWS[i]]}, headers=sent, catch_response=True
        ) as resp:
            if resp.status_code != 200:
                kind = f"http_{resp.status_code}" if resp.status_code else "connection"
                resp.failure(f"{kind}: {resp.text[:200]}")
                _record(None, kind, self.user_id)
                return
            version = resp.headers.get("X-Model-Version")
            request_id = resp.headers.get("X-Request-ID")
            _record(version, None, self.user_id)
            if sent:
                with _lock:
                    _request_ids["sent"] += 1
                    _request_ids["echoed"] += request_id == sent["X-Request-ID"]
        if request_id and random.random() < FEEDBACK_SHARE:
            gevent.spawn_later(FEEDBACK_DELAY, self._feedback, request_id, LABELS[i], version)

    def _feedback(self, request_id: str, label: Any, version: str | None, attempt: int = 1) -> None:
        """Post the label; a 503 (the version that answered is down for a moment: the router keeps
        the label rather than give it to another version; or the join store did not answer in
        time: nothing was recorded) is sent again after its Retry-After (2 s when it has none), up
        to FEEDBACK_TRIES times, as a labelling pipeline does."""
        headers = {"X-Model-Version": version} if version else {}
        if FEEDBACK_TOKEN:
            headers["Authorization"] = f"Bearer {FEEDBACK_TOKEN}"
        with _lock:
            _labels["sent"] += 1  # sent minus answered: labels still on their way when Locust stopped
        with self.client.post(
            "/feedback", json={"request_id": request_id, "label": label}, headers=headers, catch_response=True
        ) as resp:
            retry_after = resp.headers.get("Retry-After")
            with _lock:
                _labels[str(resp.status_code)] += 1
            if resp.status_code == 503 and attempt < FEEDBACK_TRIES:
                resp.success()  # not lost: it is sent again
                with _lock:
                    _retried["feedback"] += 1
                delay = min(float(retry_after), 10.0) if retry_after and retry_after.isdigit() else 2.0
                gevent.spawn_later(delay, self._feedback, request_id, label, version, attempt + 1)
            elif resp.status_code >= 500 or resp.status_code in (0, 401, 403):  # 401: a wrong token
                resp.failure(f"feedback {resp.status_code}: {resp.text[:200]}")
                with _lock:
                    _failures[f"feedback_{resp.status_code or 'connection'}"] += 1


if os.environ.get("LOAD_SHAPE") == "wave":

    class WaveShape(LoadTestShape):
        """Ramp up to the peak, hold, dip, hold: traffic like a day compressed into minutes."""

        stages = [(20, 10, 5), (60, 20, 5), (80, 8, 5), (10_000, 20, 5)]  # (until second, users, rate)

        def tick(self) -> tuple[int, float] | None:
            t = self.get_run_time()
            for until, users, rate in self.stages:
                if t < until:
                    return users, rate
            return None


@events.test_stop.add_listener
def _write_summary(**_: Any) -> None:
    if not SUMMARY_PATH:
        return
    with _lock:
        sticky_users = sum(1 for v in _versions_per_user.values() if len(v) == 1)
        data = {
            "answers_by_version": dict(_by_version),
            "failures": dict(_failures),
            "total_failed": sum(_failures.values()),
            "total_answered": sum(_by_version.values()),
            "retried": dict(_retried),  # retryable answers sent again (not failures)
            # "200": accepted (counted once, whichever pod got it); other codes; "sent": every try
            "labels_by_status": {k: v for k, v in _labels.items() if k != "sent"},
            "labels_sent": _labels["sent"],
            "request_ids": dict(_request_ids),  # LOAD_REQUEST_IDS: sent with an answer, and echoed
            "users": len(_versions_per_user),
            "users_with_one_version": sticky_users,
            "series": {str(k): dict(v) for k, v in sorted(_series.items())},
        }
    with open(SUMMARY_PATH, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)
