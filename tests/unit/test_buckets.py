"""Sticky splits as header buckets on Gateway API (rollout/routers/buckets.py): the same user always
gets the same version, about the weight's share of users gets the candidate, and the HTTPRoute
reads back as the routes that were set."""

from __future__ import annotations

import re
import uuid

import pytest

from rollout.errors import UnsupportedRouteError
from rollout.routers import buckets
from rollout.routers.base import Backend, Routes, RouteTarget
from rollout.routers.gateway_api import http_route_rules, routes_from_http_route
from rollout.spec import HeaderMatch, StickyKey

TARGET = RouteTarget(
    "iris", Backend("iris-stable-predictor", "iris:v1"), Backend("iris-candidate-predictor", "iris:v2")
)
HEADER, COOKIE = StickyKey(header="X-User-ID"), StickyKey(cookie="uid")


def _to_candidate(rules: list[dict], headers: dict[str, str]) -> bool:
    """Which way a request goes by these rules, as a Gateway API implementation decides: a rule
    whose header match matches wins over the rule without one (RE2 full match: Python's here)."""
    for rule in rules:
        for m in rule.get("matches") or []:
            for h in m.get("headers") or []:
                value = headers.get(h["name"].lower())
                if (
                    value is not None and re.fullmatch(h["value"], value)
                    if h["type"] == "RegularExpression"
                    else value == h["value"]
                ):
                    return any(r["name"] == TARGET.candidate.name for r in rule["backendRefs"])  # type: ignore[union-attr]
    (primary,) = [r for r in rules if not r.get("matches")]
    return {r["name"]: r["weight"] for r in primary["backendRefs"]}[TARGET.candidate.name] == 100  # type: ignore[union-attr]


@pytest.mark.parametrize("weight", [10, 20, 50, 70, 90])
@pytest.mark.parametrize("sticky", [HEADER, COOKIE])
def test_the_route_reads_back_as_set(weight: int, sticky: StickyKey) -> None:
    routes = Routes(
        candidate_weight=weight, sticky=sticky, match=(HeaderMatch(header="x-tester", value="1"),)
    )
    rules = http_route_rules(TARGET, routes)
    back = routes_from_http_route({"metadata": {"name": "iris"}, "spec": {"rules": rules}}, TARGET)
    want = Routes(candidate_weight=weight, sticky=StickyKey(header="x-user-id") if sticky.header else sticky,
                  match=routes.match)  # fmt: skip
    assert back == want


@pytest.mark.parametrize("weight", [20, 50, 80])
def test_users_keep_their_version_and_the_share_is_the_weight(weight: int) -> None:
    rules = http_route_rules(TARGET, Routes(candidate_weight=weight, sticky=HEADER))
    numeric = [f"user-{i}" for i in range(1, 2001)]
    uuids = [str(uuid.UUID(int=i * 7919 + 17)) for i in range(2000)] + [
        str(uuid.uuid4()) for _ in range(2000)
    ]
    for ids, tolerance in ((numeric, 0.001), (uuids, 0.06)):
        first = {u: _to_candidate(rules, {"x-user-id": u}) for u in ids}
        assert all(_to_candidate(rules, {"x-user-id": u}) == v for u, v in first.items())  # sticky
        assert abs(sum(first.values()) / len(ids) - weight / 100) <= tolerance, (weight, sum(first.values()))
    # no key: stable; a cookie key among other cookies
    assert _to_candidate(rules, {}) is False
    cookie_rules = http_route_rules(TARGET, Routes(candidate_weight=weight, sticky=COOKIE))
    assert _to_candidate(cookie_rules, {"cookie": "a=1; uid=user-0; b=2"}) is True
    assert _to_candidate(cookie_rules, {"cookie": "uid=user-9"}) is False


def test_a_weight_the_buckets_cannot_express_is_refused_not_rounded() -> None:
    for weight in (5, 25, 95, 100):
        with pytest.raises(UnsupportedRouteError, match="10, 20 ... 90"):
            http_route_rules(TARGET, Routes(candidate_weight=weight, sticky=HEADER))
    assert buckets.parse("x-user-id", "^.*[0-4]$") is None  # not a set bucket() makes (no letters)
