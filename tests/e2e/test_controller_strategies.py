"""All four strategies through the controller, gated on a real Prometheus, on the real kube-apiserver.

Five ModelRollouts run at once under one ``rollout controller`` (Istio router): a good canary
(promoted), a bad canary (rolled back on its error-rate gate), a blue/green (switched, promoted),
a shadow (mirrored, succeeded without promotion) and an A/B test (the better candidate wins).
Every change to the VirtualServices is recorded from a watch on the API server and checked.

Metrics: a real Prometheus serves series written into its TSDB with ``promtool tsdb
create-blocks-from openmetrics`` (request counters per service and version, with 5xx shares
chosen per case), spanning from before the test to well after it. What cannot run here: no model
pods and no Istio, so nothing serves or shifts real traffic; InferenceService readiness is
written by the test through the status subresource.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from kubernetes import watch

from rollout.k8s.client import MODEL_ROLLOUT, VIRTUAL_SERVICE, KubeClient
from tests.e2e import test_controller as base
from tests.e2e.test_controller import _closed_port, isvc, status, wait_for

# the controller tests' fixtures, shared
kube, controllers, rollout_crd = base.kube, base.controllers, base.rollout_crd

pytestmark = [pytest.mark.k8s, pytest.mark.slow]

# service -> (stable 5xx share, candidate 5xx share)
ERRORS = {"cgood": (0.0, 0.0), "cbad": (0.0, 0.3), "bg": (0.0, 0.0), "shadow": (0.0, 0.0), "ab": (0.08, 0.0)}
RATE = 20  # requests per second per version
STEP = 5  # seconds between samples


def openmetrics(now: float, before: float = 600, after: float = 1800) -> str:
    lines = ["# TYPE model_requests counter"]
    t0 = int(now - before)
    series: dict[tuple[str, str, str], float] = defaultdict(float)
    rows = []
    for t in range(t0, int(now + after), STEP):
        for svc, shares in ERRORS.items():
            for version, share in zip(("v1", "v2"), shares, strict=True):
                bad = RATE * STEP * share
                series[(svc, version, "500")] += bad
                series[(svc, version, "200")] += RATE * STEP - bad
                for code in ("200", "500"):
                    value = series[(svc, version, code)]
                    rows.append(
                        f'model_requests_total{{model="{svc}",version="{version}",endpoint="predict",code="{code}"}} {value} {t}'
                    )
    return "\n".join([*lines, *rows, "# EOF"]) + "\n"


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("prom")
    (home / "series.om").write_text(openmetrics(time.time()))
    data = home / "data"
    subprocess.run(
        [
            shutil.which("promtool") or "promtool",
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            str(home / "series.om"),
            str(data),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (home / "prometheus.yml").write_text("global: {scrape_interval: 15s}\nscrape_configs: []\n")
    port = _closed_port()
    log = (home / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            shutil.which("prometheus") or "prometheus",
            f"--config.file={home / 'prometheus.yml'}",
            f"--storage.tsdb.path={data}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=30d",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for("Prometheus ready", lambda: _ok(url + "/-/ready"), timeout=120)
        q = 'sum(increase(model_requests_total{model="cbad",version="v2",code="500"}[30s]))'
        wait_for("backfilled series", lambda: _query(url, q) > 0, timeout=120)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _query(url: str, q: str) -> float:
    try:
        res = httpx.get(url + "/api/v1/query", params={"query": q}, timeout=5).json()["data"]["result"]
    except (httpx.HTTPError, KeyError, ValueError):
        return 0.0
    return float(res[0]["value"][1]) if res else 0.0


class RouteRecorder:
    """Every version of every VirtualService in a namespace, from a watch on the API server."""

    def __init__(self, client: KubeClient, ns: str) -> None:
        self.seen: dict[str, list[tuple[int, int, int, bool]]] = defaultdict(list)
        self._watch = watch.Watch()
        self._thread = threading.Thread(target=self._run, args=(client, ns), daemon=True)
        self._thread.start()

    def _run(self, client: KubeClient, ns: str) -> None:
        try:
            self._record(client, ns)
        except Exception:  # the watch ends with a protocol error when stopped
            pass

    def _record(self, client: KubeClient, ns: str) -> None:
        k = VIRTUAL_SERVICE
        for ev in self._watch.stream(
            client.custom.list_namespaced_custom_object, k.group, k.version, ns, k.plural, timeout_seconds=900
        ):
            obj = ev["object"]
            http = {r.get("name"): r for r in obj["spec"].get("http", [])}
            primary = http.get("primary", {})
            weights = [d.get("weight", 100) for d in primary.get("route", [])] + [0, 0]
            mirror = round(primary.get("mirrorPercentage", {}).get("value", 0)) if "mirror" in primary else 0
            snap = (weights[0], weights[1], mirror, "candidate-match" in http)
            hist = self.seen[obj["metadata"]["name"]]
            if not hist or hist[-1] != snap:
                hist.append(snap)

    def stop(self) -> None:
        self._watch.stop()


def test_four_strategies_gated_on_prometheus(kube, k8s_namespace, controllers, prometheus) -> None:
    ns = k8s_namespace
    for svc in ERRORS:
        isvc(kube, ns, f"{svc}-stable")
        isvc(kube, ns, f"{svc}-candidate")
    recorder = RouteRecorder(kube, ns)
    gate = {"name": "error-rate", "template": "error-rate", "threshold": {"max": 0.05}, "failureLimit": 1}
    analysis = {"interval": "1s", "window": "30s", "metrics": [gate]}
    canary = {"canary": {"steps": [{"setWeight": 25}, {"analysis": {"intervals": 3}}, {"setWeight": 100}]}}
    specs = {
        "cgood": canary,
        "cbad": canary,
        "bg": {
            "blueGreen": {
                "previewDuration": "3s",
                "autoPromote": True,
                "postPromotionDuration": "3s",
                "scaleDownDelay": "1s",
            }
        },
        "shadow": {"shadow": {"mirrorPercent": 100, "duration": "4s"}},
        "ab": {"abTest": {"weight": 50, "metric": "error-rate", "minSamples": 50, "maxDuration": "60s"}},
    }
    for svc, strategy in specs.items():
        body: dict[str, Any] = {
            "metadata": {"name": svc},
            "spec": {
                "service": svc,
                "stable": {"model": f"{svc}:v1"},
                "candidate": {"model": f"{svc}:v2"},
                "router": {"provider": "istio"},
                "strategy": strategy,
                "analysis": analysis,
                "metricsAddress": prometheus,
            },
        }
        if svc == "ab":
            body["spec"]["analysis"] = {
                "interval": "1s",
                "window": "30s",
                "metrics": [
                    {
                        "name": "error-rate",
                        "template": "error-rate",
                        "judge": {"kind": "comparative", "minSamples": 50, "minEffect": 0.01, "alpha": 0.05},
                    }
                ],
            }
        kube.create(MODEL_ROLLOUT, ns, body)
    controllers("a")
    done = ("Promoted", "RolledBack", "Aborted", "Succeeded")
    for svc in specs:
        wait_for(f"{svc} to finish", lambda svc=svc: status(kube, ns, svc).get("phase") in done, timeout=300)
    time.sleep(2)
    recorder.stop()
    phases = {svc: (status(kube, ns, svc)["phase"], status(kube, ns, svc)["reason"]) for svc in specs}
    seen = dict(recorder.seen)
    print(phases, seen)
    assert phases["cgood"][0] == "Promoted"
    assert phases["cbad"] == ("RolledBack", "AnalysisFailed")
    assert phases["bg"][0] == "Promoted"
    assert phases["shadow"][0] == "Succeeded"
    assert phases["ab"][0] == "Promoted"

    # the routing objects went through exactly the expected states (stable%, candidate%, mirror%, match)
    # ... (100, 0, 0, False) at the end of a promotion: the hand-off to stable (controller/handoff.py)
    assert seen["cgood"] == [(100, 0, 0, False), (75, 25, 0, False), (0, 100, 0, False), (100, 0, 0, False)]
    assert seen["cbad"] == [(100, 0, 0, False), (75, 25, 0, False), (100, 0, 0, False)]
    assert seen["bg"][0] == (100, 0, 0, False) and seen["bg"][-2:] == [(0, 100, 0, False), (100, 0, 0, False)]
    # blue/green never splits user traffic: preview is a header match + mirror, then one switch
    assert all((s[0], s[1]) in ((100, 0), (0, 100)) for s in seen["bg"])
    assert (100, 0, 100, True) in seen["bg"]
    assert (100, 0, 100, False) in seen["shadow"] and seen["shadow"][-1] == (100, 0, 0, False)
    assert (50, 50, 0, False) in seen["ab"] and seen["ab"][-2:] == [(0, 100, 0, False), (100, 0, 0, False)]
    cbad = status(kube, ns, "cbad")["analysis"][0]
    assert cbad["latest"] == "Failed" and cbad["value"] > 0.05
