"""``rollout controller`` (a real process) against the real kube-apiserver refuses a ModelRollout
whose ``spec.metricsAddress`` is not on its allow-list, and never connects to it.

Given a controller that allows only ``prometheus:9090``, and a listening socket the test owns on
127.0.0.1, when ModelRollouts name that socket by IP (``http://127.0.0.1:<port>``) and by a name
that resolves to it (``http://localhost:<port>``), then each one is Invalid with reason
MetricsAddressRefused and a message naming the allowed address, one Warning Event says the same
(once, not once per reconcile), the routing object is not touched (its resourceVersion does not
change, all traffic stays on stable), and the socket never sees a connection. The API server itself
refuses an address of the wrong form (``file://``, user info) at create, from the CRD's schema.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from rollout.controller.conventions import default_router, route_target
from rollout.errors import InvalidObjectError
from rollout.k8s.client import MODEL_ROLLOUT, VIRTUAL_SERVICE, KubeClient
from rollout.spec import parse_rollout
from tests.e2e import test_controller as tc
from tests.e2e.test_controller import isvc, status, vs_weights, wait_for

# the fixtures of test_controller.py: the CRD, an admin client, `rollout controller` processes
rollout_crd, kube, controllers = tc.rollout_crd, tc.kube, tc.controllers

pytestmark = pytest.mark.k8s
REFUSED = "MetricsAddressRefused"


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A socket of the test's own on 127.0.0.1: a connection to it is seen by ``accept``."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.setblocking(False)
    yield srv
    srv.close()


def connections(srv: socket.socket) -> int:
    seen = 0
    while True:
        try:
            conn, _ = srv.accept()
        except BlockingIOError:
            return seen
        conn.close()
        seen += 1


def analysed(name: str, address: str) -> dict[str, Any]:
    return tc.rollout(
        name,
        [{"setWeight": 30}, {"analysis": {"intervals": 2}}, {"setWeight": 100}],
        analysis={
            "interval": "1s",
            "metrics": [{"name": "error-rate", "template": "error-rate", "threshold": {"max": 0.01}}],
        },
        metricsAddress=address,
    )


def refusal_events(kube: KubeClient, ns: str, name: str) -> list[dict[str, Any]]:
    return [e for e in kube.list_events(ns, name) if e.get("reason") == REFUSED]


def test_a_disallowed_metrics_address_is_refused_and_never_connected_to(
    kube: KubeClient, k8s_namespace: str, controllers: Any, listener: socket.socket
) -> None:
    ns, port = k8s_namespace, listener.getsockname()[1]
    isvc(kube, ns, "iris-stable")
    isvc(kube, ns, "iris-candidate")
    by_ip, by_name = (
        analysed("by-ip", f"http://127.0.0.1:{port}"),
        analysed("by-name", f"http://localhost:{port}/"),
    )
    # the routing object as the chart leaves it: all traffic on stable
    spec = parse_rollout({"apiVersion": "bento-rollout.io/v1alpha1", "kind": "ModelRollout", **by_ip}).spec
    default_router(spec, ns, kube).ensure(route_target(spec))
    before = kube.get(VIRTUAL_SERVICE, ns, "iris")["metadata"]["resourceVersion"]
    kube.create(MODEL_ROLLOUT, ns, by_ip)
    kube.create(MODEL_ROLLOUT, ns, by_name)
    controllers("a", "--allowed-metrics-address", "prometheus:9090")

    for name, address in (("by-ip", f"http://127.0.0.1:{port}"), ("by-name", f"http://localhost:{port}/")):
        wait_for(f"{name} refused", lambda name=name: status(kube, ns, name).get("reason") == REFUSED)
        st = status(kube, ns, name)
        assert st["phase"] == "Invalid", st
        assert address in st["message"] and "allowed: prometheus:9090" in st["message"], st["message"]
        wait_for(f"{name}'s Event", lambda name=name: refusal_events(kube, ns, name))
    time.sleep(4)  # several reconciles (every 0.5 s): still refused, still nothing reached

    for name in ("by-ip", "by-name"):
        st = status(kube, ns, name)
        assert (st["phase"], st["reason"]) == ("Invalid", REFUSED)
        assert "weights" not in st and "state" not in st, "the rollout started"
        (event,) = refusal_events(kube, ns, name)  # one Event, not one per reconcile
        assert event["type"] == "Warning" and "prometheus:9090" in event["message"]
    assert kube.get(VIRTUAL_SERVICE, ns, "iris")["metadata"]["resourceVersion"] == before, "routes touched"
    assert vs_weights(kube, ns) == {"stable": 100, "candidate": 0}
    assert connections(listener) == 0, "the controller connected to a refused address"


@pytest.mark.parametrize(
    "address", ["file:///etc/passwd", "http://user:pw@prometheus:9090", "http://prometheus:9090/?x=1"]
)
def test_the_api_server_refuses_an_address_of_the_wrong_form(
    kube: KubeClient, k8s_namespace: str, address: str
) -> None:
    with pytest.raises(InvalidObjectError, match="metricsAddress"):
        kube.create(MODEL_ROLLOUT, k8s_namespace, analysed("bad-form", address))
