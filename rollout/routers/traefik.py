"""Traefik router: the routes of one service as a ``TraefikService`` (traefik.io/v1alpha1), the
object of Traefik's own Kubernetes CRD provider (``--providers.kubernetescrd``).

Traefik's Gateway API provider has no ``RequestMirror`` (v3.6, v3.7: a rule with one answers 500),
but its CRD provider mirrors: a TraefikService is either

- ``weighted``: a weighted round robin over the stable and candidate predictor Services. A version
  at weight 0 is left out, not listed at 0: Traefik's CRD provider refuses the whole TraefikService
  when one Service it names does not exist (``kubernetes service not found``: the candidate's
  predictor before KServe made it) or, unless Traefik runs with ``allowEmptyServices``, has no
  ready endpoint, and every request of the IngressRoute would fail; a version left out reads back
  as weight 0;
- ``mirroring``: a main service that answers every request (here: stable's predictor) and mirrors
  with a ``percent`` (here: the candidate's predictor), whose answers Traefik discards. The copy is
  sent after the main service answered, with the same headers, so an ``X-Request-ID`` the client
  sent reaches both versions and the join store compares their answers (bentos/redis_join.py).
  Traefik generates no request id: a request without one gets a different id from each server,
  and is never compared.

An IngressRoute (the chart's, ``routing.mode: traefik``) sends the users' requests to this
TraefikService; this router writes only the TraefikService. What it cannot express is refused with
UnsupportedRouteError before anything is written, never approximated:

- header or cookie matches (a blue/green preview header, an A/B cohort): a TraefikService has no
  match; matches are IngressRoute rules;
- sticky splits on the user's own header or cookie: Traefik's WRR stickiness is a cookie Traefik
  itself sets on the first answer, not a key the caller chooses;
- a mirror together with candidate weight (one TraefikService is weighted or mirroring, not both;
  the controller's failover asks for it when stable has no Ready pod during a shadow, and the
  rollout then holds with this message while stable is down).

Who calls it: the controller through ``registry.make_router("traefik", ...)``.
"""

from __future__ import annotations

from rollout.errors import RouterError, UnsupportedRouteError
from rollout.k8s.client import Kind, KubeClient, Obj
from rollout.routers.base import Backend, Routes, RouteTarget
from rollout.routers.matching import MANAGED_BY, RouteObjectRouter, routed_candidate, target_annotations

TRAEFIK_SERVICE = Kind("traefik.io", "v1alpha1", "traefikservices", "TraefikService")


def unsupported(routes: Routes, where: str) -> str | None:
    """Why a TraefikService cannot express ``routes`` (None: it can). Pure."""
    if routes.match:
        return (
            f"{where}: Traefik's CRD provider cannot match headers or cookies in a TraefikService "
            "(a weighted or mirroring service has no match; matches are IngressRoute rules, and the "
            "IngressRoute is the chart's), so a blue/green preview header or an A/B cohort match "
            "cannot be routed; use router.provider gateway-api or istio for those; nothing was written"
        )
    if routes.sticky is not None:
        return (
            f"{where}: Traefik's CRD provider cannot keep users on a version by their own header or "
            "cookie (a weighted TraefikService's stickiness is a cookie Traefik sets itself on the "
            "first answer); use router.provider gateway-api for a sticky split; nothing was written"
        )
    if routes.mirror_percent and routes.candidate_weight:
        return (
            f"{where}: one TraefikService is weighted or mirroring, not both, so {routes.mirror_percent}% "
            f"mirrored with {routes.candidate_weight}% of users on the candidate cannot be written; "
            "nothing was written"
        )
    return None


def _ref(backend: Backend, port: int) -> Obj:
    return {"name": backend.name, "port": port}


def traefik_service_spec(target: RouteTarget, routes: Routes, port: int = 80, where: str = "") -> Obj:
    """The TraefikService ``spec`` for ``routes``: ``weighted`` or ``mirroring``. Pure; raises
    UnsupportedRouteError for what it cannot express (module doc)."""
    cand = routed_candidate(target, routes)
    why = unsupported(routes, where or f"TraefikService {target.service}")
    if why:
        raise UnsupportedRouteError(why)
    if routes.mirror_percent:
        assert cand is not None
        mirror = {**_ref(cand, port), "percent": routes.mirror_percent}
        return {"mirroring": {**_ref(target.stable, port), "mirrorBody": True, "mirrors": [mirror]}}
    weights = [(target.stable, routes.stable_weight), (cand, routes.candidate_weight)]
    services = [{**_ref(b, port), "weight": w} for b, w in weights if b is not None and w > 0]
    return {"weighted": {"services": services}}


def traefik_service(name: str, target: RouteTarget, routes: Routes, port: int = 80) -> Obj:
    """A whole TraefikService object (without apiVersion/kind, which the client adds)."""
    return {
        "metadata": {"name": name, "labels": dict(MANAGED_BY), "annotations": target_annotations(target)},
        "spec": traefik_service_spec(target, routes, port, f"TraefikService {name}"),
    }


def routes_from_traefik_service(obj: Obj, target: RouteTarget) -> Routes:
    """Read the routes back from a TraefikService written by ``traefik_service`` (an omitted weight
    is Traefik's default, 1)."""
    name = obj.get("metadata", {}).get("name", "?")
    spec = obj.get("spec") or {}
    cand = target.candidate.name if target.candidate else None
    if spec.get("mirroring"):
        m = spec["mirroring"]
        if m.get("kind", "Service") != "Service" or m.get("name") != target.stable.name:
            raise RouterError(
                f"TraefikService {name} mirrors from {m.get('kind', 'Service')} {m.get('name')}, "
                f"not stable's {target.stable.name}"
            )
        percent = sum(int(x.get("percent", 0)) for x in m.get("mirrors") or [] if x.get("name") == cand)
        return Routes(mirror_percent=min(percent, 100))
    if spec.get("weighted"):
        services = spec["weighted"].get("services") or []
        known = {target.stable.name, cand}
        strangers = [s.get("name") for s in services if s.get("name") not in known]
        if strangers:
            raise RouterError(f"TraefikService {name} also balances to {strangers}, not stable or candidate")
        weight = sum(int(s.get("weight", 1)) for s in services if s.get("name") == cand)
        total = sum(int(s.get("weight", 1)) for s in services)
        return Routes(candidate_weight=round(100 * weight / total) if total else 0)
    raise RouterError(
        f"TraefikService {name} is neither weighted nor mirroring (has {sorted(spec) or 'no spec'})"
    )


class TraefikRouter(RouteObjectRouter):
    """TrafficRouter over one TraefikService in one namespace."""

    kind = TRAEFIK_SERVICE
    owned_spec_keys = ("weighted", "mirroring", "highestRandomWeight")

    def __init__(self, client: KubeClient, namespace: str, name: str, port: int = 80) -> None:
        super().__init__(client, namespace, name)
        self.port = port

    def _where(self) -> str:
        return f"TraefikService {self.namespace}/{self.name}"

    def new_object(self, target: RouteTarget, routes: Routes) -> Obj:
        return traefik_service(self.name, target, routes, self.port)

    def spec_fields(self, target: RouteTarget, routes: Routes) -> Obj:
        return traefik_service_spec(target, routes, self.port, self._where())

    def read_routes(self, obj: Obj, target: RouteTarget) -> Routes:
        return routes_from_traefik_service(obj, target)
