"""The router registry: a provider name -> its TrafficRouter class. No fallback, ever.

``make_router("nginx", admin_url=..., service=...)`` builds the provider's router with its own
keyword arguments. An unknown name (or a known one whose module is not part of this build) raises
``UnknownProviderError`` naming the providers that exist; unlike Flagger we never fall back to a
default. A new provider is one module beside this file, one loader and one line in ``PROVIDERS``.
Who calls it: the local runner and the Kubernetes controller, from ``spec.router.provider``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rollout.errors import UnknownProviderError
from rollout.routers.base import TrafficRouter

# Each provider's module is imported on first use (the CLI stays light), by a plain import
# statement that the import linter sees (pyproject.toml's contracts), not a string.


def _nginx() -> type:
    from rollout.routers.nginx import NginxRouter

    return NginxRouter


def _kserve() -> type:
    from rollout.routers.kserve import KServeRouter

    return KServeRouter


def _istio() -> type:
    from rollout.routers.istio import IstioRouter

    return IstioRouter


def _gateway_api() -> type:
    from rollout.routers.gateway_api import GatewayApiRouter

    return GatewayApiRouter


def _traefik() -> type:
    from rollout.routers.traefik import TraefikRouter

    return TraefikRouter


# provider name (RouterSpec.provider values) -> its router class, loaded on first use
PROVIDERS: dict[str, Callable[[], type]] = {
    "nginx": _nginx,
    "kserve": _kserve,
    "istio": _istio,
    "gateway-api": _gateway_api,
    "traefik": _traefik,
}


def router_class(provider: str) -> type:
    """The class registered for ``provider``; UnknownProviderError if there is none."""
    name = str(getattr(provider, "value", provider))
    load = PROVIDERS.get(name)
    if load is None:
        raise UnknownProviderError(
            f"unknown router provider {name!r}; known providers: {', '.join(sorted(PROVIDERS))}"
        )
    try:
        return load()
    except ImportError as exc:
        raise UnknownProviderError(
            f"router provider {name!r} is registered but not available in this build: {exc}"
        ) from exc


def make_router(provider: str, **kwargs: Any) -> TrafficRouter:
    """A router of ``provider`` built with the provider's own keyword arguments."""
    router = router_class(provider)(**kwargs)
    if not isinstance(router, TrafficRouter):
        raise UnknownProviderError(
            f"{type(router).__name__} (provider {provider!r}) does not implement TrafficRouter"
        )
    return router
