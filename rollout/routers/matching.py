"""Helpers shared by the cluster routers (istio.py, gateway_api.py, kserve.py): cookie matches as
header regexes, and the annotations that remember which backend is stable and which is candidate.

Istio and Gateway API can match a header's value exactly but have no cookie match, so a cookie
match ``name=value`` becomes a regular expression on the ``Cookie`` header. Envoy evaluates it with
RE2 and requires the whole header to match, so the expression is anchored and allows other cookies
around ours. ``cookie_regex`` and ``parse_cookie_regex`` are inverses, so routes read back from the
API object compare equal to the routes that were set.
"""

from __future__ import annotations

import re
from dataclasses import replace

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
