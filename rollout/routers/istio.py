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

from rollout.errors import NotFoundError, RouterError, UnsupportedRouteError
from rollout.k8s.client import VIRTUAL_SERVICE, KubeClient, Obj
from rollout.routers.base import Backend, Routes, RouteTarget
from rollout.routers.matching import (
    COOKIE_HEADER,
    MANAGED_BY,
    cookie_regex,
    match_from_header,
    normalize_routes,
    target_annotations,
    target_from_annotations,
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
    cand = target.candidate
    if cand is None and (routes.candidate_weight or routes.mirror_percent or routes.match):
        raise RouterError(f"routes send traffic to a candidate but {target.service} has none")
    out: list[Obj] = []
    if routes.match:
        assert cand is not None
        conditions = []
        for m in routes.match:
            if m.header is not None:
                conditions.append({"headers": {m.header.lower(): {"exact": m.value}}})
            else:
                assert m.cookie is not None
                conditions.append({"headers": {COOKIE_HEADER: {"regex": cookie_regex(m.cookie, m.value)}}})
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
    matches = []
    for cond in by_name.get(MATCH_ROUTE, {}).get("match", []):
        for header, rule in cond.get("headers", {}).items():
            m = match_from_header(header, rule.get("exact"), rule.get("regex"))
            if m is not None:
                matches.append(m)
    return Routes(candidate_weight=weight, mirror_percent=mirror, match=tuple(matches))


class IstioRouter:
    """TrafficRouter over one VirtualService in one namespace."""

    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        name: str,
        gateway: str | None = None,
        hosts: list[str] | None = None,
        port: int | None = None,
    ) -> None:
        self.client, self.namespace, self.name = client, namespace, name
        self.gateways = [gateway] if gateway else None
        self.hosts, self.port = hosts, port
        self.target: RouteTarget | None = None

    def _target(self) -> RouteTarget:
        if self.target is not None:
            return self.target
        vs = self.client.get(VIRTUAL_SERVICE, self.namespace, self.name)
        found = target_from_annotations(self.name, vs["metadata"].get("annotations"))
        if found is None:
            raise RouterError(
                f"VirtualService {self.namespace}/{self.name} is not managed yet: call ensure()"
            )
        self.target = found
        return found

    def ensure(self, target: RouteTarget) -> None:
        """Create the VirtualService (all traffic to stable) or adopt the existing one."""
        self.target = target
        try:
            current = self.client.get(VIRTUAL_SERVICE, self.namespace, self.name)
        except NotFoundError:
            body = virtual_service(
                self.name, target, Routes.all_stable(), self.hosts, self.gateways, self.port
            )
            self.client.create(VIRTUAL_SERVICE, self.namespace, body)
            return
        # adopt: keep the live routes if they are ours, else start from all-stable
        try:
            routes = routes_from_virtual_service(current, target)
        except (RouterError, KeyError, TypeError, ValueError):
            routes = Routes.all_stable()
        self._write(target, routes)

    def _write(self, target: RouteTarget, routes: Routes) -> None:
        http = http_routes(target, routes, self.port)

        def mutate(vs: Obj) -> Obj:
            meta = vs["metadata"]
            meta.setdefault("annotations", {}).update(target_annotations(target))
            meta.setdefault("labels", {}).update(MANAGED_BY)
            vs["spec"]["http"] = http
            if self.hosts:
                vs["spec"]["hosts"] = self.hosts
            if self.gateways:
                vs["spec"]["gateways"] = self.gateways
            return vs

        self.client.update(VIRTUAL_SERVICE, self.namespace, self.name, mutate)

    def set_routes(self, routes: Routes) -> None:
        self._write(self._target(), routes)

    def get_routes(self) -> Routes:
        vs = self.client.get(VIRTUAL_SERVICE, self.namespace, self.name)
        return normalize_routes(routes_from_virtual_service(vs, self._target()))

    def finalize(self, target: RouteTarget) -> None:
        """Everything to stable; the candidate stays listed at weight 0 so routes read back cleanly."""
        self.target = target
        self._write(target, Routes.all_stable())
