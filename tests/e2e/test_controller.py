"""The ModelRollout controller (``rollout controller``, a real process running kopf) against the real
kube-apiserver: it steps rollouts with the engine, writes status and Events, applies user commands
once, resumes after being killed, restores stable when a rollout is deleted mid-flight, rolls back
when Prometheus is unreachable past the error limit, and only the Lease holder acts.

What cannot run here: no KServe controller, Knative or Istio runs (no pods), so the candidate
InferenceService's readiness is written by the test through the status subresource, "traffic"
is the routing object as the API server stores it, checked through the API, and what the pods
serve comes from a fake that answers as asked (tests/e2e/nopods.py).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from rollout.cli.main import cli
from rollout.errors import NotFoundError
from rollout.k8s.client import INFERENCE_SERVICE, MODEL_ROLLOUT, VIRTUAL_SERVICE, KubeClient
from tests.k8s import crds

pytestmark = pytest.mark.k8s
ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "k8s" / "crd" / "modelrollouts.bento-rollout.io.yaml"


@pytest.fixture(scope="session")
def rollout_crd(k8s_cluster: Any) -> None:
    with k8s_cluster.http(timeout=60) as http:
        crds.apply_crd_documents(http, [yaml.safe_load(CRD_FILE.read_text())])


@pytest.fixture
def kube(k8s_cluster: Any, rollout_crd: None) -> Iterator[KubeClient]:
    client = KubeClient.from_kubeconfig(str(k8s_cluster.kubeconfig))
    yield client
    client.close()


class Controller:
    """``rollout controller`` as a child process in its own process group; no pod runs here, so
    its probe of what the pods serve is the FAKE ``tests.e2e.nopods.AsAsked``."""

    def __init__(self, kubeconfig: Path, namespace: str, log: Path, identity: str, *extra: str) -> None:
        self.log = log
        if not any(a.startswith("--allowed-metrics-address") for a in extra):
            extra = ("--allowed-metrics-address", "127.0.0.1", *extra)  # the tests' Prometheus, any port
        cmd = [
            sys.executable, "-c", "import sys; from tests.e2e.nopods import controller; controller(sys.argv[1:])",
            "controller", "-n", namespace, "--kubeconfig", str(kubeconfig),
            "--interval", "0.5", "--lease-namespace", namespace, "--lease-duration", "4", "--identity", identity,
            "--lease-name", "ctl", *extra,
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        self.proc = subprocess.Popen(
            cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=ROOT
        )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


@pytest.fixture
def controllers(k8s_cluster: Any, k8s_namespace: str, tmp_path: Path) -> Iterator[Callable[..., Controller]]:
    started: list[Controller] = []

    def start(identity: str = "a", *extra: str) -> Controller:
        c = Controller(
            k8s_cluster.kubeconfig, k8s_namespace, tmp_path / f"controller-{identity}.log", identity, *extra
        )
        started.append(c)
        return c

    yield start
    for c in started:
        c.kill(signal.SIGTERM)
    for c in started:
        print(f"--- {c.log.name}\n{c.log.read_text(errors='replace')[-3000:]}")


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 120.0, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except NotFoundError as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


def isvc(kube: KubeClient, ns: str, name: str, ready: bool = True) -> None:
    """An InferenceService plus the status KServe would write (no KServe controller runs here),
    with the deployment mode KServe v0.20.0 records there and the chart gives it: Standard for
    the ``-stable`` / ``-candidate`` pair (istio, gateway-api routing), Knative for the one object
    of kserve routing (whose router refuses an object of no known mode)."""
    kube.create(
        INFERENCE_SERVICE,
        ns,
        {
            "metadata": {"name": name},
            "spec": {"predictor": {"containers": [{"name": "kserve-container", "image": "bento-iris:1"}]}},
        },
    )
    obj = kube.get(INFERENCE_SERVICE, ns, name)
    flag = "True" if ready else "False"
    obj["status"] = {
        "deploymentMode": "Standard" if name.endswith(("-stable", "-candidate")) else "Knative",
        "observedGeneration": obj["metadata"]["generation"],
        "conditions": [{"type": t, "status": flag} for t in ("PredictorReady", "Ready")],
        "components": {
            "predictor": {
                "latestCreatedRevision": f"{name}-1",
                "latestReadyRevision": f"{name}-1" if ready else None,
            }
        },
    }
    kube.replace_status(INFERENCE_SERVICE, ns, obj)


def rollout(name: str, steps: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "service": "iris",
            "stable": {"model": "iris:v1"},
            "candidate": {"model": "iris:v2"},
            "router": {"provider": "istio"},
            "strategy": {"canary": {"steps": steps}},
            **spec,
        },
    }


def status(kube: KubeClient, ns: str, name: str) -> dict[str, Any]:
    return kube.get(MODEL_ROLLOUT, ns, name).get("status") or {}


def vs_weights(kube: KubeClient, ns: str) -> dict[str, int]:
    vs = kube.get(VIRTUAL_SERVICE, ns, "iris")
    primary = [r for r in vs["spec"]["http"] if r.get("name") == "primary"][0]
    return {d["destination"]["host"].split("-")[1]: d["weight"] for d in primary["route"]}


def phase_is(kube: KubeClient, ns: str, name: str, *phases: str) -> Callable[[], bool]:
    return lambda: status(kube, ns, name).get("phase") in phases


def test_canary_runs_to_promotion_with_status_and_events(kube, k8s_namespace, controllers) -> None:
    ns = k8s_namespace
    isvc(kube, ns, "iris-stable")
    isvc(kube, ns, "iris-candidate")
    steps = [
        {"setWeight": 20},
        {"pause": {"duration": "1s"}},
        {"setWeight": 60},
        {"pause": {"duration": "1s"}},
        {"setWeight": 100},
    ]
    kube.create(MODEL_ROLLOUT, ns, rollout("iris-canary", steps))
    controllers("a")
    wait_for("Promoted", phase_is(kube, ns, "iris-canary", "Promoted"), timeout=180)
    st = status(kube, ns, "iris-canary")
    assert st["weights"] == {"stable": 0, "candidate": 100, "mirror": 0}
    # then the hand-off (tests/e2e/test_cluster_handoff.py): stable takes the candidate's model over and all
    # traffic returns to stable (here at once: both InferenceServices have the same predictor, so
    # stable's generation does not change and it is already observed)
    wait_for(
        "the hand-off", lambda: status(kube, ns, "iris-canary").get("handoff", {}).get("phase") == "Complete"
    )
    wait_for("all traffic back to stable", lambda: vs_weights(kube, ns) == {"stable": 100, "candidate": 0})
    st = status(kube, ns, "iris-canary")
    reasons = [h["reason"] for h in st["history"]]
    assert reasons[0] == "RolloutStarted" and reasons[-1] == "Promoted"
    conds = {c["type"]: c["status"] for c in st["conditions"]}
    assert conds["Completed"] == "True" and conds["Succeeded"] == "True"
    events = {e["reason"] for e in kube.list_events(ns, "iris-canary")}
    assert {"RolloutStarted", "Promoted"} <= events


def test_candidate_not_ready_moves_no_traffic(kube, k8s_namespace, controllers) -> None:
    ns = k8s_namespace
    isvc(kube, ns, "iris-stable")
    isvc(kube, ns, "iris-candidate", ready=False)
    kube.create(MODEL_ROLLOUT, ns, rollout("iris-wait", [{"setWeight": 50}, {"setWeight": 100}]))
    controllers("a")
    wait_for("the rollout to start", lambda: status(kube, ns, "iris-wait").get("phase"))
    time.sleep(4)  # several reconciles
    assert vs_weights(kube, ns) == {"stable": 100, "candidate": 0}
    assert status(kube, ns, "iris-wait")["weights"]["candidate"] == 0


def test_killed_controller_resumes_without_double_step_and_commands_apply_once(
    kube, k8s_namespace, controllers, k8s_cluster
) -> None:
    ns = k8s_namespace
    isvc(kube, ns, "iris-stable")
    isvc(kube, ns, "iris-candidate")
    steps = [{"setWeight": 20}, {"pause": {}}, {"setWeight": 50}, {"pause": {}}, {"setWeight": 100}]
    kube.create(MODEL_ROLLOUT, ns, rollout("iris-resume", steps))
    first = controllers("a")
    wait_for("the wait for promotion", phase_is(kube, ns, "iris-resume", "Paused"))
    before = status(kube, ns, "iris-resume")
    first.kill(signal.SIGKILL)
    assert vs_weights(kube, ns) == {"stable": 80, "candidate": 20}

    controllers("b")  # the Lease of "a" expires after 4 s, then "b" acts
    runner = CliRunner()
    args = ["-n", ns, "--kubeconfig", str(k8s_cluster.kubeconfig)]
    res = runner.invoke(cli, ["promote", "iris-resume", *args, "--wait", "--timeout", "120"])
    assert res.exit_code == 0, res.output
    wait_for("the second wait", lambda: status(kube, ns, "iris-resume").get("currentStep") == 3)
    after = status(kube, ns, "iris-resume")
    wait_for("50% to the candidate", lambda: vs_weights(kube, ns) == {"stable": 50, "candidate": 50})
    # one StepStarted per step: nothing was done twice across the restart
    started = [h["message"] for h in after["history"] if h["reason"] == "StepStarted"]
    assert len(started) == len(set(started)), started
    assert after["revision"] > before["revision"]

    # the command annotation is removed once applied, and applying it again is impossible
    def no_commands_left() -> bool:
        annotations = kube.get(MODEL_ROLLOUT, ns, "iris-resume")["metadata"].get("annotations") or {}
        return not [k for k in annotations if k.startswith("command.bento-rollout.io/")]

    wait_for("the applied command's annotation to be removed", no_commands_left, timeout=30)
    hist = status(kube, ns, "iris-resume")["history"]
    # the command was applied once: one revision carries it
    assert len({h["revision"] for h in hist if h["reason"] == "PromoteRequested"}) == 1, hist
    res = runner.invoke(cli, ["status", "iris-resume", *args])
    assert res.exit_code == 0 and "stable 50%  candidate 50%" in res.output


def test_deleting_a_rollout_mid_flight_restores_stable(kube, k8s_namespace, controllers) -> None:
    ns = k8s_namespace
    isvc(kube, ns, "iris-stable")
    isvc(kube, ns, "iris-candidate")
    kube.create(
        MODEL_ROLLOUT, ns, rollout("iris-del", [{"setWeight": 40}, {"pause": {}}, {"setWeight": 100}])
    )
    controllers("a")
    wait_for("40% to the candidate", lambda: vs_weights(kube, ns) == {"stable": 60, "candidate": 40})
    assert "bento-rollout.io/finalizer" in kube.get(MODEL_ROLLOUT, ns, "iris-del")["metadata"]["finalizers"]
    kube.delete(MODEL_ROLLOUT, ns, "iris-del")

    def gone() -> bool:
        try:
            kube.get(MODEL_ROLLOUT, ns, "iris-del")
            return False
        except NotFoundError:
            return True

    wait_for("the rollout to be deleted", gone, timeout=60)
    assert vs_weights(kube, ns) == {"stable": 100, "candidate": 0}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_prometheus_unreachable_never_promotes_and_rolls_back(kube, k8s_namespace, controllers) -> None:
    ns = k8s_namespace
    isvc(kube, ns, "iris-stable")
    isvc(kube, ns, "iris-candidate")
    spec = rollout(
        "iris-noprom",
        [{"setWeight": 30}, {"analysis": {"intervals": 2}}, {"setWeight": 100}],
        analysis={
            "interval": "1s",
            "errorLimit": 3,
            "metrics": [{"name": "error-rate", "template": "error-rate", "threshold": {"max": 0.01}}],
        },
        metricsAddress=f"http://127.0.0.1:{_closed_port()}",
    )
    kube.create(MODEL_ROLLOUT, ns, spec)
    controllers("a")
    wait_for("RolledBack", phase_is(kube, ns, "iris-noprom", "RolledBack", "Promoted"), timeout=180)
    st = status(kube, ns, "iris-noprom")
    assert st["phase"] == "RolledBack" and st["reason"] == "MetricsUnavailable"
    assert [m["errors"] for m in st["analysis"]] == [4]  # past errorLimit 3
    wait_for("all traffic back to stable", lambda: vs_weights(kube, ns) == {"stable": 100, "candidate": 0})
    assert "Promoted" not in [h["reason"] for h in st["history"]]


def test_only_the_lease_holder_acts(kube, k8s_namespace, controllers) -> None:
    ns = k8s_namespace
    isvc(kube, ns, "iris-stable")
    isvc(kube, ns, "iris-candidate")
    a = controllers("a")
    wait_for("a to hold the Lease", lambda: _holder(kube, ns) == "a", timeout=90)
    controllers("b")
    kube.create(MODEL_ROLLOUT, ns, rollout("iris-le", [{"setWeight": 10}, {"pause": {}}, {"setWeight": 100}]))
    wait_for("Paused", phase_is(kube, ns, "iris-le", "Paused"))
    time.sleep(3)
    assert _holder(kube, ns) == "a"
    a.kill(signal.SIGKILL)
    wait_for("b to take the Lease over", lambda: _holder(kube, ns) == "b", timeout=60)
    from rollout.cli.cluster import send_command

    send_command(kube, ns, "iris-le", "promote")
    wait_for("Promoted by b", phase_is(kube, ns, "iris-le", "Promoted"), timeout=90)


def test_a_leader_that_loses_its_lease_stands_by_quietly_and_leads_again(
    kube, k8s_namespace, controllers
) -> None:
    """Another holder takes the Lease from a running leader (written here as the API server would
    store it): the leader stands by - its timers act on nothing, so a promote waits, and say
    nothing (it logged an ERROR "not the leader" per rollout on every tick for as long as it stood
    by: for ever, on the chart's second replica after an API server hang) - and once that Lease
    expires it leads again and carries the rollout on."""
    from datetime import UTC, datetime

    from kubernetes import client as k8s

    from rollout.cli.cluster import send_command

    ns = k8s_namespace
    isvc(kube, ns, "iris-stable")
    isvc(kube, ns, "iris-candidate")
    kube.create(
        MODEL_ROLLOUT, ns, rollout("iris-lost", [{"setWeight": 10}, {"pause": {}}, {"setWeight": 100}])
    )
    a = controllers("a")
    wait_for("the wait for promotion", phase_is(kube, ns, "iris-lost", "Paused"))
    leases = k8s.CoordinationV1Api(kube.api_client)
    lease = leases.read_namespaced_lease("ctl", ns)
    lease.spec.holder_identity, lease.spec.lease_duration_seconds = "intruder", 6
    lease.spec.renew_time = datetime.now(UTC)
    leases.replace_namespaced_lease("ctl", ns, lease)
    wait_for("a to stand by", lambda: "a lost the Lease" in a.log.read_text(errors="replace"), timeout=10)
    send_command(kube, ns, "iris-lost", "promote")
    time.sleep(3)  # six ticks standing by
    assert status(kube, ns, "iris-lost")["reason"] == "WaitingForPromotion", "a standby acted"
    wait_for("Promoted once a leads again", phase_is(kube, ns, "iris-lost", "Promoted"), timeout=60)
    text = a.log.read_text(errors="replace")
    assert "a leads again" in text and _holder(kube, ns) == "a", text[-3000:]
    assert "not the leader" not in text, [line for line in text.splitlines() if "not the leader" in line][:3]


def test_a_lease_written_on_a_whole_second_is_accepted(kube, k8s_namespace) -> None:
    """The client writes a datetime with no microseconds without a fraction, which the API server
    refuses for a Lease's MicroTime (InvalidObjectError): about once a million renewals, and at
    every renewal of a test's injected clock."""
    from rollout.k8s.lease import LeaderElector

    a = LeaderElector(kube, k8s_namespace, "whole", "a", duration=4, clock=lambda: 1_800_000_000.0)
    assert a.try_acquire() and a.try_acquire() and a.is_leader  # created, then renewed


def _holder(kube: KubeClient, ns: str) -> str | None:
    from kubernetes import client as k8s

    try:
        lease = k8s.CoordinationV1Api(kube.api_client).read_namespaced_lease("ctl", ns)
    except k8s.ApiException:
        return None
    return lease.spec.holder_identity


def _chart_rbac(ns: str, template: str = "templates/controller-rbac.yaml") -> list[dict[str, Any]]:
    """The controller's ServiceAccount, Role, RoleBinding and Lease (or another ``template``) as
    the Helm chart renders them (istio routing), with Helm's own engine (`make tools` builds it)."""
    helm = ROOT / ".cache" / "bin" / "helm"
    out = subprocess.run(
        [str(helm), "template", "r", str(ROOT / "helm" / "bento-rollout"), "--namespace", ns,
         "--set", "routing.mode=istio", "--show-only", template],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _service_account_kubeconfig(k8s_cluster: Any, ns: str, path: Path) -> Path:
    """Apply the chart's least-privilege RBAC in ``ns`` and write a kubeconfig holding a token of
    its ServiceAccount (TokenRequest API)."""
    paths = {
        "ServiceAccount": f"/api/v1/namespaces/{ns}/serviceaccounts",
        "Role": f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
        "RoleBinding": f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
        # the chart creates the controller's Lease itself: its Role may only get/update it by name
        "Lease": f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases",
    }
    docs = _chart_rbac(ns)
    assert sorted(d["kind"] for d in docs) == ["Lease", "Role", "RoleBinding", "ServiceAccount"]
    sa = next(d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount")
    with k8s_cluster.http() as http:
        for doc in docs:
            resp = http.post(paths[doc["kind"]], json=doc)
            assert resp.status_code == 201, resp.text
        resp = http.post(
            f"/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token",
            json={
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": 3600},
            },
        )
        assert resp.status_code == 201, resp.text
        token = resp.json()["status"]["token"]
    admin = yaml.safe_load(Path(k8s_cluster.kubeconfig).read_text())
    cluster = admin["clusters"][0]
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster],
                "users": [{"name": sa, "user": {"token": token}}],
                "contexts": [
                    {"name": sa, "context": {"cluster": cluster["name"], "user": sa, "namespace": ns}}
                ],
                "current-context": sa,
            }
        )
    )
    return path


def test_controller_runs_with_the_least_privilege_service_account(
    kube, k8s_namespace, k8s_cluster, tmp_path
) -> None:
    ns = k8s_namespace
    kubeconfig = _service_account_kubeconfig(k8s_cluster, ns, tmp_path / "sa.kubeconfig")
    sa = KubeClient.from_kubeconfig(str(kubeconfig))
    from rollout.errors import ForbiddenError

    with pytest.raises(ForbiddenError):  # it really is not an administrator
        sa.call("list secrets", sa.core.list_namespaced_secret, ns)
    isvc(kube, ns, "iris-stable")
    isvc(kube, ns, "iris-candidate")
    # the chart creates the VirtualService; its Role lets the controller only get/update it by name
    (route,) = _chart_rbac(ns, "templates/virtualservice.yaml")
    kube.create(VIRTUAL_SERVICE, ns, {k: v for k, v in route.items() if k not in ("apiVersion", "kind")})
    kube.create(
        MODEL_ROLLOUT,
        ns,
        rollout("iris-sa", [{"setWeight": 50}, {"pause": {"duration": "1s"}}, {"setWeight": 100}]),
    )
    # the chart's Lease: its Role may get/update that one by name, and create none
    lease = next(d["metadata"]["name"] for d in _chart_rbac(ns) if d["kind"] == "Lease")
    ctl = Controller(kubeconfig, ns, tmp_path / "controller-sa.log", "sa", "--lease-name", lease)
    try:
        wait_for("Promoted", phase_is(kube, ns, "iris-sa", "Promoted"), timeout=180)
        # the hand-off patches the stable InferenceService: the chart's Role allows it
        wait_for(
            "all traffic back to stable after the hand-off",
            lambda: (
                vs_weights(kube, ns) == {"stable": 100, "candidate": 0}
                and status(kube, ns, "iris-sa").get("handoff", {}).get("phase") == "Complete"
            ),
        )
        stable = kube.get(INFERENCE_SERVICE, ns, "iris-stable")
        assert stable["metadata"]["annotations"]["bento-rollout.io/model"] == "iris:v2"
    finally:
        ctl.kill(signal.SIGTERM)
        print(ctl.log.read_text(errors="replace")[-3000:])


@pytest.mark.parametrize("provider", ["kserve", "gateway-api"])
def test_canary_with_kserve_and_gateway_api_routers(
    kube, k8s_namespace, controllers, k8s_cluster, provider
) -> None:
    """The same controller drives KServe's canaryTrafficPercent and a Gateway API HTTPRoute."""
    from rollout.k8s.client import HTTP_ROUTE

    ns = k8s_namespace
    if provider == "kserve":
        isvc(kube, ns, "iris")  # one InferenceService; its latest revision is the candidate
    else:
        isvc(kube, ns, "iris-stable")
        isvc(kube, ns, "iris-candidate")
    spec = rollout("iris-" + provider, [{"setWeight": 30}, {"pause": {}}, {"setWeight": 100}])
    spec["spec"]["router"] = {"provider": provider}

    def weight() -> int:
        if provider == "kserve":
            return kube.get(INFERENCE_SERVICE, ns, "iris")["spec"]["predictor"].get(
                "canaryTrafficPercent", -1
            )
        rules = kube.get(HTTP_ROUTE, ns, "iris")["spec"]["rules"]
        return {r["name"]: r["weight"] for r in rules[-1]["backendRefs"]}["iris-candidate-predictor"]

    kube.create(MODEL_ROLLOUT, ns, spec)
    controllers("a")
    stop = threading.Event()
    if provider == "kserve":  # moving canaryTrafficPercent bumps the generation; KServe would observe it
        threading.Thread(target=_observe_generations, args=(kube, ns, stop), daemon=True).start()
    try:
        _kserve_or_gateway_flow(kube, ns, provider, weight, k8s_cluster)
    finally:
        stop.set()


def _observe_generations(kube: KubeClient, ns: str, stop: threading.Event) -> None:
    """What KServe's controller does (it does not run here): report the generation it has seen."""
    while not stop.wait(0.3):
        try:
            for obj in kube.list(INFERENCE_SERVICE, ns):
                st = obj.get("status") or {}
                if st and st.get("observedGeneration", 0) < obj["metadata"]["generation"]:
                    st["observedGeneration"] = obj["metadata"]["generation"]
                    kube.replace_status(INFERENCE_SERVICE, ns, obj)
        except Exception:  # a conflict with the controller's write: try again next round
            continue


def _kserve_or_gateway_flow(
    kube: KubeClient, ns: str, provider: str, weight: Callable[[], int], k8s_cluster: Any
) -> None:
    wait_for("30% to the candidate", lambda: weight() == 30)
    wait_for("the wait for promotion", phase_is(kube, ns, "iris-" + provider, "Paused"))
    # the kubectl plugin entry point, as `kubectl modelrollout promote ...` runs it
    plugin = Path(sys.executable).parent / "kubectl-modelrollout"
    args = ["-n", ns, "--kubeconfig", str(k8s_cluster.kubeconfig)]
    out = subprocess.run(
        [str(plugin), "promote", "iris-" + provider, *args], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "promote requested" in out.stdout, out.stderr
    wait_for("Promoted", phase_is(kube, ns, "iris-" + provider, "Promoted"), timeout=120)
    if provider == "kserve":  # KServe promotes its latest revision itself
        wait_for("all traffic to the candidate", lambda: weight() == 100)
    else:  # the hand-off: stable takes the candidate's model over, then gets all traffic back
        wait_for("all traffic back to stable", lambda: weight() == 0, timeout=60)
    res = CliRunner().invoke(
        cli, ["status", "iris-" + provider, *args, "--watch"]
    )  # returns: the rollout ended
    assert res.exit_code == 0 and "Promoted" in res.output and "candidate 100%" in res.output
