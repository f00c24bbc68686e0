"""The router registry: a provider name -> its TrafficRouter class. No fallback, ever.

``make_router("nginx", admin_url=..., service=...)`` builds the provider's router with its own
keyword arguments. An unknown name (or a known one whose module is not part of this build) raises
``UnknownProviderError`` naming the providers that exist; unlike Flagger we never fall back to a
default. A new provider is one module beside this file and one line in ``PROVIDERS``.
Who calls it: the local runner and the Kubernetes controller, from ``spec.router.provider``.
"""

from __future__ import annotations

import importlib
from typing import Any

from rollout.errors import UnknownProviderError
from rollout.routers.base import TrafficRouter

# provider name (RouterSpec.provider values) -> "module:Class"
PROVIDERS: dict[str, str] = {
    "nginx": "rollout.routers.nginx:NginxRouter",
    "kserve": "rollout.routers.kserve:KServeRouter",
    "istio": "rollout.routers.istio:IstioRouter",
    "gateway-api": "rollout.routers.gateway_api:GatewayApiRouter",
}


def router_class(provider: str) -> type:
    """The class registered for ``provider``; UnknownProviderError if there is none."""
    name = str(getattr(provider, "value", provider))
    ref = PROVIDERS.get(name)
    if ref is None:
        raise UnknownProviderError(
            f"unknown router provider {name!r}; known providers: {', '.join(sorted(PROVIDERS))}"
        )
    module_name, _, class_name = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, class_name)
    except (ImportError, AttributeError) as exc:
        raise UnknownProviderError(
            f"router provider {name!r} is registered but not available in this build ({ref}: {exc})"
        ) from exc


def make_router(provider: str, **kwargs: Any) -> TrafficRouter:
    """A router of ``provider`` built with the provider's own keyword arguments."""
    router = router_class(provider)(**kwargs)
    if not isinstance(router, TrafficRouter):
        raise UnknownProviderError(f"{PROVIDERS[str(provider)]} does not implement TrafficRouter")
    return router
