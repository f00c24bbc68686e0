"""Router registry: a provider name -> its TrafficRouter. One entry per provider module.

``make_router(provider, **kwargs)`` builds the router; the keyword arguments are the provider's
constructor arguments (cluster routers: ``client``, ``namespace``, ``name`` and, for istio /
gateway-api, ``gateway`` and ``port``). An unknown name is an ``UnknownProviderError``, never a
silent fallback. Modules are imported on first use, so the local mode does not load the
Kubernetes client. Who calls it: the local runner and the controller.
"""

from __future__ import annotations

import importlib
from typing import Any

from rollout.errors import UnknownProviderError
from rollout.routers.base import TrafficRouter

# provider name -> "module:Class"
ROUTERS: dict[str, str] = {
    "kserve": "rollout.routers.kserve:KServeRouter",
    "istio": "rollout.routers.istio:IstioRouter",
    "gateway-api": "rollout.routers.gateway_api:GatewayApiRouter",
}


def make_router(provider: str, **kwargs: Any) -> TrafficRouter:
    """The router for ``provider`` (a RouterProvider value such as "istio"), built with ``kwargs``."""
    name = str(getattr(provider, "value", provider))
    target = ROUTERS.get(name)
    if target is None:
        known = ", ".join(sorted(ROUTERS))
        raise UnknownProviderError(f"unknown router provider {name!r}; known: {known}")
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)(**kwargs)
