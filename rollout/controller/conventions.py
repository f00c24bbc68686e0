"""Cluster conventions: the names the Helm chart gives what a ModelRollout routes between.

InferenceServices are ``<service>`` (or ``spec.router.name``; kserve routing, one object whose
latest revision is the candidate) or ``<service>-stable`` / ``<service>-candidate`` (KServe's
Standard mode: istio, gateway-api, traefik, ``STANDARD_PROVIDERS``), whose predictor Services ``<isvc>-predictor`` (port 80) are the route backends; the
routing object is named ``spec.router.name`` or ``<service>``.
Who calls it: rollout.controller.reconciler (and through it handlers and tests).
"""

from __future__ import annotations

from typing import Any

from rollout.k8s.client import KubeClient, Obj
from rollout.routers.base import Backend, RouteTarget, TrafficRouter
from rollout.routers.registry import make_router
from rollout.spec import RolloutSpec

BACKEND_PORT = 80
# the routers over two Standard-mode InferenceServices' predictor Services: the controller asks their
# pods what they serve, fails over between them and hands a promoted model off to stable
STANDARD_PROVIDERS = frozenset({"istio", "gateway-api", "traefik"})
MODEL_SERVER = "kserve-container"  # the chart's name for the Bento container of a predictor


def server_env(isvc: Obj) -> dict[str, str]:
    """The environment of an InferenceService's model server container (``kserve-container``,
    else its first container): ``BENTO_MODEL_TAG`` says which model it serves. Pure."""
    containers = ((isvc.get("spec") or {}).get("predictor") or {}).get("containers") or []
    servers = [c for c in containers if isinstance(c, dict)] if isinstance(containers, list) else []
    server = next((c for c in servers if c.get("name") == MODEL_SERVER), servers[0] if servers else {})
    return {
        str(e["name"]): str(e.get("value") or "")
        for e in server.get("env") or []
        if isinstance(e, dict) and e.get("name")
    }


def predictor(isvc: str) -> str:
    """The predictor Service (and, in Standard mode, Deployment) KServe makes for InferenceService ``isvc``."""
    return f"{isvc}-predictor"


def isvc_name(spec: RolloutSpec, role: str) -> str:
    if spec.router.provider.value == "kserve":
        return spec.router.name or spec.service
    return f"{spec.service}-{role}"


def route_target(spec: RolloutSpec) -> RouteTarget:
    """Backends of the rollout, named as the chart names the predictor Services."""
    if spec.router.provider.value == "kserve":
        name = isvc_name(spec, "candidate")
        return RouteTarget(
            spec.service, Backend(name, spec.stable.model), Backend(name, spec.candidate.model)
        )
    return RouteTarget(
        spec.service,
        Backend(predictor(isvc_name(spec, "stable")), spec.stable.model),
        Backend(predictor(isvc_name(spec, "candidate")), spec.candidate.model),
    )


def default_router(spec: RolloutSpec, namespace: str, client: KubeClient) -> TrafficRouter:
    provider = spec.router.provider.value
    kwargs: dict[str, Any] = {
        "client": client,
        "namespace": namespace,
        "name": spec.router.name or spec.service,
    }
    if provider in ("istio", "gateway-api"):
        kwargs.update(gateway=spec.router.gateway, port=BACKEND_PORT)
    elif provider == "traefik":
        kwargs.update(port=BACKEND_PORT)
    return make_router(provider, **kwargs)
