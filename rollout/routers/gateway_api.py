"""Gateway API router: the routes of one service as an ``HTTPRoute`` (gateway.networking.k8s.io/v1).

The HTTPRoute has at most two rules:

- a *match rule* (only when routes carry matches): one ``matches`` entry per HeaderMatch (entries
  are ORed): ``Exact`` on the header, or ``RegularExpression`` on the ``Cookie`` header for a
  cookie (see matching.py); its only backend is the candidate;
- a *bucket rule* (only for a sticky split): the sticky key's value ends with one of the
  candidate's characters (buckets.py: a RegularExpression header match) -> the candidate; the
  primary rule then sends everything else to stable;
- the *primary rule* (no header match): ``backendRefs`` to stable and candidate with weights
  (both listed, a weight may be 0) and a ``RequestMirror`` filter with ``percent`` for shadow traffic.

``RequestMirror.percent`` is in Gateway API's standard channel since v1.3.0 (the tests
install v1.4.0). Sticky splits do not use ``sessionPersistence``: it is experimental-channel only
(the standard CRDs refuse it) and implementations may ignore it (Traefik v3.6 does); header
buckets work on any implementation. Backends are Services on ``port``. ``parentRefs`` name the
Gateway when one is given. Who calls it: the controller through ``registry.make_router("gateway-api", ...)``.

Before a route that mirrors (shadow, blue/green preview) is written, the router asks the Gateway's
implementation whether it can: the ``status.supportedFeatures`` its controller publishes on the
Gateway's GatewayClass (GEP-2162) must list ``HTTPRouteRequestMirror`` (and, for a share under 100 %,
``HTTPRouteRequestPercentageMirror``). One that does not is refused (UnsupportedRouteError naming the
class, its controller and the feature) and nothing is written: an implementation without the filter
may fail the whole rule instead (Traefik v3.6 answers every request of such a rule with HTTP 500).
A class that publishes no feature list is trusted; a Gateway or GatewayClass that cannot be read
refuses the mirror too (the chart's Role and ClusterRole grant ``get`` on both).
"""

from __future__ import annotations

import time

from rollout.errors import InvalidObjectError, RolloutError, RouterError, UnsupportedRouteError
from rollout.k8s.client import HTTP_ROUTE, Kind, KubeClient, Obj
from rollout.routers import buckets
from rollout.routers.base import Backend, Routes, RouteTarget
from rollout.routers.matching import (
    MANAGED_BY,
    RouteObjectRouter,
    header_conditions,
    matches_from_headers,
    routed_candidate,
    target_annotations,
)
from rollout.spec import StickyKey

_MATCH_TYPE = {"exact": "Exact", "regex": "RegularExpression"}
GATEWAY = Kind("gateway.networking.k8s.io", "v1", "gateways", "Gateway")
GATEWAY_CLASS = Kind("gateway.networking.k8s.io", "v1", "gatewayclasses", "GatewayClass")
MIRROR = "HTTPRouteRequestMirror"
PERCENTAGE_MIRROR = "HTTPRouteRequestPercentageMirror"
FEATURES_TTL = 60.0  # seconds a GatewayClass's feature list is reused


def features_needed(routes: Routes) -> list[str]:
    """The Gateway API features (GEP-2162 names) ``routes`` need beyond weights and header matches."""
    if not routes.mirror_percent:
        return []
    return [MIRROR] if routes.mirror_percent >= 100 else [MIRROR, PERCENTAGE_MIRROR]


def supported_features(gateway_class: Obj) -> set[str] | None:
    """The features a GatewayClass's controller says it supports; None when it publishes no list.
    (v1.2 wrote plain strings, v1.3+ writes ``{name: ...}`` objects.)"""
    listed = (gateway_class.get("status") or {}).get("supportedFeatures")
    if not listed:
        return None
    return {f["name"] if isinstance(f, dict) else str(f) for f in listed}


def _ref(backend: Backend, port: int, weight: int | None = None) -> Obj:
    ref: Obj = {"name": backend.name, "port": port}
    if weight is not None:
        ref["weight"] = weight
    return ref


def http_route_rules(target: RouteTarget, routes: Routes, port: int = 80) -> list[Obj]:
    """The HTTPRoute ``spec.rules`` for ``routes``. Pure."""
    cand = routed_candidate(target, routes)
    rules: list[Obj] = []
    if routes.match:
        assert cand is not None
        matches = [
            {"headers": [{"type": _MATCH_TYPE[op], "name": name, "value": value}]}
            for name, op, value in header_conditions(routes.match)
        ]
        rules.append({"matches": matches, "backendRefs": [_ref(cand, port, 1)]})
    stable_weight, candidate_weight = routes.stable_weight, routes.candidate_weight
    if routes.sticky is not None:
        assert cand is not None
        name, regex = buckets.condition(routes.sticky, routes.candidate_weight)
        headers = [{"type": "RegularExpression", "name": name, "value": regex}]
        rules.append({"matches": [{"headers": headers}], "backendRefs": [_ref(cand, port, 1)]})
        stable_weight, candidate_weight = 100, 0  # the rest, with the key or without, to stable
    refs = [_ref(target.stable, port, stable_weight)]
    if cand is not None:
        refs.append(_ref(cand, port, candidate_weight))
    primary: Obj = {"backendRefs": refs}
    if routes.mirror_percent:
        assert cand is not None
        primary["filters"] = [
            {
                "type": "RequestMirror",
                "requestMirror": {"backendRef": _ref(cand, port), "percent": routes.mirror_percent},
            }
        ]
    rules.append(primary)
    return rules


def http_route(
    name: str, target: RouteTarget, routes: Routes, gateway: str | None = None, port: int = 80
) -> Obj:
    """A whole HTTPRoute object (without apiVersion/kind, which the client adds)."""
    spec: Obj = {"rules": http_route_rules(target, routes, port)}
    if gateway:
        spec["parentRefs"] = [{"name": gateway}]
    return {
        "metadata": {"name": name, "labels": dict(MANAGED_BY), "annotations": target_annotations(target)},
        "spec": spec,
    }


def _header_conditions(rule: Obj) -> list[Obj]:
    return [h for m in rule.get("matches") or [] for h in m.get("headers") or []]


def _bucket_of(rule: Obj) -> tuple[StickyKey, int] | None:
    conditions = _header_conditions(rule)
    if len(conditions) != 1 or conditions[0].get("type") != "RegularExpression":
        return None
    return buckets.parse(conditions[0]["name"], conditions[0]["value"])


def routes_from_http_route(route: Obj, target: RouteTarget) -> Routes:
    """Read the routes back from an HTTPRoute written by ``http_route`` (server defaults tolerated)."""
    rules = route.get("spec", {}).get("rules") or []
    primary = [r for r in rules if not _header_conditions(r)]
    if len(primary) != 1:
        raise RouterError(
            f"HTTPRoute {route['metadata']['name']} has {len(primary)} rules without header match, expected 1"
        )
    rule = primary[0]
    cand = target.candidate.name if target.candidate else None
    refs = rule.get("backendRefs") or []
    weight = sum(int(r.get("weight", 1)) for r in refs if r["name"] == cand)
    total = sum(int(r.get("weight", 1)) for r in refs)
    candidate_weight = round(100 * weight / total) if total else 0
    mirror = 0
    for f in rule.get("filters") or []:
        rm = f.get("requestMirror") or {}
        if f.get("type") == "RequestMirror" and rm.get("backendRef", {}).get("name") == cand:
            mirror = int(rm.get("percent", 100))
    sticky = None
    matched = []
    for r in rules:
        if not _header_conditions(r):
            continue
        found = _bucket_of(r)
        if found is not None and any(ref["name"] == cand for ref in r.get("backendRefs") or []):
            sticky, candidate_weight = found
        else:
            matched.append(r)
    matches = matches_from_headers(
        (
            h["name"],
            h["value"] if h.get("type", "Exact") == "Exact" else None,
            h["value"] if h.get("type", "Exact") == "RegularExpression" else None,
        )
        for r in matched
        for h in _header_conditions(r)
    )
    return Routes(candidate_weight=candidate_weight, mirror_percent=mirror, match=matches, sticky=sticky)


class GatewayApiRouter(RouteObjectRouter):
    """TrafficRouter over one HTTPRoute in one namespace."""

    kind = HTTP_ROUTE

    def __init__(
        self, client: KubeClient, namespace: str, name: str, gateway: str | None = None, port: int = 80
    ) -> None:
        super().__init__(client, namespace, name)
        self.gateway, self.port = gateway, port
        self._features: tuple[float, str, set[str] | None] | None = None  # (read at, class, features)

    def _class_features(self) -> tuple[str, set[str] | None]:
        """(class and controller, its supported features) of the Gateway this route is attached to."""
        now = time.monotonic()
        if self._features is not None and now - self._features[0] < FEATURES_TTL:
            return self._features[1], self._features[2]
        assert self.gateway is not None
        gw = self.client.get(GATEWAY, self.namespace, self.gateway)
        class_name = str(gw.get("spec", {}).get("gatewayClassName", ""))
        gc = self.client.call(
            f"GatewayClass {class_name}", self.client.custom.get_cluster_custom_object,
            GATEWAY_CLASS.group, GATEWAY_CLASS.version, GATEWAY_CLASS.plural, class_name,
        )  # fmt: skip
        who = f"GatewayClass {class_name} (controller {gc.get('spec', {}).get('controllerName', '?')})"
        self._features = (now, who, supported_features(gc))
        return who, self._features[2]

    def check_supported(self, routes: Routes) -> None:
        """UnsupportedRouteError when the Gateway's implementation lacks a feature ``routes`` need."""
        needed = features_needed(routes)
        if not needed or not self.gateway:
            return
        try:
            who, features = self._class_features()
        except RolloutError as exc:
            raise UnsupportedRouteError(
                f"cannot tell whether Gateway {self.namespace}/{self.gateway} supports {needed[-1]} "
                f"(needed to mirror {routes.mirror_percent}% to the candidate), so nothing was written: {exc}"
            ) from None
        missing = [f for f in needed if features is not None and f not in features]
        if missing:
            raise UnsupportedRouteError(
                f"Gateway {self.namespace}/{self.gateway}: {who} does not support {', '.join(missing)} "
                f"(its status.supportedFeatures), needed to mirror {routes.mirror_percent}% of traffic to "
                "the candidate; nothing was written. Shadow and a blue/green preview with "
                "previewMirrorPercent > 0 need a Gateway API implementation that mirrors; a blue/green "
                "preview with previewMirrorPercent: 0 (header X-Rollout-Preview only) runs anywhere"
            )

    def new_object(self, target: RouteTarget, routes: Routes) -> Obj:
        return http_route(self.name, target, routes, self.gateway, self.port)

    def spec_fields(self, target: RouteTarget, routes: Routes) -> Obj:
        fields: Obj = {"rules": http_route_rules(target, routes, self.port)}
        if self.gateway:
            fields["parentRefs"] = [{"name": self.gateway}]
        return fields

    def read_routes(self, obj: Obj, target: RouteTarget) -> Routes:
        return routes_from_http_route(obj, target)

    def _write(self, target: RouteTarget, routes: Routes) -> None:
        self.check_supported(routes)
        try:
            super()._write(target, routes)
        except InvalidObjectError as exc:
            if routes.mirror_percent:
                raise InvalidObjectError(
                    f"{exc} (RequestMirror.percent needs Gateway API v1.3.0 or later, or its experimental channel)"
                ) from None
            raise
