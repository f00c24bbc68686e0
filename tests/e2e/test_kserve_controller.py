"""The real KServe controller (tests/k8s/kserve.py) turns an InferenceService into running pods.

Given a single-node cluster with KServe's own manager installed in Standard mode (fixture
``kserve_node``), an InferenceService with a custom predictor container (busybox httpd answering
``/v2/health/ready``) becomes KServe's Deployment, Service and a Ready pod; KServe writes its
status (the test writes none); its Service answers; and KServe's validating webhook refuses what
it should, with its own message.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from rollout.errors import ProcessError
from tests.k8s.kserve import KServe

pytestmark = pytest.mark.k8s

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
# httpd as an unprivileged user, serving /v2/health/ready (a file) from a directory it can write.
SERVE = (
    "mkdir -p /tmp/www/v2/health && echo '{}' > /tmp/www/v2/health/ready && exec httpd -f -p 8080 -h /tmp/www"
)


@pytest.fixture
def namespace(kserve_node: KServe) -> Iterator[str]:
    core = client.CoreV1Api(kserve_node.node.control_plane.api_client())
    name = f"isvc-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    with contextlib.suppress(client.ApiException):
        core.delete_namespace(name)


def isvc(name: str, image: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceService",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {
            "predictor": {
                "securityContext": {"runAsUser": 65534, "runAsGroup": 65534, "runAsNonRoot": True},
                "containers": [
                    {
                        "name": "kserve-container",
                        "image": image,
                        "imagePullPolicy": "Never",
                        "command": ["sh", "-c"],
                        "args": [SERVE],
                        "resources": {
                            "requests": {"cpu": "10m", "memory": "16Mi"},
                            "limits": {"cpu": "100m", "memory": "64Mi"},
                        },
                    }
                ],
            }
        },
    }


def _conditions(obj: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in (obj.get("status") or {}).get("conditions") or []}


def _wait_ready(custom: client.CustomObjectsApi, ns: str, name: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    obj: dict[str, Any] = {}
    while time.monotonic() < deadline:
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
        if _conditions(obj).get("Ready") == "True":
            return obj
        time.sleep(1)
    raise AssertionError(
        f"InferenceService {ns}/{name} not Ready after {timeout} s: {json.dumps(obj.get('status'))}"
    )


def test_an_inferenceservice_becomes_kserves_deployment_service_and_a_ready_pod(
    kserve_node: KServe, namespace: str
) -> None:
    node = kserve_node.node
    print(
        f"\nnode + KServe {kserve_node.version} Ready (webhooks answering) in {kserve_node.seconds:.1f} s"
        f" (KServe's install {kserve_node.install_seconds:.1f} s)"
    )
    api = node.control_plane.api_client()
    custom, apps, core = client.CustomObjectsApi(api), client.AppsV1Api(api), client.CoreV1Api(api)
    started = time.monotonic()
    custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        # The legacy name of Standard: KServe's defaulting webhook rewrites it.
        isvc("echo", node.images["busybox"].ref, {"serving.kserve.io/deploymentMode": "RawDeployment"}),
    )
    obj = _wait_ready(custom, namespace, "echo")
    print(
        f"InferenceService Ready in {time.monotonic() - started:.1f} s; status: {json.dumps(obj['status'])}"
    )

    # KServe's own objects, owned by the InferenceService.
    deployment = apps.read_namespaced_deployment("echo-predictor", namespace)
    service = core.read_namespaced_service("echo-predictor", namespace)
    for o in (deployment, service):
        owners = [(r.kind, r.name) for r in o.metadata.owner_references or []]
        assert ("InferenceService", "echo") in owners, owners
    pods = core.list_namespaced_pod(namespace, label_selector="serving.kserve.io/inferenceservice=echo").items
    assert [p.status.phase for p in pods] == ["Running"]
    assert {c.type: c.status for c in pods[0].status.conditions}["Ready"] == "True"
    pod_spec = deployment.spec.template.spec
    print("Deployment container:", json.dumps(api.sanitize_for_serialization(pod_spec.containers[0])))
    print("pod securityContext:", json.dumps(api.sanitize_for_serialization(pod_spec.security_context)))
    print("Service spec:", json.dumps(api.sanitize_for_serialization(service.spec)))

    # The status KServe wrote (the test writes no status).
    status = obj["status"]
    assert _conditions(obj)["PredictorReady"] == "True"
    assert status["url"].startswith("http://")
    assert status["address"]["url"] == f"http://echo-predictor.{namespace}.svc.cluster.local"
    assert status.get("deploymentMode") == "Standard"
    assert obj["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    assert pod_spec.security_context.run_as_user == 65534  # the pod-level securityContext is kept

    # Through the ClusterIP of KServe's Service, from inside the node netns.
    # (kube-proxy writes the Service's rule once it sees the EndpointSlice: a moment after Ready.)
    url = f"http://{service.spec.cluster_ip}:{service.spec.ports[0].port}/v2/health/ready"
    deadline = time.monotonic() + 30
    while True:
        try:
            assert node.http_get(url).strip() == "{}"
            print(
                f"GET {url} answered {time.monotonic() - started:.1f} s after the InferenceService was made"
            )
            break
        except ProcessError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    api.close()


def test_kserves_validating_webhook_refuses_with_its_message(kserve_node: KServe, namespace: str) -> None:
    custom = client.CustomObjectsApi(kserve_node.node.control_plane.api_client())
    # A valid Kubernetes name (DNS-1123) that KServe's own name rule (DNS-1035) refuses.
    with pytest.raises(client.ApiException) as refused:
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, isvc("9lives", kserve_node.node.images["busybox"].ref)
        )
    body = json.loads(refused.value.body)
    assert refused.value.status == 403, body
    assert (
        'admission webhook "inferenceservice.kserve-webhook-server.validator" denied the request'
        in body["message"]
    )
    assert "must start with alphabetical character" in body["message"]


def test_a_declared_container_port_names_the_service_port(kserve_node: KServe, namespace: str) -> None:
    api = kserve_node.node.control_plane.api_client()
    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    obj = isvc(
        "named", kserve_node.node.images["busybox"].ref, {"serving.kserve.io/deploymentMode": "Standard"}
    )
    obj["spec"]["predictor"]["containers"][0]["ports"] = [{"name": "http1", "containerPort": 8080}]
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, obj)
    _wait_ready(custom, namespace, "named")
    ports = core.read_namespaced_service("named-predictor", namespace).spec.ports
    assert [(p.name, p.port, p.target_port) for p in ports] == [("http1", 80, 8080)]
    api.close()


def test_knative_mode_without_knative_is_refused_by_the_controller(
    kserve_node: KServe, namespace: str
) -> None:
    api = kserve_node.node.control_plane.api_client()
    custom, core, apps = client.CustomObjectsApi(api), client.CoreV1Api(api), client.AppsV1Api(api)
    obj = isvc(
        "kn", kserve_node.node.images["busybox"].ref, {"serving.kserve.io/deploymentMode": "Serverless"}
    )
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, obj)
    created = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "kn")
    assert (
        created["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
    )  # the defaulter
    deadline = time.monotonic() + 60
    reasons: list[str] = []
    while "ServerlessModeRejected" not in reasons and time.monotonic() < deadline:
        time.sleep(0.5)
        reasons = [
            e.reason for e in core.list_namespaced_event(namespace).items if e.involved_object.name == "kn"
        ]
    assert "ServerlessModeRejected" in reasons, reasons
    assert apps.list_namespaced_deployment(namespace).items == []
    api.close()
