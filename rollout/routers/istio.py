"""Istio router: the routes of one service as an Istio ``VirtualService`` (networking.istio.io/v1).

The VirtualService has at most two HTTP routes, both named so they can be read back:

- ``candidate-match`` (only when routes carry matches): requests whose header equals a value, or
  whose ``Cookie`` header carries ``name=value`` (an anchored RE2 regex, see matching.py), go to
  the candidate host;
- ``primary``: the weighted split between the stable and candidate hosts (both listed, weights sum
  to 100, a weight may be 0), plus ``mirror`` + ``mirrorPercentage`` for shadow traffic.

Sticky splits are not supported and raise ``UnsupportedRouteError``: Istio chooses the weighted
destination per request, and a DestinationRule's ``consistentHash`` only balances the endpoints
*inside* the chosen destination, so it cannot keep a user on one version. Use a header or cookie
match (A/B by cohort) instead. The object is created by ``ensure`` if absent; an existing one
(e.g. from the Helm chart) is taken over: its ``http`` routes are replaced, hosts and gateways kept.
Who calls it: the controller through ``registry.make_router("istio", ...)``.
"""

from __future__ import annotations

from typing import Any

from rollout.errors import RouterError, UnsupportedRouteError
from rollout.k8s.client import VIRTUAL_SERVICE, KubeClient, Obj
from rollout.routers.base import Backend, Routes, RouteTarget
from rollout.routers.matching import (
    MANAGED_BY,
    RouteObjectRouter,
    header_conditions,
    matches_from_headers,
    routed_candidate,
    target_annotations,
)

MATCH_ROUTE = "candidate-match"
PRIMARY_ROUTE = "primary"


def _destination(backend: Backend, port: int | None) -> dict[str, Any]:
    dest: dict[str, Any] = {"host": backend.name}
    if port is not None:
        dest["port"] = {"number": port}
    return dest


def http_routes(target: RouteTarget, routes: Routes, port: int | None = None) -> list[Obj]:
    """The VirtualService ``spec.http`` for ``routes``. Pure; raises UnsupportedRouteError."""
    if routes.sticky is not None:
        raise UnsupportedRouteError(
            "Istio cannot keep a user on one version of a weighted split (consistentHash balances "
            "endpoints inside one destination, after the weighted choice); use a header or cookie match"
        )
    cand = routed_candidate(target, routes)
    out: list[Obj] = []
    if routes.match:
        assert cand is not None
        conditions = [{"headers": {name: {op: value}}} for name, op, value in header_conditions(routes.match)]
        out.append(
            {"name": MATCH_ROUTE, "match": conditions, "route": [{"destination": _destination(cand, port)}]}
        )
    split = [{"destination": _destination(target.stable, port), "weight": routes.stable_weight}]
    if cand is not None:
        split.append({"destination": _destination(cand, port), "weight": routes.candidate_weight})
    primary: Obj = {"name": PRIMARY_ROUTE, "route": split}
    if routes.mirror_percent:
        assert cand is not None
        primary["mirror"] = _destination(cand, port)
        primary["mirrorPercentage"] = {"value": float(routes.mirror_percent)}
    out.append(primary)
    return out


def virtual_service(
    name: str,
    target: RouteTarget,
    routes: Routes,
    hosts: list[str] | None = None,
    gateways: list[str] | None = None,
    port: int | None = None,
) -> Obj:
    """A whole VirtualService object (without apiVersion/kind, which the client adds)."""
    spec: Obj = {"hosts": hosts or [target.service], "http": http_routes(target, routes, port)}
    if gateways:
        spec["gateways"] = gateways
    return {
        "metadata": {"name": name, "labels": dict(MANAGED_BY), "annotations": target_annotations(target)},
        "spec": spec,
    }


def routes_from_virtual_service(vs: Obj, target: RouteTarget) -> Routes:
    """Read the routes back from a VirtualService written by ``virtual_service``."""
    http = vs.get("spec", {}).get("http") or []
    by_name = {r.get("name"): r for r in http}
    primary = by_name.get(PRIMARY_ROUTE)
    if primary is None:
        raise RouterError(f"VirtualService {vs['metadata']['name']} has no '{PRIMARY_ROUTE}' route")
    cand_host = target.candidate.name if target.candidate else None
    weight = sum(
        int(d.get("weight", 0 if len(primary["route"]) > 1 else 100))
        for d in primary.get("route", [])
        if d["destination"]["host"] == cand_host
    )
    mirror = 0
    if cand_host is not None and primary.get("mirror", {}).get("host") == cand_host:
        mirror = round(float(primary.get("mirrorPercentage", {}).get("value", 100.0)))
    matches = matches_from_headers(
        (header, rule.get("exact"), rule.get("regex"))
        for cond in by_name.get(MATCH_ROUTE, {}).get("match", [])
        for header, rule in cond.get("headers", {}).items()
    )
    return Routes(candidate_weight=weight, mirror_percent=mirror, match=matches)


class IstioRouter(RouteObjectRouter):
    """TrafficRouter over one VirtualService in one namespace."""

    kind = VIRTUAL_SERVICE

    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        name: str,
        gateway: str | None = None,
        hosts: list[str] | None = None,
        port: int | None = None,
    ) -> None:
        super().__init__(client, namespace, name)
        self.gateways = [gateway] if gateway else None
        self.hosts, self.port = hosts, port

    def new_object(self, target: RouteTarget, routes: Routes) -> Obj:
        return virtual_service(self.name, target, routes, self.hosts, self.gateways, self.port)

    def spec_fields(self, target: RouteTarget, routes: Routes) -> Obj:
        fields: Obj = {"http": http_routes(target, routes, self.port)}
        if self.hosts:
            fields["hosts"] = self.hosts
        if self.gateways:
            fields["gateways"] = self.gateways
        return fields

    def read_routes(self, obj: Obj, target: RouteTarget) -> Routes:
        return routes_from_virtual_service(obj, target)
