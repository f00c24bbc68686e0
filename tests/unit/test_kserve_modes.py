"""The kserve router knows the mode KServe v0.20.0 runs an InferenceService in, the way KServe
decides it (controller/v1beta1/inferenceservice/utils/utils.go GetDeploymentMode): the mode
recorded in status first, then the annotation with the old names and the new, then KServe's
default from its inferenceservice-config ConfigMap; when none is known, a retried RouterError
that says how to name the mode, never a guess. A canary needs revisions (Knative mode): Standard
and ModelMesh are refused."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace
from typing import Any

import pytest

from rollout.errors import ForbiddenError, NotFoundError, RouterError, TemporaryError, UnsupportedRouteError
from rollout.routers.base import Backend, Routes, RouteTarget
from rollout.routers.kserve import (
    DEPLOYMENT_MODE_ANNOTATION,
    KServeRouter,
    default_mode_from_config,
    deployment_mode,
    named_mode,
)

TARGET = RouteTarget("iris", Backend("iris", "iris:v1"), Backend("iris", "iris:v2"))


def isvc(annotation: str | None = None, status: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "iris", "namespace": "models"}
    if annotation is not None:
        meta["annotations"] = {DEPLOYMENT_MODE_ANNOTATION: annotation}
    obj: dict[str, Any] = {"metadata": meta, "spec": {"predictor": {}}}
    if status is not None:
        obj["status"] = {"deploymentMode": status}
    return obj


def config_map(default: object) -> dict[str, Any]:
    return {"data": {"deploy": json.dumps({"defaultDeploymentMode": default})}}


@pytest.mark.parametrize(
    ("annotation", "status", "mode"),
    [
        ("Knative", None, "Knative"),
        ("Serverless", None, "Knative"),  # deprecated name (constants.go LegacyServerless)
        ("Standard", None, "Standard"),
        ("RawDeployment", None, "Standard"),  # deprecated name (LegacyRawDeployment)
        ("ModelMesh", None, "ModelMesh"),
        (None, "Standard", "Standard"),  # KServe recorded it; no annotation needed
        (None, "RawDeployment", "Standard"),  # recorded by an older KServe
        ("Knative", "Standard", "Standard"),  # the status wins, as in KServe
        ("Serverless", "Knative", "Knative"),
    ],
)
def test_the_mode_is_the_status_then_the_annotation_old_names_and_new(
    annotation: str | None, status: str | None, mode: str
) -> None:
    assert deployment_mode(isvc(annotation, status)) == mode


@pytest.mark.parametrize("annotation", [None, "serverless", "Raw"])
def test_no_known_mode_takes_kserves_default_and_without_one_says_how_to_name_it(
    annotation: str | None,
) -> None:
    obj = isvc(annotation)
    assert named_mode(obj) is None
    assert deployment_mode(obj, "Knative") == "Knative"
    assert deployment_mode(obj, "Standard") == "Standard"
    with pytest.raises(RouterError) as caught:
        deployment_mode(obj, None, "ConfigMap kserve/inferenceservice-config: forbidden")
    message = str(caught.value)
    assert isinstance(caught.value, TemporaryError)  # KServe records the mode at its reconcile
    assert "InferenceService models/iris: deployment mode not known" in message
    assert f"Annotate it {DEPLOYMENT_MODE_ANNOTATION}: Knative" in message
    assert "forbidden" in message and "inferenceservice-config" in message
    assert (repr(annotation) in message) if annotation else ("no serving.kserve.io" in message)


def test_a_status_mode_kserve_never_writes_is_refused_not_guessed() -> None:
    with pytest.raises(UnsupportedRouteError, match="'Hybrid', which this router does not know"):
        deployment_mode(isvc("Knative", "Hybrid"), "Knative")


@pytest.mark.parametrize(
    ("deploy", "mode"),
    [
        ('{"defaultDeploymentMode": "Serverless"}', "Knative"),  # KServe's shipped config
        ('{"defaultDeploymentMode": "Standard"}', "Standard"),
        ('{"defaultDeploymentMode": "RawDeployment"}', "Standard"),
        ('{"defaultDeploymentMode": "Knative"}', "Knative"),
        ('{"defaultDeploymentMode": "Edge"}', None),
        ("{}", None),
        ("not json", None),
        (None, None),
    ],
)
def test_kserves_default_from_its_config_map(deploy: str | None, mode: str | None) -> None:
    data = {} if deploy is None else {"deploy": deploy}
    assert default_mode_from_config({"data": data}) == mode


class FakeClient:
    """The slice of KubeClient the kserve router uses, over one InferenceService and, when given,
    KServe's ConfigMap (``forbidden``: reading it is refused, as with the chart's Role)."""

    def __init__(self, obj: dict[str, Any], cm: dict[str, Any] | None = None, forbidden: bool = False):
        self.obj, self.cm, self.forbidden = obj, cm, forbidden
        self.writes: list[dict[str, Any]] = []
        self.reads: list[tuple[str, str]] = []
        self.core = SimpleNamespace(read_namespaced_config_map=self._read_cm)
        self.api_client = SimpleNamespace(sanitize_for_serialization=lambda o: o)

    def _read_cm(self, name: str, namespace: str) -> dict[str, Any]:
        self.reads.append((namespace, name))
        if self.forbidden:
            raise ForbiddenError(f"ConfigMap {namespace}/{name}: forbidden")
        if self.cm is None:
            raise NotFoundError(f"ConfigMap {namespace}/{name} not found")
        return self.cm

    def call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    def get(self, kind: Any, namespace: str, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.obj)

    def patch(self, kind: Any, namespace: str, name: str, body: dict[str, Any]) -> None:
        self.writes.append(body)

    def update(self, kind: Any, namespace: str, name: str, mutate: Any) -> None:
        out = mutate(copy.deepcopy(self.obj))
        if out is not None:
            self.obj = out
            self.writes.append(out)


def router(client: FakeClient) -> KServeRouter:
    return KServeRouter(client, "models", "iris")  # type: ignore[arg-type]


@pytest.mark.parametrize("status", ["Standard", "RawDeployment", "ModelMesh"])
def test_ensure_refuses_an_inference_service_kserve_runs_without_revisions(status: str) -> None:
    """Before, only the annotation was read: an object KServe runs in Standard mode by its
    default (status.deploymentMode, no annotation) was taken for a Knative one."""
    client = FakeClient(isvc(None, status))
    with pytest.raises(UnsupportedRouteError, match="KServe ignores canaryTrafficPercent there"):
        router(client).ensure(TARGET)
    assert client.writes == [] and client.reads == []


def test_ensure_accepts_a_knative_inference_service_and_writes_nothing_to_it() -> None:
    """KServe copies the InferenceService's labels and annotations into the Knative revision
    template: the annotations and managed-by label ensure used to write made a new revision (the
    candidate's pods again, under a new name) and fought Helm over app.kubernetes.io/managed-by."""
    client = FakeClient(isvc("Knative"))
    router(client).ensure(TARGET)
    assert client.reads == [] and client.writes == []


@pytest.mark.parametrize(("default", "accepted"), [("Serverless", True), ("Standard", False)])
def test_an_inference_service_naming_no_mode_runs_in_kserves_default(default: str, accepted: bool) -> None:
    client = FakeClient(isvc(), cm=config_map(default))
    if accepted:
        router(client).ensure(TARGET)
    else:
        with pytest.raises(UnsupportedRouteError, match="Standard mode"):
            router(client).ensure(TARGET)
    assert client.reads == [("kserve", "inferenceservice-config")]


@pytest.mark.parametrize("forbidden", [True, False])
def test_no_mode_and_no_readable_default_is_an_error_naming_the_fix_and_nothing_is_written(
    forbidden: bool,
) -> None:
    """Before, such an object was accepted: canaryTrafficPercent written whatever KServe ran."""
    client = FakeClient(isvc(), forbidden=forbidden)
    with pytest.raises(RouterError, match="deployment mode not known") as caught:
        router(client).ensure(TARGET)
    assert ("forbidden" if forbidden else "not found") in str(caught.value)
    assert not isinstance(caught.value, UnsupportedRouteError)
    assert client.writes == []


def test_set_routes_refuses_a_standard_mode_object_and_writes_nothing() -> None:
    """Before, only ``ensure`` looked: an object KServe came to run in Standard mode (recreated
    under the same name, the controller's router already ensured) got a canaryTrafficPercent
    KServe keeps and ignores, the rollout believing it moved traffic."""
    client = FakeClient(isvc("Knative"))
    r = router(client)
    r.ensure(TARGET)
    r.set_routes(Routes(candidate_weight=10))
    assert client.obj["spec"]["predictor"]["canaryTrafficPercent"] == 10
    client.obj["status"] = {"deploymentMode": "Standard"}
    writes = len(client.writes)
    with pytest.raises(UnsupportedRouteError, match="KServe ignores canaryTrafficPercent there"):
        r.set_routes(Routes(candidate_weight=50))
    assert len(client.writes) == writes and client.obj["spec"]["predictor"]["canaryTrafficPercent"] == 10


@pytest.mark.parametrize(
    ("obj", "written"),
    [
        (isvc("Knative"), 0),  # KServe's rollback: everything to the previous rolled-out revision
        (isvc(None, "Standard"), None),  # never split (ensure refuses it): nothing to undo
        (isvc("ModelMesh"), None),
        (isvc(), 0),  # mode not known: 0 is safe in every mode, and a deletion is not held up
    ],
)
def test_finalize_writes_the_rollback_only_where_kserve_reads_it(
    obj: dict[str, Any], written: int | None
) -> None:
    client = FakeClient(obj, forbidden=True)
    router(client).finalize(TARGET)
    assert client.obj["spec"]["predictor"].get("canaryTrafficPercent") == written
