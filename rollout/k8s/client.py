"""The only code that talks to the Kubernetes API server: a thin wrapper over the ``kubernetes`` client.

Objects are plain dicts (as on the wire). Every custom-object verb goes through ``_call`` (the
group/version/namespace/plural prefix and our field manager), and every request through ``call``,
which translates the client's exceptions once, at this boundary, into ``rollout.errors`` (as httpx
maps httpcore's):

    404            -> NotFoundError
    409            -> ConflictError        (Temporary: re-read and retry; ``update`` does it for you)
    400, 422       -> InvalidObjectError   (Permanent, carries the server's message)
    401, 403       -> ForbiddenError       (Permanent: the ServiceAccount's Role lacks a verb)
    429, 5xx, I/O  -> ApiUnavailableError  (Temporary)

Writes use ``fieldValidation=Strict`` so that a field the real CRD schema does not know is refused
instead of silently pruned. ``update`` is the optimistic-concurrency loop: get, mutate, replace with
the read ``resourceVersion``, retry on 409. Two core reads serve the controller's check of what the
pods serve (rollout/controller/served.py): a Service's EndpointSlices and a Deployment.
Who calls it: the cluster routers (routers/kserve.py, istio.py, gateway_api.py), the controller
(rollout/controller/) and the cluster CLI commands.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from rollout.errors import (
    ApiUnavailableError,
    ConflictError,
    ForbiddenError,
    InvalidObjectError,
    NotFoundError,
    RolloutError,
    UsageError,
    excerpt,
)
from rollout.spec import API_GROUP, KIND

Obj = dict[str, Any]
FIELD_MANAGER = "bento-rollout"


@dataclass(frozen=True)
class Kind:
    """A namespaced custom resource type, addressed the way the API server routes it."""

    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


INFERENCE_SERVICE = Kind("serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService")
VIRTUAL_SERVICE = Kind("networking.istio.io", "v1", "virtualservices", "VirtualService")
HTTP_ROUTE = Kind("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute")
MODEL_ROLLOUT = Kind(API_GROUP, "v1alpha1", "modelrollouts", KIND)


def _server_message(exc: ApiException) -> str:
    """The ``message`` of the server's Status object, or the raw body."""
    try:
        body = json.loads(exc.body or "")
        return str(body.get("message") or exc.body or exc.reason)
    except (ValueError, AttributeError):
        return str(exc.body or exc.reason or "no details")


def translate(exc: Exception, what: str) -> RolloutError:
    """Map a kubernetes-client / urllib3 exception to the project's error for ``what`` (a description)."""
    if isinstance(exc, ApiException):
        status = exc.status or 0
        msg = _server_message(exc)
        if status == 404:
            return NotFoundError(f"{what}: not found ({msg})")
        if status == 409:
            return ConflictError(f"{what}: changed by someone else since it was read, retry ({msg})")
        if status in (400, 422):
            return InvalidObjectError(f"{what}: rejected by the API server: {msg}")
        if status in (401, 403):
            return ForbiddenError(f"{what}: forbidden; grant the verb in the controller's Role ({msg})")
        if status == 429 or status >= 500 or status == 0:
            delay = 1.0
            retry_after = (exc.headers or {}).get("Retry-After") if exc.headers else None
            if retry_after and str(retry_after).isdigit():
                delay = float(retry_after)
            return ApiUnavailableError(f"{what}: API server answered {status}: {msg}", delay=delay)
        return InvalidObjectError(f"{what}: API server answered {status}: {msg}")
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
        return ApiUnavailableError(f"{what}: cannot reach the Kubernetes API server: {exc}", delay=2.0)
    raise exc


class KubeClient:
    """Typed-enough access to custom objects, status subresources and Events, in dicts."""

    def __init__(self, api_client: k8s.ApiClient, field_manager: str = FIELD_MANAGER) -> None:
        self.api_client = api_client
        self.custom = k8s.CustomObjectsApi(api_client)
        self.core = k8s.CoreV1Api(api_client)
        self.discovery = k8s.DiscoveryV1Api(api_client)
        self.apps = k8s.AppsV1Api(api_client)
        self.field_manager = field_manager

    # --- construction ------------------------------------------------------------------------------

    @classmethod
    def from_kubeconfig(cls, path: str | None = None, context: str | None = None) -> KubeClient:
        """From a kubeconfig file (default: $KUBECONFIG or ~/.kube/config)."""
        try:
            api = k8s_config.new_client_from_config(config_file=path, context=context)
        except (k8s_config.ConfigException, OSError, TypeError) as exc:
            raise UsageError(f"cannot load kubeconfig {path or '(default)'}: {exc}") from None
        return cls(api)

    @classmethod
    def in_cluster(cls) -> KubeClient:
        cfg = k8s.Configuration()
        k8s_config.load_incluster_config(client_configuration=cfg)
        return cls(k8s.ApiClient(cfg))

    @classmethod
    def auto(cls, kubeconfig: str | None = None, context: str | None = None) -> KubeClient:
        """In-cluster credentials when running in a pod and no kubeconfig is given, else kubeconfig."""
        if kubeconfig is None and context is None:
            try:
                return cls.in_cluster()
            except k8s_config.ConfigException:
                pass
        return cls.from_kubeconfig(kubeconfig, context)

    def close(self) -> None:
        self.api_client.close()

    # --- the boundary ------------------------------------------------------------------------------

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("_request_timeout", 30)
        try:
            return fn(*args, **kwargs)
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise translate(exc, what) from None

    @staticmethod
    def _what(kind: Kind, namespace: str, name: str | None) -> str:
        return f"{kind.kind} {namespace}/{name or '(new)'}"

    # --- custom objects ----------------------------------------------------------------------------

    def _call(
        self,
        what: str,
        fn: Callable[..., Any],
        kind: Kind,
        namespace: str,
        *args: Any,
        manager: bool = False,
        strict: bool = False,
        **kwargs: Any,
    ) -> Any:
        """One custom-object request ``fn(group, version, namespace, plural, *args)`` through ``call``
        (errors translated there). ``manager``: a write by our field manager; ``strict``: also
        ``fieldValidation=Strict``."""
        if manager or strict:
            kwargs["field_manager"] = self.field_manager
        if strict:
            kwargs["field_validation"] = "Strict"
        return self.call(what, fn, kind.group, kind.version, namespace, kind.plural, *args, **kwargs)

    def get(self, kind: Kind, namespace: str, name: str) -> Obj:
        what = self._what(kind, namespace, name)
        return self._call(what, self.custom.get_namespaced_custom_object, kind, namespace, name)

    def list(self, kind: Kind, namespace: str, label_selector: str | None = None) -> list[Obj]:
        out = self._call(
            f"list {kind.plural} in {namespace}",
            self.custom.list_namespaced_custom_object,
            kind,
            namespace,
            label_selector=label_selector,
        )
        return list(out.get("items", []))

    def create(self, kind: Kind, namespace: str, body: Obj) -> Obj:
        body = {"apiVersion": kind.api_version, "kind": kind.kind, **body}
        what = self._what(kind, namespace, body.get("metadata", {}).get("name"))
        fn = self.custom.create_namespaced_custom_object
        return self._call(what, fn, kind, namespace, body, strict=True)

    def replace(self, kind: Kind, namespace: str, body: Obj) -> Obj:
        """PUT the whole object; ``metadata.resourceVersion`` in ``body`` makes it conditional (409)."""
        name = body["metadata"]["name"]
        fn = self.custom.replace_namespaced_custom_object
        return self._call(self._what(kind, namespace, name), fn, kind, namespace, name, body, strict=True)

    def patch(
        self, kind: Kind, namespace: str, name: str, patch: Obj, resource_version: str | None = None
    ) -> Obj:
        """JSON merge patch (lists are replaced whole); with ``resource_version`` it is conditional."""
        if resource_version is not None:
            patch = {**patch, "metadata": {**patch.get("metadata", {}), "resourceVersion": resource_version}}
        return self._patch(kind, namespace, name, patch, "application/merge-patch+json")

    def apply(self, kind: Kind, namespace: str, body: Obj, force: bool = True) -> Obj:
        """Server-side apply: we own the fields we send; ``force`` takes them from other managers."""
        body = {"apiVersion": kind.api_version, "kind": kind.kind, **body}
        return self._patch(
            kind, namespace, body["metadata"]["name"], body, "application/apply-patch+yaml", force=force
        )

    def _patch(self, kind: Kind, namespace: str, name: str, body: Obj, content_type: str, **kw: Any) -> Obj:
        fn = self.custom.patch_namespaced_custom_object
        what = self._what(kind, namespace, name)
        return self._call(
            what, fn, kind, namespace, name, body, strict=True, _content_type=content_type, **kw
        )

    def delete(self, kind: Kind, namespace: str, name: str) -> None:
        what = self._what(kind, namespace, name)
        self._call(what, self.custom.delete_namespaced_custom_object, kind, namespace, name)

    def replace_status(self, kind: Kind, namespace: str, body: Obj) -> Obj:
        """PUT the status subresource; conditional on ``metadata.resourceVersion`` in ``body``."""
        name = body["metadata"]["name"]
        what = self._what(kind, namespace, name) + " status"
        fn = self.custom.replace_namespaced_custom_object_status
        return self._call(what, fn, kind, namespace, name, body, manager=True)

    def patch_status(
        self, kind: Kind, namespace: str, name: str, status: Obj, resource_version: str | None = None
    ) -> Obj:
        patch: Obj = {"status": status}
        if resource_version is not None:
            patch["metadata"] = {"resourceVersion": resource_version}
        return self._call(
            self._what(kind, namespace, name) + " status",
            self.custom.patch_namespaced_custom_object_status,
            kind,
            namespace,
            name,
            patch,
            manager=True,
            _content_type="application/merge-patch+json",
        )

    def update(
        self,
        kind: Kind,
        namespace: str,
        name: str,
        mutate: Callable[[Obj], Obj | None],
        status: bool = False,
        attempts: int = 8,
    ) -> Obj:
        """Read, ``mutate`` (returns the new object, or None for no change), replace conditionally.

        On a 409 the object is read again and ``mutate`` runs again on the fresh copy, so a
        concurrent writer's change is never overwritten. ``status=True`` writes the status subresource.
        """
        last: ConflictError | None = None
        for attempt in range(attempts):
            current = self.get(kind, namespace, name)
            wanted = mutate(json.loads(json.dumps(current)))
            if wanted is None:
                return current
            wanted.setdefault("metadata", {})["resourceVersion"] = current["metadata"]["resourceVersion"]
            try:
                if status:
                    return self.replace_status(kind, namespace, wanted)
                return self.replace(kind, namespace, wanted)
            except ConflictError as exc:
                last = exc
                time.sleep(min(0.05 * 2**attempt, 1.0))
        assert last is not None
        raise last

    # --- core --------------------------------------------------------------------------------------

    def emit_event(
        self, involved: Obj, reason: str, message: str, type_: str = "Normal", component: str = FIELD_MANAGER
    ) -> None:
        """Record a core/v1 Event about ``involved`` (any object dict with apiVersion/kind/metadata)."""
        meta = involved["metadata"]
        now = datetime.now(UTC)
        event = k8s.CoreV1Event(
            metadata=k8s.V1ObjectMeta(
                name=f"{meta['name']}.{uuid.uuid4().hex[:12]}", namespace=meta["namespace"]
            ),
            involved_object=k8s.V1ObjectReference(
                api_version=involved.get("apiVersion"),
                kind=involved.get("kind"),
                name=meta["name"],
                namespace=meta["namespace"],
                uid=meta.get("uid"),
                resource_version=meta.get("resourceVersion"),
            ),
            reason=reason,
            message=excerpt(message, 1024),  # one line of printable ASCII, whoever wrote it
            type=type_,
            source=k8s.V1EventSource(component=component),
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            reporting_component=component,
            reporting_instance=component,
        )
        self.call(
            f"Event {reason} on {meta['name']}", self.core.create_namespaced_event, meta["namespace"], event
        )

    def list_events(self, namespace: str, name: str | None = None) -> list[Obj]:
        selector = f"involvedObject.name={name}" if name else None
        out = self.call(
            f"list events in {namespace}",
            self.core.list_namespaced_event,
            namespace,
            field_selector=selector,
        )
        return [self.api_client.sanitize_for_serialization(e) for e in out.items]

    # --- what runs behind a Service (read only) ----------------------------------------------------

    def list_endpoint_slices(self, namespace: str, service: str) -> list[Obj]:
        """The EndpointSlices of Service ``service`` (label ``kubernetes.io/service-name``), as dicts:
        pod addresses, their Ready conditions and the target ports."""
        out = self.call(
            f"list EndpointSlices of Service {namespace}/{service}",
            self.discovery.list_namespaced_endpoint_slice,
            namespace,
            label_selector=f"kubernetes.io/service-name={service}",
            _request_timeout=10,
        )
        return [self.api_client.sanitize_for_serialization(s) for s in out.items]

    def get_deployment(self, namespace: str, name: str) -> Obj:
        out = self.call(
            f"Deployment {namespace}/{name}", self.apps.read_namespaced_deployment, name, namespace,
            _request_timeout=10,
        )  # fmt: skip
        return dict(self.api_client.sanitize_for_serialization(out))
