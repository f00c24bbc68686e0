"""The chart's feedback join (feedback.*), rendered by the real ``helm``: with join: redis (the
default) every model pod of every version records into one Redis the chart deploys (or yours), the
one exporter serves its counters, and all of them find it by the same address and the same Secret;
with join: local none of it exists but the token. The Redis runs with rollout/local/redis.py's
durable settings (the one source), and a real redis-server takes the rendered arguments. The random
token and password survive ``helm upgrade`` on a real kube-apiserver (lookup)."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis

from rollout.local import redis as local_redis
from tests.e2e.helmkit import CHART, by_kind, kubectl, run_helm, set_args, template
from tests.k8s.fixtures import K8sCluster

pytestmark = pytest.mark.k8s

MODES = ["kserve", "istio", "gateway-api"]
SECRET = "br-bento-rollout-feedback"
REDIS = "br-bento-rollout-join-redis"
EXPORTER = "br-bento-rollout-join-exporter"
STORE = f"redis://{REDIS}.models.svc.cluster.local:6379/0"
FEEDBACK_ENV = [
    "BENTO_JOIN_STORE",
    "BENTO_JOIN_PASSWORD",
    "BENTO_FEEDBACK_TOKEN",
    "BENTO_JOIN_WINDOW_SECONDS",
]
YOURS = {
    "feedback.tokenSecret": "labels",
    "feedback.redis.address": "redis.data.svc:6380",
    "feedback.redis.passwordSecret": "redis-auth",
}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("helm-home")


def named(kinds: dict[str, list[dict[str, Any]]], kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in kinds.get(kind, []) if d["metadata"]["name"] == name]
    return doc


def names(kinds: dict[str, list[dict[str, Any]]], kind: str) -> set[str]:
    return {d["metadata"]["name"] for d in kinds.get(kind, [])}


def container(doc: dict[str, Any]) -> dict[str, Any]:
    (c,) = doc["spec"]["template"]["spec"]["containers"]
    return c


def env(c: dict[str, Any]) -> dict[str, Any]:
    """name -> value, or -> (Secret, key) for a secretKeyRef."""
    out: dict[str, Any] = {}
    for e in c.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        out[e["name"]] = (ref["name"], ref["key"]) if ref else e.get("value")
    return out


def predictors(kinds: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [i["spec"]["predictor"]["containers"][0] for i in kinds["InferenceService"]]


def secret_data(kinds: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in named(kinds, "Secret", SECRET)["data"].items()}


@pytest.mark.parametrize("mode", MODES)
def test_join_redis_renders_the_store_its_exporter_and_the_secret_every_pod_finds_them_by(
    home: Path, mode: str
) -> None:
    kinds = by_kind(template(home, {"routing.mode": mode, "models.candidate": "iris:v2"}))
    assert {REDIS, EXPORTER} <= names(kinds, "Deployment")
    assert {REDIS, EXPORTER} <= names(kinds, "Service")
    assert {REDIS, EXPORTER} <= names(kinds, "NetworkPolicy")
    assert EXPORTER in names(kinds, "PodMonitor")
    assert "PersistentVolumeClaim" not in kinds  # an emptyDir by default
    data = secret_data(kinds)
    assert set(data) == {"token", "redis-password"}
    assert all(re.fullmatch(r"[A-Za-z0-9]{32}", v) for v in data.values())

    service = named(kinds, "Service", REDIS)
    assert service["spec"]["ports"] == [
        {"name": "redis", "port": 6379, "targetPort": "redis", "protocol": "TCP"}
    ]
    redis_pod = named(kinds, "Deployment", REDIS)["spec"]["template"]
    assert service["spec"]["selector"].items() <= redis_pod["metadata"]["labels"].items()
    password = env(container(named(kinds, "Deployment", REDIS)))["REDIS_PASSWORD"]
    assert password == (SECRET, "redis-password")

    for c in predictors(kinds):  # every version's server: the same store, password and token
        e = env(c)
        assert [n for n in e if n in FEEDBACK_ENV] == FEEDBACK_ENV
        assert e["BENTO_JOIN_STORE"] == STORE
        assert e["BENTO_JOIN_PASSWORD"] == password
        assert e["BENTO_FEEDBACK_TOKEN"] == (SECRET, "token")
        assert e["BENTO_JOIN_WINDOW_SECONDS"] == "3600"
    exporter = container(named(kinds, "Deployment", EXPORTER))
    assert exporter["command"] == [
        "python", "-m", "bentos.join_exporter", "--store", STORE, "--listen", "0.0.0.0:9108",
    ]  # fmt: skip
    assert exporter["workingDir"] == "/home/bentoml/bento/src"
    assert exporter["image"] == predictors(kinds)[0]["image"]  # the Bento image holds bentos/
    assert env(exporter)["BENTO_JOIN_PASSWORD"] == password


def test_join_local_renders_no_store_but_still_authenticates_labels(home: Path) -> None:
    kinds = by_kind(
        template(home, {"feedback.join": "local", "routing.mode": "istio", "loadtest.enabled": True})
    )
    for kind in ("Deployment", "Service", "NetworkPolicy", "PodMonitor"):
        assert not names(kinds, kind) & {REDIS, EXPORTER}, kind
    assert set(secret_data(kinds)) == {"token"}
    for c in predictors(kinds):
        e = env(c)
        assert e["BENTO_JOIN_STORE"] == "local"
        assert e["BENTO_FEEDBACK_TOKEN"] == (SECRET, "token")
        assert "BENTO_JOIN_PASSWORD" not in e
    (job,) = kinds["Job"]
    assert env(job["spec"]["template"]["spec"]["containers"][0])["LOAD_FEEDBACK_TOKEN"] == (SECRET, "token")


def test_your_secrets_and_your_redis_are_used_and_the_chart_makes_neither(home: Path) -> None:
    kinds = by_kind(template(home, {**YOURS, "loadtest.enabled": True}))
    assert "Secret" not in kinds
    assert REDIS not in names(kinds, "Deployment") | names(kinds, "Service") | names(kinds, "NetworkPolicy")
    assert EXPORTER in names(kinds, "Deployment")  # your Redis's counters are exported all the same
    store = "redis://redis.data.svc:6380/0"
    (c,) = predictors(kinds)
    e = env(c)
    assert e["BENTO_JOIN_STORE"] == store
    assert e["BENTO_JOIN_PASSWORD"] == ("redis-auth", "password")
    assert e["BENTO_FEEDBACK_TOKEN"] == ("labels", "token")
    exporter = container(named(kinds, "Deployment", EXPORTER))
    assert exporter["command"][exporter["command"].index("--store") + 1] == store
    assert env(exporter)["BENTO_JOIN_PASSWORD"] == ("redis-auth", "password")
    (job,) = kinds["Job"]
    assert env(job["spec"]["template"]["spec"]["containers"][0])["LOAD_FEEDBACK_TOKEN"] == ("labels", "token")


def test_only_what_the_values_do_not_name_goes_into_the_charts_secret(home: Path) -> None:
    kinds = by_kind(template(home, {"feedback.tokenSecret": "labels"}))
    assert set(secret_data(kinds)) == {"redis-password"}
    assert env(predictors(kinds)[0])["BENTO_FEEDBACK_TOKEN"] == ("labels", "token")
    kinds = by_kind(template(home, {"feedback.redis.passwordSecret": "redis-auth"}))
    assert set(secret_data(kinds)) == {"token"}
    # the chart's Redis runs with your password then
    assert env(container(named(kinds, "Deployment", REDIS)))["REDIS_PASSWORD"] == ("redis-auth", "password")


def test_your_redis_without_its_password_is_refused(home: Path) -> None:
    result = run_helm(
        ["template", "br", str(CHART), *set_args({"feedback.redis.address": "redis.data.svc:6379"})], home
    )
    assert result.returncode != 0
    assert "set feedback.redis.passwordSecret" in result.stderr, result.stderr


@pytest.mark.parametrize(
    "name",
    ["BENTO_FEEDBACK_TOKEN", "BENTO_FEEDBACK_TOKEN_FILE", "BENTO_JOIN_STORE", "BENTO_JOIN_PASSWORD",
     "BENTO_JOIN_WINDOW_SECONDS"],
)  # fmt: skip
def test_a_versions_extra_env_may_not_replace_the_feedback_variables(home: Path, name: str) -> None:
    values = {"models.candidate": "iris:v2", "models.candidateEnv": [{"name": name, "value": "x" * 20}]}
    result = run_helm(["template", "br", str(CHART), *set_args(values)], home)
    assert result.returncode != 0, f"{name} rendered but should have failed"
    assert f"models.candidateEnv sets {name}, which the chart sets itself" in result.stderr
    assert "feedback.*" in result.stderr, result.stderr


def test_the_redis_runs_restricted_as_its_images_user_and_keeps_one_copy(home: Path) -> None:
    deploy = named(by_kind(template(home)), "Deployment", REDIS)
    assert deploy["spec"]["replicas"] == 1 and deploy["spec"]["strategy"] == {"type": "Recreate"}
    pod = deploy["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 999, "runAsGroup": 999,
                                      "fsGroup": 999, "seccompProfile": {"type": "RuntimeDefault"}}  # fmt: skip
    c = container(deploy)
    sc = c["securityContext"]
    assert (sc["runAsUser"], sc["runAsGroup"], sc["readOnlyRootFilesystem"]) == (999, 999, True)
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["allowPrivilegeEscalation"] is False
    assert c["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]
    assert pod["volumes"] == [{"name": "data", "emptyDir": {"sizeLimit": "1Gi"}}]
    assert c["readinessProbe"]["exec"]["command"] == ["redis-cli", "-p", "6379", "-e", "ping"]
    assert env(c)["REDISCLI_AUTH"] == env(c)["REDIS_PASSWORD"]
    assert c["livenessProbe"]["tcpSocket"] == {"port": "redis"}


def test_persistence_puts_the_append_only_file_on_a_claim(home: Path) -> None:
    values = {"feedback.redis.persistence": {"enabled": True, "storageClass": "fast", "size": "5Gi"}}
    kinds = by_kind(template(home, values))
    claim = named(kinds, "PersistentVolumeClaim", REDIS)
    assert claim["spec"] == {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast",
                             "resources": {"requests": {"storage": "5Gi"}}}  # fmt: skip
    pod = named(kinds, "Deployment", REDIS)["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "data", "persistentVolumeClaim": {"claimName": REDIS}}]


def redis_settings(args: list[str]) -> dict[str, str]:
    """redis-server's command line as the config lines it makes of it (server.c: each ``--name``
    starts a line, each argument after it is appended, an empty one as ""), {setting: value}."""
    lines: list[list[str]] = []
    for arg in args:
        if arg.startswith("--"):
            lines.append([arg[2:]])
        else:
            lines[-1].append(arg or '""')
    return settings(" ".join(line) for line in lines)


def settings(lines: Any) -> dict[str, str]:
    """Config lines as {setting: value}; a rename-command's command is part of its setting."""
    out = {}
    for line in lines:
        name, value = line.split(" ", 1)
        if name == "rename-command":
            command, value = value.split(" ", 1)
            name = f"{name} {command}"
        out[name] = value
    return out


def test_the_charts_redis_runs_with_the_local_stores_durable_settings(home: Path) -> None:
    """One source: rollout/local/redis.py (DURABLE and the renamed commands of render_config),
    which the local stack and tests/integration/test_redis_join.py run Redis with. A setting
    changed or added there and not in templates/feedback-redis.yaml (or the other way) fails here."""
    args = container(named(by_kind(template(home)), "Deployment", REDIS))["args"]
    chart = redis_settings(args)
    conf = local_redis.render_config(6379, Path("/data"), "$(REDIS_PASSWORD)", "0.0.0.0")
    local = settings(conf.splitlines())
    for key, value in local_redis.DURABLE.items():
        assert chart[key] == value, key
    # what only a config file needs: redis-server started with arguments already runs so
    assert {k: local.pop(k) for k in ("daemonize", "logfile")} == {"daemonize": "no", "logfile": '""'}
    # what only the chart sets: the memory a full store refuses writes at (feedback.redis.maxMemory)
    assert chart.pop("maxmemory") == "128mb"
    assert chart == local


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_real_redis_server_takes_the_rendered_arguments_and_the_probe_checks_the_password(
    home: Path, tmp_path: Path
) -> None:
    """The rendered args started with Debian's redis-server (what the image runs): "" reaches it as
    an empty argument (save, rename-command), the password is required, FLUSHALL and CONFIG are
    gone, the file is fsynced always; the readiness probe's redis-cli -e exits 0 only when it is
    let in."""
    if not os.access(local_redis.REDIS_BIN, os.X_OK):
        pytest.fail(
            f"redis-server is not installed ({local_redis.REDIS_BIN}): run `make system`", pytrace=False
        )
    c = container(named(by_kind(template(home)), "Deployment", REDIS))
    port, password = free_port(), "p" * 24
    swap = {"$(REDIS_PASSWORD)": password, "/data": str(tmp_path), "6379": str(port), "0.0.0.0": "127.0.0.1"}
    proc = subprocess.Popen([local_redis.REDIS_BIN, *(swap.get(a, a) for a in c["args"])],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        client = redis.Redis(port=port, password=password, socket_timeout=2)
        deadline = time.monotonic() + 20
        while True:
            try:
                assert client.ping()
                break
            except redis.ConnectionError:
                assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
                assert time.monotonic() < deadline, "redis-server did not answer"
                time.sleep(0.1)
        assert client.info("persistence")["aof_enabled"] == 1
        assert client.info("server")["tcp_port"] == port
        for command in ("FLUSHALL", "FLUSHDB", "CONFIG GET appendfsync", "DEBUG SLEEP 0"):
            with pytest.raises(redis.ResponseError, match="unknown command"):
                client.execute_command(command)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port, socket_timeout=2).set("k", "v")
        probe = [swap.get(a, a) for a in c["readinessProbe"]["exec"]["command"]]
        cli = {**os.environ, "REDISCLI_AUTH": password}
        assert subprocess.run(probe, env=cli, capture_output=True, timeout=10).returncode == 0
        wrong = {**os.environ, "REDISCLI_AUTH": "q" * 24}
        assert subprocess.run(probe, env=wrong, capture_output=True, timeout=10).returncode != 0
        assert list(tmp_path.glob("appendonlydir/*.aof"))  # it writes only where /data is
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_the_exporter_is_probed_and_scraped_where_it_serves(home: Path) -> None:
    """The probes' /healthz and the PodMonitor's /metrics on the port named metrics, which
    bentos.join_exporter really answers (a Redis it cannot reach only makes model_join_store_up 0)."""
    from bentos.join_exporter import serve
    from bentos.redis_join import connect

    kinds = by_kind(template(home, {"feedback.exporter.port": 9200}))
    c = container(named(kinds, "Deployment", EXPORTER))
    assert c["ports"] == [{"name": "metrics", "containerPort": 9200, "protocol": "TCP"}]
    assert c["command"][-1] == "0.0.0.0:9200"
    assert (
        c["readinessProbe"]["httpGet"]
        == c["livenessProbe"]["httpGet"]
        == {"path": "/healthz", "port": "metrics"}
    )
    sc = c["securityContext"]
    assert (sc["runAsUser"], sc["readOnlyRootFilesystem"]) == (1034, True)
    deploy = named(kinds, "Deployment", EXPORTER)
    assert deploy["spec"]["replicas"] == 1 and deploy["spec"]["strategy"] == {"type": "Recreate"}
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "join-exporter"
    monitor = named(kinds, "PodMonitor", EXPORTER)
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint == {"port": "metrics", "path": "/metrics", "interval": "15s", "honorLabels": True}

    server = serve(connect(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        with urllib.request.urlopen(base + c["readinessProbe"]["httpGet"]["path"], timeout=5) as got:
            assert got.status == 200
        with urllib.request.urlopen(base + endpoint["path"], timeout=5) as got:
            assert "model_join_store_up 0" in got.read().decode()
    finally:
        server.shutdown()
        server.server_close()


def test_the_network_policies_admit_the_model_pods_and_exporter_to_redis_and_prometheus_to_the_exporter(
    home: Path,
) -> None:
    kinds = by_kind(template(home, {"routing.mode": "istio", "models.candidate": "iris:v2"}))
    pods = {
        "redis": named(kinds, "Deployment", REDIS)["spec"]["template"]["metadata"]["labels"],
        "exporter": named(kinds, "Deployment", EXPORTER)["spec"]["template"]["metadata"]["labels"],
        "controller": named(kinds, "Deployment", "br-bento-rollout-controller")["spec"]["template"]["metadata"]["labels"],
        **{i["metadata"]["name"]: i["spec"]["predictor"]["labels"] for i in kinds["InferenceService"]},
    }  # fmt: skip
    policy = named(kinds, "NetworkPolicy", REDIS)
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pods["redis"].items()
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 6379, "protocol": "TCP"}]
    admitted = {
        pod for pod, labels in pods.items()
        for peer in rule["from"] if peer["podSelector"]["matchLabels"].items() <= labels.items()
    }  # fmt: skip
    assert admitted == {"iris-stable", "iris-candidate", "exporter"}
    assert all(set(peer) == {"podSelector"} for peer in rule["from"])  # this namespace's pods only

    policy = named(kinds, "NetworkPolicy", EXPORTER)
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pods["exporter"].items()
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 9108, "protocol": "TCP"}]
    (peer,) = rule["from"]
    assert peer["namespaceSelector"]["matchExpressions"][0]["values"] == ["istio-system", "knative-serving",
                                                                          "monitoring"]  # fmt: skip


def test_the_token_and_password_survive_helm_upgrade(
    k8s_cluster: K8sCluster, k8s_namespace: str, tmp_path: Path
) -> None:
    """A new random token on every upgrade would lock the labelling pipeline out, a new password
    would restart Redis with one the running model pods do not have: the chart reads its Secret
    back (lookup) and keeps both, and makes only what a later value stops naming."""

    def helm(*args: str) -> str:
        done = run_helm(list(args), tmp_path, kubeconfig=k8s_cluster.kubeconfig, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def stored() -> dict[str, str]:
        got = kubectl(k8s_cluster, "get", "secret", SECRET, "-n", k8s_namespace, "-o", "jsonpath={.data}")
        assert got.returncode == 0, got.stderr
        return {k: base64.b64decode(v).decode() for k, v in json.loads(got.stdout).items()}

    notes = helm("install", "br", str(CHART), "-n", k8s_namespace, "--set", "controller.enabled=false")
    # NOTES: how the labelling pipeline gets the token
    assert (
        f"kubectl -n {k8s_namespace} get secret {SECRET} -o jsonpath='{{.data.token}}' | base64 -d" in notes
    )
    first = stored()
    assert set(first) == {"token", "redis-password"}
    helm("upgrade", "br", str(CHART), "-n", k8s_namespace, "--reuse-values",
         "--set", "feedback.windowSeconds=600")  # fmt: skip
    assert stored() == first
    notes = helm("upgrade", "br", str(CHART), "-n", k8s_namespace, "--reuse-values",
                 "--set", "feedback.join=local")  # fmt: skip
    assert stored() == {"token": first["token"]}
    assert "WARNING: feedback.join=local" in notes  # replicas.max is 3: a label may miss its pod
