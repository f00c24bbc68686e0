"""Helpers shared by the cluster routers (istio.py, gateway_api.py, traefik.py, kserve.py): cookie matches as
header regexes, the annotations that remember which backend is stable and which is candidate, and
``RouteObjectRouter``, the TrafficRouter over one annotated routing object that istio.py,
gateway_api.py and traefik.py all are (they only say how their object is built and read back).

Istio and Gateway API can match a header's value exactly but have no cookie match, so a cookie
match ``name=value`` becomes a regular expression on the ``Cookie`` header. Envoy evaluates it with
RE2 and requires the whole header to match, so the expression is anchored and allows other cookies
around ours. ``cookie_regex`` and ``parse_cookie_regex`` are inverses, so routes read back from the
API object compare equal to the routes that were set.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import replace

from rollout.errors import NotFoundError, RouterError
from rollout.k8s.client import Kind, KubeClient, Obj
from rollout.routers.base import Backend, Routes, RouteTarget
from rollout.spec import HeaderMatch, StickyKey

COOKIE_HEADER = "cookie"
_PREFIX = r"^(.*;\s*)?"
_SUFFIX = r"(;.*)?$"
_PARSE = re.compile(r"^\^\(\.\*;\\s\*\)\?(?P<name>(?:[A-Za-z0-9]|\\-)+)=(?P<value>.*)\(;\.\*\)\?\$$")
_UNESCAPE = re.compile(r"\\(.)")

ANNOTATION_PREFIX = "bento-rollout.io/"
STABLE_ANNOTATION = ANNOTATION_PREFIX + "stable"
CANDIDATE_ANNOTATION = ANNOTATION_PREFIX + "candidate"
MANAGED_BY = {"app.kubernetes.io/managed-by": "bento-rollout"}


def cookie_regex(name: str, value: str) -> str:
    """A full-match RE2 expression for a Cookie header that carries ``name=value``."""
    return f"{_PREFIX}{re.escape(name)}={re.escape(value)}{_SUFFIX}"


def parse_cookie_regex(regex: str) -> tuple[str, str] | None:
    """(name, value) if ``regex`` was made by ``cookie_regex``, else None."""
    m = _PARSE.match(regex)
    if m is None:
        return None
    return _UNESCAPE.sub(r"\1", m.group("name")), _UNESCAPE.sub(r"\1", m.group("value"))


def match_from_header(name: str, exact: str | None, regex: str | None) -> HeaderMatch | None:
    """Turn one header condition read from an API object back into a HeaderMatch."""
    if exact is not None and name.lower() != COOKIE_HEADER:
        return HeaderMatch(header=name, value=exact)
    if regex is not None and name.lower() == COOKIE_HEADER and (parsed := parse_cookie_regex(regex)):
        return HeaderMatch(cookie=parsed[0], value=parsed[1])
    return None


def routed_candidate(target: RouteTarget, routes: Routes) -> Backend | None:
    """The target's candidate; RouterError when ``routes`` send it traffic but there is none."""
    if target.candidate is None and (routes.candidate_weight or routes.mirror_percent or routes.match):
        raise RouterError(f"routes send traffic to a candidate but {target.service} has none")
    return target.candidate


def header_conditions(match: Iterable[HeaderMatch]) -> list[tuple[str, str, str]]:
    """(header name, "exact" | "regex", value) per match, as the cluster routers write them: a header
    match is an exact, lower-cased header; a cookie match a regex on the Cookie header. The inverse of
    ``matches_from_headers``."""
    out = []
    for m in match:
        if m.header is not None:
            out.append((m.header.lower(), "exact", m.value))
        else:
            assert m.cookie is not None
            out.append((COOKIE_HEADER, "regex", cookie_regex(m.cookie, m.value)))
    return out


def matches_from_headers(conditions: Iterable[tuple[str, str | None, str | None]]) -> tuple[HeaderMatch, ...]:
    """HeaderMatches from (header name, exact value, regex) conditions read back from an API object;
    conditions that are not ours are skipped."""
    found = (match_from_header(name, exact, regex) for name, exact, regex in conditions)
    return tuple(m for m in found if m is not None)


def normalize_routes(routes: Routes) -> Routes:
    """``routes`` with header names lower-cased, as the cluster routers write them and read them back
    (HTTP header names are case-insensitive; Istio requires lower case)."""
    match = tuple(
        HeaderMatch(header=m.header.lower(), value=m.value) if m.header else m for m in routes.match
    )
    sticky = routes.sticky
    if sticky is not None and sticky.header:
        sticky = StickyKey(header=sticky.header.lower())
    return replace(routes, match=match, sticky=sticky)


def target_annotations(target: RouteTarget) -> dict[str, str]:
    """Annotations recording the target, so a restarted controller can read routes back."""
    ann = {STABLE_ANNOTATION: f"{target.stable.name}@{target.stable.version}"}
    if target.candidate is not None:
        ann[CANDIDATE_ANNOTATION] = f"{target.candidate.name}@{target.candidate.version}"
    return ann


def target_from_annotations(service: str, annotations: dict[str, str] | None) -> RouteTarget | None:
    ann = annotations or {}
    if STABLE_ANNOTATION not in ann:
        return None

    def backend(raw: str) -> Backend:
        name, _, version = raw.partition("@")
        return Backend(name=name, version=version)

    cand = ann.get(CANDIDATE_ANNOTATION)
    return RouteTarget(
        service=service, stable=backend(ann[STABLE_ANNOTATION]), candidate=backend(cand) if cand else None
    )


class RouteObjectRouter:
    """A TrafficRouter over one routing object of ``kind`` that records its target in annotations.

    Subclasses say how their object is built (``new_object``), which ``spec`` fields they own
    (``spec_fields``; computed before any API call, so a route the provider cannot express is
    refused without writing) and how routes are read back (``read_routes``). ``ensure`` creates the
    object (all traffic to stable) or adopts an existing one, keeping its routes if they are ours;
    writes go through ``KubeClient.update`` (re-read and retried on a 409).
    """

    kind: Kind
    # spec keys of which a write keeps only those ``spec_fields`` returns (a provider whose object
    # takes one of several forms, as a TraefikService is weighted or mirroring); others are merged
    owned_spec_keys: tuple[str, ...] = ()

    def __init__(self, client: KubeClient, namespace: str, name: str) -> None:
        self.client, self.namespace, self.name = client, namespace, name
        self.target: RouteTarget | None = None

    def new_object(self, target: RouteTarget, routes: Routes) -> Obj:
        raise NotImplementedError

    def spec_fields(self, target: RouteTarget, routes: Routes) -> Obj:
        raise NotImplementedError

    def read_routes(self, obj: Obj, target: RouteTarget) -> Routes:
        raise NotImplementedError

    def _target(self) -> RouteTarget:
        if self.target is None:
            obj = self.client.get(self.kind, self.namespace, self.name)
            self.target = target_from_annotations(self.name, obj["metadata"].get("annotations"))
            if self.target is None:
                raise RouterError(
                    f"{self.kind.kind} {self.namespace}/{self.name} is not managed yet: call ensure()"
                )
        return self.target

    def ensure(self, target: RouteTarget) -> None:
        """Create the object (all traffic to stable) or adopt the existing one."""
        self.target = target
        try:
            current = self.client.get(self.kind, self.namespace, self.name)
        except NotFoundError:
            self.client.create(self.kind, self.namespace, self.new_object(target, Routes.all_stable()))
            return
        # adopt: keep the live routes if they are ours, else start from all-stable
        try:
            routes = self.read_routes(current, target)
        except (RouterError, KeyError, TypeError, ValueError):
            routes = Routes.all_stable()
        self._write(target, routes)

    def _write(self, target: RouteTarget, routes: Routes) -> None:
        fields = self.spec_fields(target, routes)

        def mutate(obj: Obj) -> Obj:
            meta = obj["metadata"]
            meta.setdefault("annotations", {}).update(target_annotations(target))
            meta.setdefault("labels", {}).update(MANAGED_BY)
            for key in self.owned_spec_keys:
                obj["spec"].pop(key, None)
            obj["spec"].update(fields)
            return obj

        self.client.update(self.kind, self.namespace, self.name, mutate)

    def set_routes(self, routes: Routes) -> None:
        self._write(self._target(), routes)

    def get_routes(self) -> Routes:
        obj = self.client.get(self.kind, self.namespace, self.name)
        return normalize_routes(self.read_routes(obj, self._target()))

    def finalize(self, target: RouteTarget) -> None:
        """Everything to stable; the candidate stays listed at weight 0 so routes read back cleanly."""
        self.target = target
        self._write(target, Routes.all_stable())
