"""The cluster routers build the right objects (pure functions): canary weights, mirror, header and
cookie matches, sticky; what a provider cannot express is refused, never dropped; routes read back
from an object equal the routes that built it; KServe readiness reads the status correctly."""

from __future__ import annotations

import re

import pytest

from rollout.errors import RouterError, UnknownProviderError, UnsupportedRouteError
from rollout.routers.base import Backend, Routes, RouteTarget
from rollout.routers.gateway_api import http_route, routes_from_http_route
from rollout.routers.istio import routes_from_virtual_service, virtual_service
from rollout.routers.kserve import canary_patch, candidate_readiness, routes_from_isvc, traffic_from_status
from rollout.routers.matching import (
    cookie_regex,
    normalize_routes,
    parse_cookie_regex,
    target_from_annotations,
)
from rollout.routers.registry import make_router
from rollout.spec import HeaderMatch, StickyKey

TARGET = RouteTarget(
    service="iris", stable=Backend("iris-v1", "iris:v1"), candidate=Backend("iris-v2", "iris:v2")
)
CASES = [
    Routes(candidate_weight=10),
    Routes(candidate_weight=0, mirror_percent=25),
    Routes(candidate_weight=30, match=(HeaderMatch(header="X-Canary", value="yes"),)),
    Routes(
        candidate_weight=0,
        match=(HeaderMatch(cookie="cohort", value="b.1"), HeaderMatch(header="x-u", value="7")),
    ),
    Routes(candidate_weight=100),
    Routes(),
]


@pytest.mark.parametrize("routes", CASES, ids=str)
def test_istio_virtual_service_round_trips(routes: Routes) -> None:
    vs = virtual_service("iris", TARGET, routes, gateways=["gw"])
    assert routes_from_virtual_service(vs, TARGET) == normalize_routes(routes)
    primary = vs["spec"]["http"][-1]
    weights = {d["destination"]["host"]: d["weight"] for d in primary["route"]}
    assert weights == {"iris-v1": 100 - routes.candidate_weight, "iris-v2": routes.candidate_weight}
    assert vs["spec"]["gateways"] == ["gw"] and vs["spec"]["hosts"] == ["iris"]


def test_istio_mirror_and_header_match_shape() -> None:
    routes = Routes(candidate_weight=5, mirror_percent=40, match=(HeaderMatch(header="X-Canary", value="1"),))
    http = virtual_service("iris", TARGET, routes)["spec"]["http"]
    assert http[0]["match"] == [{"headers": {"x-canary": {"exact": "1"}}}]
    assert http[0]["route"] == [{"destination": {"host": "iris-v2"}}]
    assert http[1]["mirror"] == {"host": "iris-v2"} and http[1]["mirrorPercentage"] == {"value": 40.0}


def test_istio_refuses_sticky_split() -> None:
    with pytest.raises(UnsupportedRouteError, match="consistentHash"):
        virtual_service("iris", TARGET, Routes(candidate_weight=50, sticky=StickyKey(cookie="user")))


def test_routes_to_a_missing_candidate_are_refused() -> None:
    only_stable = RouteTarget(service="iris", stable=Backend("iris-v1", "iris:v1"))
    with pytest.raises(RouterError, match="has none"):
        virtual_service("iris", only_stable, Routes(candidate_weight=10))
    with pytest.raises(RouterError, match="has none"):
        http_route("iris", only_stable, Routes(mirror_percent=10))
    assert virtual_service("iris", only_stable, Routes())["spec"]["http"][0]["route"][0]["weight"] == 100


@pytest.mark.parametrize(
    "routes", [*CASES, Routes(candidate_weight=50, sticky=StickyKey(header="X-User"))], ids=str
)
def test_http_route_round_trips(routes: Routes) -> None:
    obj = http_route("iris", TARGET, routes, gateway="gw", port=3000)
    assert routes_from_http_route(obj, TARGET) == normalize_routes(routes)
    assert obj["spec"]["parentRefs"] == [{"name": "gw"}]


def test_http_route_mirror_filter_and_cookie_match_shape() -> None:
    routes = Routes(candidate_weight=0, mirror_percent=15, match=(HeaderMatch(cookie="ab", value="b"),))
    rules = http_route("iris", TARGET, routes, port=3000)["spec"]["rules"]
    cond = rules[0]["matches"][0]["headers"][0]
    assert cond["type"] == "RegularExpression" and cond["name"] == "cookie"
    assert re.fullmatch(cond["value"], "session=1; ab=b; x=2") and not re.fullmatch(cond["value"], "ab=bb")
    assert rules[1]["filters"] == [
        {
            "type": "RequestMirror",
            "requestMirror": {"backendRef": {"name": "iris-v2", "port": 3000}, "percent": 15},
        }
    ]


def test_http_route_read_back_tolerates_server_defaults() -> None:
    obj = http_route("iris", TARGET, Routes(candidate_weight=20), port=80)
    for rule in obj["spec"]["rules"]:  # what the API server adds
        rule["matches"] = [{"path": {"type": "PathPrefix", "value": "/"}}]
        for ref in rule["backendRefs"]:
            ref.update(group="", kind="Service")
    assert routes_from_http_route(obj, TARGET) == Routes(candidate_weight=20)


def test_cookie_regex_is_reversible_and_anchored() -> None:
    rx = cookie_regex("ab-test", "v2.1+x")
    assert parse_cookie_regex(rx) == ("ab-test", "v2.1+x")
    assert re.fullmatch(rx, "ab-test=v2.1+x") and re.fullmatch(rx, "a=1; ab-test=v2.1+x; c=2")
    assert not re.fullmatch(rx, "xab-test=v2.1+x") and not re.fullmatch(rx, "ab-test=v2.1+xy")
    assert parse_cookie_regex("^foo$") is None


def test_target_annotations_round_trip() -> None:
    vs = virtual_service("iris", TARGET, Routes())
    assert target_from_annotations("iris", vs["metadata"]["annotations"]) == TARGET


@pytest.mark.parametrize(
    ("routes", "feature"),
    [
        (Routes(mirror_percent=10), "mirror"),
        (Routes(match=(HeaderMatch(header="x", value="1"),)), "headers"),
        (Routes(candidate_weight=10, sticky=StickyKey(cookie="u")), "sticky"),
    ],
)
def test_kserve_refuses_what_it_cannot_express(routes: Routes, feature: str) -> None:
    with pytest.raises(UnsupportedRouteError, match=feature):
        canary_patch(routes)


def test_kserve_canary_percent() -> None:
    assert canary_patch(Routes(candidate_weight=30)) == {"spec": {"predictor": {"canaryTrafficPercent": 30}}}
    assert routes_from_isvc({"spec": {"predictor": {"canaryTrafficPercent": 30}}}) == Routes(
        candidate_weight=30
    )
    assert routes_from_isvc({"spec": {"predictor": {}}}).candidate_weight == 100  # latest takes all


def _isvc(
    ready: str = "True", created: str = "p-2", ready_rev: str = "p-2", gen: int = 2, observed: int = 2
) -> dict:
    return {
        "metadata": {"name": "iris", "generation": gen},
        "status": {
            "observedGeneration": observed,
            "conditions": [
                {"type": "Ready", "status": ready},
                {"type": "PredictorReady", "status": ready, "message": "pulling"},
            ],
            "components": {
                "predictor": {
                    "latestCreatedRevision": created,
                    "latestReadyRevision": ready_rev,
                    "previousRolledoutRevision": "p-1",
                    "traffic": [
                        {"revisionName": "p-2", "percent": 20, "latestRevision": True},
                        {"revisionName": "p-1", "percent": 80, "latestRevision": False},
                    ],
                }
            },
        },
    }


def test_kserve_readiness_from_status() -> None:
    ok = candidate_readiness(_isvc())
    assert ok.ready and ok.latest_ready == "p-2" and ok.previous_rolled_out == "p-1"
    assert not candidate_readiness(_isvc(ready="False")).ready
    assert "pulling" in candidate_readiness(_isvc(ready="False")).reason
    lagging = candidate_readiness(_isvc(created="p-3"))
    assert not lagging.ready and "p-3 is not ready" in lagging.reason
    assert not candidate_readiness(_isvc(gen=3, observed=2)).ready
    assert not candidate_readiness({"metadata": {"name": "iris"}}).ready
    assert traffic_from_status(_isvc()) == 20


def test_registry_knows_cluster_routers_and_refuses_unknown() -> None:
    with pytest.raises(UnknownProviderError, match="linkerd"):
        make_router("linkerd")
    router = make_router("istio", client=None, namespace="ns", name="iris")
    assert type(router).__name__ == "IstioRouter"
