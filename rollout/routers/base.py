"""The TrafficRouter interface: one small Protocol, one provider module beside it.

A router owns the data plane for one service: which version answers a request. Routes are
declarative (weights, mirror percent, header/cookie match, sticky key); ``set_routes`` makes the
data plane match them and ``get_routes`` reads back what is really applied, so callers can verify.
Who calls it: the local runner and the Kubernetes controller, executing the engine's actions.
Providers: nginx.py (local), kserve.py, istio.py, gateway_api.py, traefik.py (cluster); see registry.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from rollout.spec import HeaderMatch, StickyKey


@dataclass(frozen=True)
class Backend:
    """One version of the service: a name the provider understands, and where it listens if local."""

    name: str  # e.g. "stable" / "candidate", or an InferenceService name
    version: str  # the model tag it serves
    address: str | None = None  # "127.0.0.1:PORT" for the local data plane


@dataclass(frozen=True)
class RouteTarget:
    service: str
    stable: Backend
    candidate: Backend | None = None


@dataclass(frozen=True)
class Routes:
    """What the data plane should do with a request to the service.

    - ``candidate_weight`` percent of (non-matching) requests go to the candidate, the rest to stable;
    - requests matching any of ``match`` go to the candidate regardless of weights;
    - ``mirror_percent`` percent of the requests answered by stable are also sent to the candidate,
      whose answer is discarded (shadow);
    - with ``sticky`` set, the weighted split hashes that header/cookie so a user keeps a version.
    """

    candidate_weight: int = 0
    mirror_percent: int = 0
    match: tuple[HeaderMatch, ...] = ()
    sticky: StickyKey | None = None
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        for name in ("candidate_weight", "mirror_percent"):
            v = getattr(self, name)
            if not 0 <= v <= 100:
                raise ValueError(f"{name} must be between 0 and 100, got {v}")

    @property
    def stable_weight(self) -> int:
        return 100 - self.candidate_weight

    @classmethod
    def all_stable(cls) -> Routes:
        return cls()


@runtime_checkable
class TrafficRouter(Protocol):
    """One provider's data plane for one service."""

    def ensure(self, target: RouteTarget) -> None:
        """Create or verify the routing objects for the target (idempotent)."""

    def set_routes(self, routes: Routes) -> None:
        """Make the data plane match ``routes``. Raises RouterError when it cannot."""

    def get_routes(self) -> Routes:
        """The routes actually applied now."""

    def finalize(self, target: RouteTarget) -> None:
        """Send everything to ``target.stable`` and drop candidate routing (rollback, delete)."""
