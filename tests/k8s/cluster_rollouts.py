"""Rollouts on real pods, through a real data plane: what tests/e2e/test_cluster_gateway.py asserts
and what ``make demo-cluster`` (``python -m tests.k8s.cluster_rollouts``) shows.

``ClusterStack`` brings up, in order: the single-node cluster with the real KServe controller
(tests/k8s/kserve.py), the project's images imported into its containerd, the other pinned CRDs,
Traefik as the Gateway API data plane with a ``Gateway`` named ``inference-gateway``
(tests/k8s/gateway.py), Prometheus scraping the pods from the chart's PodMonitors
(tests/k8s/pod_prometheus.py), then ``helm install`` of helm/bento-rollout in ``gateway-api``
routing mode serving ``iris:v1`` only, with the operator in its pod.

``ship()`` is one release as a user makes it: Locust (loadtests/locustfile.py) sends predictions
to the Gateway's address for the whole time, ``helm upgrade --reuse-values`` sets
``models.candidate`` (and the ModelRollout's strategy and analysis), KServe starts the candidate's
pod, the controller moves the HTTPRoute's weights as its analysis of the pods' Prometheus series
decides, and the rollout ends Promoted (the hand-off to stable done) or RolledBack. ``Shipped`` is
what was measured: what Locust saw (answers per version, failed requests), the rollout's history,
the candidate pod's start to Ready, the seconds from the candidate's first traffic (its weight
written to the HTTPRoute) to the rollback.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tests.e2e import helmkit
from tests.k8s import buildah_images, crds, gateway, pod_prometheus
from tests.k8s.kserve import KServe
from tests.k8s.node import NODE_IP
from tests.kit import until

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "models"
RELEASE = "br"
ROLLOUT = "iris"
GATEWAY = "inference-gateway"
MODELROLLOUT = ("bento-rollout.io", "v1alpha1", "modelrollouts")
HTTPROUTE = ("gateway.networking.k8s.io", "v1", "httproutes")
ROUTE = f"{ROLLOUT}"  # the chart's HTTPRoute is named after the service

# The analysis every release here is gated on: the chart's own templates (error rate, p99 latency
# of the candidate's pods, from model_requests_total / the latency histogram), measured every 10 s.
ANALYSIS = {
    "interval": "10s",
    "metrics": [
        {"name": "error-rate", "template": "error-rate", "threshold": {"max": 0.02}, "failureLimit": 0},
        {"name": "latency-p99", "template": "latency-p99", "threshold": {"max": 0.25}},
    ],
}
CANARY = {"canary": {"steps": [
    {"setWeight": 20}, {"analysis": {"intervals": 2}},
    {"setWeight": 60}, {"analysis": {"intervals": 2}},
    {"setWeight": 100},
]}}  # fmt: skip


def install_values(bento: str, controller: str, prometheus_url: str, redis: str) -> dict[str, Any]:
    repository, tag = bento.rsplit(":", 1)
    c_repository, c_tag = controller.rsplit(":", 1)
    r_repository, r_tag = redis.rsplit(":", 1)
    return {
        # the chart's default join store (feedback.join redis): its Redis, from the image built here
        "feedback.redis.image.repository": r_repository,
        "feedback.redis.image.tag": r_tag,
        "feedback.redis.image.pullPolicy": "Never",
        "routing.mode": "gateway-api",
        "routing.gatewayApi.parentRefs": [{"name": GATEWAY}],
        "image.repository": repository,
        "image.tag": tag,
        "image.pullPolicy": "Never",
        "controller.image.repository": c_repository,
        "controller.image.tag": c_tag,
        "controller.image.pullPolicy": "Never",
        "controller.replicas": 1,
        "controller.prometheusUrl": prometheus_url,
        "monitoring.enabled": True,
        "monitoring.kind": "PodMonitor",
        "monitoring.interval": "2s",
        "models.stable": "iris:v1",
        "models.candidate": "",
        "rollout.enabled": False,
    }


def _iso(stamp: str) -> float:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


@dataclass
class Shipped:
    """One release, as measured."""

    name: str
    candidate: str
    phase: str
    locust: dict[str, Any]
    history: list[dict[str, Any]]
    seconds: float  # helm upgrade -> the rollout's end (Promoted + hand-off Complete, or RolledBack)
    candidate_pod_ready: float | None = None  # candidate container start -> Ready
    first_traffic_to_rollback: float | None = None
    traefik_codes: dict[str, float] = field(default_factory=dict)  # HTTP code -> requests (Traefik)
    preview: dict[str, int] = field(default_factory=dict)  # blue/green: the testers' answers by version
    timeline: list[dict[str, Any]] = field(default_factory=list)  # rollout.local.telemetry rows

    @property
    def requests(self) -> int:
        return int(self.locust.get("total_answered", 0)) + int(self.locust.get("total_failed", 0))

    @property
    def failed(self) -> int:
        return int(self.locust.get("total_failed", 0))

    def row(self) -> dict[str, Any]:
        return {
            "release": self.name, "candidate": self.candidate, "phase": self.phase,
            "requests": self.requests, "failed": self.failed,
            "failed_share": round(self.failed / self.requests, 4) if self.requests else None,
            "answers_by_version": self.locust.get("answers_by_version", {}),
            "seconds": round(self.seconds, 1),
            "candidate_pod_start_to_ready_s": self.candidate_pod_ready,
            "first_traffic_to_rollback_s": self.first_traffic_to_rollback,
            "traefik_requests_by_code": self.traefik_codes,
            "preview_answers": self.preview,
            "events": [f"{e['reason']}: {e['message']}" for e in self.history],
        }  # fmt: skip

    def why(self) -> str:
        """The whole row as text, for an assertion's message (pytest cuts a dict's repr short)."""
        return json.dumps(self.row(), indent=1)


@dataclass
class ClusterStack:
    kserve: KServe
    workdir: Path
    traefik: gateway.Traefik
    prom: pod_prometheus.PodPrometheus
    api: Any
    times: dict[str, float] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    service: str = ROLLOUT  # the chart's service.name: names the ModelRollout and the HTTPRoute
    sample: dict[str, Any] = field(default_factory=lambda: {"instances": [[5.1, 3.5, 1.4, 0.2]]})
    load_env: dict[str, str] = field(default_factory=dict)  # Locust's (LOAD_DATA, LOAD_TARGET: a user's rows)

    @property
    def node(self) -> Any:
        return self.kserve.node

    def custom(self) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(self.api)

    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.api)

    def helm(self, *args: str, values: dict[str, Any] | None = None) -> None:
        result = helmkit.run_helm(
            [*args, RELEASE, str(helmkit.CHART), "--namespace", NAMESPACE, *helmkit.set_args(values or {})],
            self.workdir / "helm", kubeconfig=self.node.control_plane.kubeconfig,
        )  # fmt: skip
        if result.returncode != 0:
            raise AssertionError(f"helm {args[0]} failed:\n{result.stderr}")

    def upgrade(self, values: dict[str, Any]) -> None:
        """``helm upgrade`` with every value this stack set so far plus ``values`` (a None value:
        the key out, the chart's default gone too). Not ``--reuse-values``: with it, Helm coalesces
        the previous release's values back over a null (a strategy switched from canary to abTest
        kept its canary, and the ModelRollout was refused: two strategies)."""
        base = {
            k: v
            for k, v in self.values.items()
            if k not in values and not any(k.startswith(f"{n}.") for n in values)
        }
        merged = {**base, **values}  # a key set again replaces its old sub-keys; order kept for --set-json
        self.helm("upgrade", values=merged)
        self.values = merged

    def until(
        self, what: str, probe: Callable[[], T | None], timeout: float, why: Callable[[], str] = lambda: ""
    ) -> T:
        return until(what, probe, timeout, self.node.check_alive, why)

    def feedback_token(self) -> str:
        """The labelling pipeline's bearer token: the chart's Secret ``<release>-bento-rollout-feedback``."""
        import base64

        secret = self.core().read_namespaced_secret(f"{RELEASE}-bento-rollout-feedback", NAMESPACE)
        return base64.b64decode(secret.data["token"]).decode()

    def labels_counted(self) -> dict[str, float]:
        """``model_feedback_total`` per version as Prometheus has it from the join store's exporter."""
        return {
            labels.get("version", ""): value
            for labels, value in self.prom.vector("sum by (version) (model_feedback_total)")
        }

    def rollout_status(self) -> dict[str, Any]:
        from kubernetes import client

        try:
            obj = self.custom().get_namespaced_custom_object(
                *MODELROLLOUT[:2], NAMESPACE, MODELROLLOUT[2], self.service
            )
        except client.ApiException as exc:
            if exc.status == 404:
                return {}  # not created yet
            raise
        return dict(obj.get("status") or {})

    def route_weights(self) -> dict[str, int]:
        route = self.custom().get_namespaced_custom_object(
            *HTTPROUTE[:2], NAMESPACE, HTTPROUTE[2], self.service
        )
        out: dict[str, int] = {}
        for rule in route["spec"]["rules"]:
            if any(m.get("headers") for m in rule.get("matches") or []):
                continue
            for ref in rule.get("backendRefs") or []:
                out[ref["name"].removesuffix("-predictor")] = int(ref.get("weight", 1))
        return out

    def answer(self) -> dict[str, str] | None:
        """One prediction through the Gateway (from the host, Traefik's forwarded port): its
        X-Model-Version, or None while the route does not answer 200."""
        import httpx

        try:
            resp = httpx.post(f"{self.traefik.url}/predict", json=self.sample, timeout=5)
        except httpx.HTTPError:
            return None
        return {"version": resp.headers.get("x-model-version", "")} if resp.status_code == 200 else None

    def pod_state(self, selector: str = "") -> str:
        out = []
        for pod in self.core().list_namespaced_pod(NAMESPACE, label_selector=selector).items:
            statuses = [(c.name, c.ready, c.restart_count) for c in pod.status.container_statuses or []]
            out.append(f"{pod.metadata.name} {pod.status.phase} {statuses}")
        events = self.core().list_namespaced_event(NAMESPACE).items
        out += [
            f"event {e.involved_object.kind}/{e.involved_object.name}: {e.reason} {e.message}"
            for e in events[-20:]
        ]
        return "\n".join(out) + f"\n--- traefik ---\n{self.traefik.log_tail(2000)}"

    def candidate_pod_ready(self, since: float) -> float | None:
        """Container start -> Ready of the newest candidate pod started after ``since`` (wall)."""
        best = None
        pods = (
            self.core()
            .list_namespaced_pod(
                NAMESPACE, label_selector=f"serving.kserve.io/inferenceservice={ROLLOUT}-candidate"
            )
            .items
        )
        for pod in pods:
            (cs,) = pod.status.container_statuses or [None]
            ready = [c for c in pod.status.conditions or [] if c.type == "Ready" and c.status == "True"]
            if cs is None or cs.state.running is None or not ready:
                continue
            started = cs.state.running.started_at.timestamp()
            if started >= since - 1 and (best is None or started > best[0]):
                best = (started, ready[0].last_transition_time.timestamp() - started)
        return None if best is None else round(best[1], 1)


@contextlib.contextmanager
def locust(
    stack: ClusterStack, name: str, users: int = 8, seconds: int = 600, feedback_share: float = 0.0
) -> Iterator[Path]:
    """Locust against the Gateway for at most ``seconds`` (``rollout demo``'s runner), with labels
    for ``feedback_share`` of its answers (sent through the Gateway with the chart's token, as a
    labelling pipeline would); its summary JSON path once it stopped."""
    from rollout.demo.scenarios import locust as run_locust

    summary = stack.workdir / f"{name}.locust.json"
    log = stack.workdir / f"{name}.locust.log"
    env = {"LOAD_FEEDBACK_TOKEN": stack.feedback_token()} if feedback_share else {}
    env.update(stack.load_env)
    with run_locust(stack.traefik.url, summary, users, seconds, log, feedback_share, env):
        yield summary


@contextlib.contextmanager
def preview_traffic(stack: ClusterStack, every: float = 0.05) -> Iterator[Counter[str]]:
    """A tester's smoke traffic for a blue/green preview: requests with ``X-Rollout-Preview: 1``
    through the Gateway (the HTTPRoute's header match sends them to the candidate) every ``every``
    seconds; the answers' versions (or HTTP codes) are counted."""
    import httpx

    seen: Counter[str] = Counter()
    stop = threading.Event()

    def loop() -> None:
        with httpx.Client(timeout=5, headers={"X-Rollout-Preview": "1"}) as http:
            while not stop.wait(every):
                try:
                    resp = http.post(
                        f"{stack.traefik.url}/predict", json={"instances": [[6.3, 3.3, 6.0, 2.5]]}
                    )
                    seen[
                        resp.headers.get("x-model-version", "")
                        if resp.status_code == 200
                        else str(resp.status_code)
                    ] += 1
                except httpx.HTTPError:
                    seen["connection"] += 1

    thread = threading.Thread(target=loop, name="preview", daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(10)


@contextlib.contextmanager
def sampled(
    stack: ClusterStack, candidate: str, since: float, every: float = 1.0
) -> Iterator[list[dict[str, Any]]]:
    """The rollout's state as the controller writes it (``.status.state``), sampled every
    ``every`` seconds as telemetry timeline rows (the rows ``rollout demo`` plots)."""
    from rollout.local.telemetry import timeline_row
    from rollout.model import RolloutState

    rows: list[dict[str, Any]] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every):
            try:
                status = stack.rollout_status()
            except Exception:  # a sample missed is a gap in a plot, nothing more
                continue
            if _this_release(status, candidate, since) and status.get("state"):
                row = timeline_row(RolloutState.model_validate(status["state"]), time.time())
                if not rows or {k: v for k, v in row.items() if k != "t"} != {
                    k: v for k, v in rows[-1].items() if k != "t"
                }:
                    rows.append(row)

    thread = threading.Thread(target=loop, name=f"sample-{candidate}", daemon=True)
    thread.start()
    try:
        yield rows
    finally:
        stop.set()
        thread.join(5)


def _this_release(status: dict[str, Any], candidate: str, since: float) -> bool:
    """``status`` is of the rollout started after ``since`` (wall clock) for ``candidate`` - not the
    previous one, which may have had the same candidate (a rolled-back model shipped again)."""
    started = status.get("startedAt")
    return status.get("candidate") == candidate and bool(started) and _iso(str(started)) >= since - 2


def _codes(before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for (service, code), n in after.items():
        if service.endswith("-wrr") or "predictor" not in service:
            continue  # per backend service only (the weighted service counts each request again)
        out[code] = out.get(code, 0.0) + n - before.get((service, code), 0.0)
    return {k: v for k, v in sorted(out.items()) if v}


def ship(
    stack: ClusterStack,
    name: str,
    candidate: str,
    strategy: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    timeout: float = 420.0,
    during: Callable[[ClusterStack, dict[str, Any]], None] | None = None,
    preview: bool = False,
    feedback_share: float = 0.0,
) -> Shipped:
    """One release of ``candidate`` under Locust through the Gateway, to its end (see module doc).
    ``during(stack, status)``: called once, as soon as the candidate has user traffic or mirrored
    copies of it (a drill)."""
    before = stack.traefik.requests()
    began, wall = time.monotonic(), time.time()
    tester = preview_traffic(stack) if preview else contextlib.nullcontext(Counter[str]())
    with (
        locust(stack, name, feedback_share=feedback_share) as summary,
        sampled(stack, candidate, wall) as timeline,
        tester as previewed,
    ):
        time.sleep(3)  # Locust's users under way on stable before the release
        values = {"models.candidate": candidate, "rollout.enabled": True,
                  "rollout.strategy": strategy or CANARY, "rollout.analysis": ANALYSIS, **(extra or {})}  # fmt: skip
        for kind in (
            "canary",
            "blueGreen",
            "shadow",
            "abTest",
        ):  # one strategy: the others out of the reused values
            if kind not in (strategy or CANARY):
                values[f"rollout.strategy.{kind}"] = None
        stack.upgrade(values)

        fired: list[float] = []

        def ended() -> dict[str, Any] | None:
            status = stack.rollout_status()
            if not _this_release(status, candidate, wall):
                return None  # the previous release's status, until the controller starts this one
            phase = status.get("phase")
            mirrored = (status.get("weights") or {}).get("mirror", 0) > 0
            if (
                during
                and not fired
                and phase == "Progressing"
                and (status.get("candidateWeight", 0) > 0 or mirrored)
            ):
                fired.append(time.monotonic())
                during(stack, status)
            if phase == "RolledBack":
                return status
            if phase == "Promoted" and (status.get("handoff") or {}).get("phase") == "Complete":
                return status
            return None

        status = stack.until(f"{name}: the rollout of {candidate} ended", ended, timeout,
                             lambda: json.dumps(stack.rollout_status(), indent=1)[-3000:] + stack.pod_state())  # fmt: skip
        seconds = time.monotonic() - began
        if status["phase"] == "Promoted":
            # until the stable Service's pods all serve the promoted model (KServe's rolling update)
            version = candidate.split(":", 1)[1]
            stack.until(
                f"{name}: answers of {version} only", lambda: _only(stack, version), 180, stack.pod_state
            )
        time.sleep(3)
    locust_summary = json.loads(summary.read_text()) if summary.exists() else {}
    history = list(status.get("history") or [])
    shipped = Shipped(name, candidate, status["phase"], locust_summary, history, seconds,
                      stack.candidate_pod_ready(wall), traefik_codes=_codes(before, stack.traefik.requests()),
                      timeline=list(timeline), preview=dict(previewed))  # fmt: skip
    if status["phase"] == "RolledBack":
        first = [e for e in history if e["reason"] == "StepStarted" and _iso(e["time"]) >= wall - 1]
        back = [e for e in history if e["reason"] == "RolledBack"]
        if first and back:
            shipped.first_traffic_to_rollback = round(_iso(back[-1]["time"]) - _iso(first[0]["time"]), 1)
    return shipped


def _only(stack: ClusterStack, version: str, n: int = 10) -> bool:
    seen = [stack.answer() for _ in range(n)]
    return all(a is not None and a["version"] == version for a in seen)


@contextlib.contextmanager
def cluster_stack(
    kserve: KServe,
    workdir: Path,
    extra: dict[str, Any] | None = None,
    bento: buildah_images.BuiltImage | None = None,
    sample: dict[str, Any] | None = None,
    load_env: dict[str, str] | None = None,
) -> Iterator[ClusterStack]:
    """Everything of the module doc up to ``helm install`` (stable iris:v1 answering through the
    Gateway; ``extra`` values over install_values'); torn down (Traefik, Prometheus by pid) on
    exit. The node is the caller's. A user's models: ``bento`` (an image that packs them),
    ``extra`` naming them (service.name, models.stable), ``sample`` (a request the stable answers)
    and ``load_env`` (Locust's LOAD_DATA/LOAD_TARGET)."""
    node = kserve.node
    times: dict[str, float] = {}
    mark = time.monotonic()
    bento = bento or buildah_images.bento_image()
    controller = buildah_images.controller_image()
    redis = buildah_images.redis_image()
    for built in (bento, controller, redis):
        node.import_image(built.image)
    times["images built or cached, imported"] = time.monotonic() - mark
    mark = time.monotonic()
    others = [s for s in crds.load_sources() if s.module != crds.KSERVE_MODULE]
    with node.control_plane.http(timeout=60) as http:
        crds.install_pinned(http, others)
    traefik = gateway.start(node, workdir / "traefik")
    times["CRDs + Traefik ready"] = time.monotonic() - mark
    prom = pod_prometheus.start(node, workdir / "prometheus", listen=NODE_IP)
    api = node.control_plane.api_client()
    stack = ClusterStack(kserve, workdir, traefik, prom, api, times, load_env=dict(load_env or {}))
    if sample is not None:
        stack.sample = sample
    stack.service = str((extra or {}).get("service.name", ROLLOUT))
    try:
        from kubernetes import client

        client.CoreV1Api(api).create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE))
        )
        with node.control_plane.http(timeout=30) as http:
            gateway.apply(http, [gateway.gateway(NAMESPACE, GATEWAY)])
        times["Gateway Programmed"] = gateway.wait_programmed(node, traefik, NAMESPACE, GATEWAY)
        mark = time.monotonic()
        stack.values = {
            **install_values(
                bento.image.ref, controller.image.ref, f"http://{NODE_IP}:{prom.port}", redis.image.ref
            ),
            **(extra or {}),
        }
        stack.helm("install", values=stack.values)
        first = str(stack.values["models.stable"])
        stack.until(
            f"{first} answering through the Gateway",
            lambda: _only(stack, first.split(":", 1)[1], 3),
            300,
            stack.pod_state,
        )
        times["helm install -> stable answers through the Gateway"] = time.monotonic() - mark
        prom.sync()
        yield stack
    finally:
        prom.stop()
        traefik.stop()
        api.close()


# --- make demo-cluster, make bench ------------------------------------------------------------

FAULTY_ENV = [{"name": "BENTO_FAULT_ERROR_RATE", "value": "0.3"}]


def kill_pods(isvc: str, killed: list[str]) -> Callable[[ClusterStack, dict[str, Any]], None]:
    """A ``during`` drill: delete every pod of InferenceService ``isvc`` at once (no grace period,
    as a node failure would), their names appended to ``killed``."""

    def drill(stack: ClusterStack, _status: dict[str, Any]) -> None:
        core = stack.core()
        pods = core.list_namespaced_pod(
            NAMESPACE, label_selector=f"serving.kserve.io/inferenceservice={isvc}"
        )
        for pod in pods.items:
            if pod.metadata.deletion_timestamp is None:
                core.delete_namespaced_pod(pod.metadata.name, NAMESPACE, grace_period_seconds=0)
                killed.append(pod.metadata.name)

    return drill


@dataclass(frozen=True)
class Release:
    name: str
    candidate: str
    extra: dict[str, Any]
    expected: str  # the outcome it shows
    drill: str = ""  # "candidate" / "stable": that pod is deleted once the candidate has traffic
    strategy: dict[str, Any] | None = None  # None: CANARY


RELEASES = (
    Release("canary-good", "iris:v2", {}, "Promoted"),
    Release(
        "canary-faulty",
        "iris:v1",
        {"models.stable": "iris:v2", "models.candidateEnv": FAULTY_ENV},
        "RolledBack",
    ),
)
# a preview with no mirror (Traefik cannot mirror): testers' requests with X-Rollout-Preview: 1 only
BLUE_GREEN = {
    "blueGreen": {"previewDuration": "20s", "previewMirrorPercent": 0, "postPromotionDuration": "20s"}
}
BLUEGREEN = Release(
    "bluegreen",
    "iris:slow",
    {"models.stable": "iris:v2", "models.candidateEnv": []},
    "Promoted",
    strategy=BLUE_GREEN,
)
# A/B with sticky users (header buckets: routers/buckets.py) between stable iris:v2 and iris:v1,
# decided on each version's error rate: both serve without errors, so no winner is proven and at
# maxDuration the experiment keeps stable (RolledBack, ExperimentInconclusive)
AB_TEST = {"abTest": {"weight": 50, "sticky": {"header": "X-User-ID"}, "metric": "error-rate", "minSamples": 100,
                      "maxDuration": "40s"}}  # fmt: skip
AB_ANALYSIS = {"interval": "10s", "metrics": [
    {"name": "error-rate", "template": "error-rate", "direction": "lower",
     "judge": {"kind": "comparative", "minEffect": 0.02, "alpha": 0.05, "minSamples": 50}},
]}  # fmt: skip
ABTEST = Release("abtest", "iris:v1", {"models.stable": "iris:v2", "models.candidateEnv": [],
                                       "rollout.analysis": AB_ANALYSIS}, "RolledBack", strategy=AB_TEST)  # fmt: skip
DRILLS = (
    Release("candidate-pod-killed", "iris:v1", {"models.stable": "iris:slow"}, "Promoted", drill="candidate"),
    Release("stable-pod-killed", "iris:v2", {"models.stable": "iris:v1"}, "Promoted", drill="stable"),
)
ALL = (*RELEASES, ABTEST, BLUEGREEN, *DRILLS)  # each starts from the stable the one before left


def result(shipped: Shipped, expected: str, stable: str, plot: Path | None = None) -> Any:
    """``shipped`` as a row of ``rollout demo``'s table (rollout.demo.report.ScenarioResult)."""
    from rollout.demo.report import ScenarioResult

    by_version = shipped.locust.get("answers_by_version", {})
    # answers of the candidate's model (after a promotion, stable's pods serve it too)
    by_candidate = int(by_version.get(shipped.candidate.split(":", 1)[1], 0))
    return ScenarioResult(
        name=shipped.name, strategy="canary", stable=stable, candidate=shipped.candidate, expected=expected,
        outcome=shipped.phase, reason=next((e["reason"] for e in reversed(shipped.history)), ""),
        seconds_total=round(shipped.seconds, 1), seconds_to_decision=shipped.first_traffic_to_rollback,
        requests_total=shipped.requests, requests_by_candidate=by_candidate,
        candidate_share=round(by_candidate / shipped.requests, 3) if shipped.requests else 0.0,
        failed_requests=shipped.failed, failures=dict(shipped.locust.get("failures", {})),
        plot=str(plot) if plot else "",
    )  # fmt: skip


def run(report: Path, releases: tuple[Release, ...], echo: Callable[[str], None] = print) -> dict[str, Any]:
    """The cluster up, the chart installed, ``releases`` shipped one after the other, everything torn
    down (the node's processes by pid, its netns): per release a PNG and a JSON in ``report``;
    returns {"setup_seconds", "releases": [Shipped.row()...], "results": [ScenarioResult...]}."""
    from rollout.demo.report import plot_rollout
    from tests.k8s import kserve, node

    report.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    echo("cluster: starting the single-node cluster and the KServe controller")
    n = node.start(logdir=report / "node")
    rows, results = [], []
    try:
        ks = kserve.install(n, since=began)
        echo(f"cluster: node + KServe ready in {ks.seconds:.0f} s; Traefik, Prometheus, helm install")
        with cluster_stack(ks, report / "work") as stack:
            stack.times["node + KServe"] = ks.seconds
            stable = "iris:v1"
            for i, rel in enumerate(releases, start=1):
                echo(f"cluster: [{i}/{len(releases)}] {rel.name}: helm upgrade, models.candidate={rel.candidate}, "
                     "Locust through the Gateway")  # fmt: skip
                killed: list[str] = []
                during = kill_pods(f"{ROLLOUT}-{rel.drill}", killed) if rel.drill else None
                shipped = ship(stack, rel.name, rel.candidate, strategy=rel.strategy, extra=rel.extra, during=during,
                               preview=rel.strategy is not None and "blueGreen" in rel.strategy)  # fmt: skip
                for e in shipped.history:
                    echo(f"  {e['time']} {e['reason']:<22} {e['message']}")
                plot = plot_rollout(f"{rel.name}: {stable} -> {rel.candidate} ({shipped.phase})",
                                    shipped.timeline, report / f"{rel.name}.png")  # fmt: skip
                row = shipped.row() | {"expected": rel.expected, "pods_killed": killed}
                (report / f"{rel.name}.json").write_text(json.dumps(row, indent=1))
                rows.append(row)
                results.append(result(shipped, rel.expected, stable, plot))
                if shipped.phase == "Promoted":
                    stable = rel.candidate
            setup = dict(stack.times)
    finally:
        n.stop()
    return {"setup_seconds": setup, "releases": rows, "results": results, "seconds": time.monotonic() - began}


def main(argv: list[str] | None = None) -> int:
    """``make demo-cluster``: a good and a faulty release under Locust through the Gateway on the
    single-node cluster; a table, and a PNG per release in reports/cluster-<time>/."""
    import argparse

    from rollout.demo.report import table, write_summary
    from tests.k8s import harness, kserve, node

    parser = argparse.ArgumentParser(prog="python -m tests.k8s.cluster_rollouts", description=main.__doc__)
    parser.add_argument("--report-dir", type=Path, default=None, help="default: reports/cluster-<time>")
    parser.add_argument(
        "--all", action="store_true", help="also a blue/green, then a candidate pod and a stable pod killed"
    )
    args = parser.parse_args(argv)
    report = args.report_dir or ROOT / "reports" / time.strftime("cluster-%Y%m%d-%H%M%S")
    missing = [*gateway.missing(), *kserve.missing(), *node.missing_tools(), *harness.missing_binaries()]
    if not os.access(pod_prometheus.PROMETHEUS, os.X_OK):
        missing.append(str(pod_prometheus.PROMETHEUS))
    if missing:
        print(f"demo-cluster: {', '.join(missing)} missing: run `make setup`", file=sys.stderr)
        return 2
    out = run(report, ALL if args.all else RELEASES, lambda m: print(m, flush=True))
    results = out["results"]
    write_summary(report, results, {"where": "single-node cluster", "seconds": round(out["seconds"])})
    print(table(results))
    print(f"demo-cluster: report in {report} ({out['seconds']:.0f} s)")
    return 0 if results and all(r.as_expected for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
