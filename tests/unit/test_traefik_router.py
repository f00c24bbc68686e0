"""The Traefik router (routers/traefik.py): routes -> TraefikService -> routes is the identity for
everything a TraefikService can express (weights, a mirror from stable); what it cannot (header and
cookie matches, sticky keys, a mirror with weights) is refused before anything is written; a write
switches the object between its weighted and mirroring forms without leaving the other behind; the
spec refuses, at load, the strategies that need what Traefik cannot do."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from rollout.errors import NotFoundError, RouterError, SpecError, UnsupportedRouteError
from rollout.routers.base import Backend, Routes, RouteTarget
from rollout.routers.matching import CANDIDATE_ANNOTATION, STABLE_ANNOTATION
from rollout.routers.registry import make_router
from rollout.routers.traefik import (
    TRAEFIK_SERVICE,
    TraefikRouter,
    routes_from_traefik_service,
    traefik_service,
    traefik_service_spec,
)
from rollout.spec import HeaderMatch, StickyKey, parse_rollout

TARGET = RouteTarget(
    service="iris",
    stable=Backend("iris-stable-predictor", "iris:v1"),
    candidate=Backend("iris-candidate-predictor", "iris:v2"),
)
EXPRESSIBLE = [
    Routes(),
    Routes(candidate_weight=20),
    Routes(candidate_weight=100),
    Routes(mirror_percent=100),
    Routes(mirror_percent=25),
]


@pytest.mark.parametrize("routes", EXPRESSIBLE, ids=str)
def test_routes_round_trip_through_a_traefik_service(routes: Routes) -> None:
    obj = traefik_service("iris", TARGET, routes)
    assert routes_from_traefik_service(obj, TARGET) == routes
    assert obj["metadata"]["annotations"] == {
        STABLE_ANNOTATION: "iris-stable-predictor@iris:v1",
        CANDIDATE_ANNOTATION: "iris-candidate-predictor@iris:v2",
    }


def test_a_split_is_a_weighted_service_over_both_predictors() -> None:
    spec = traefik_service_spec(TARGET, Routes(candidate_weight=30))
    assert spec == {
        "weighted": {
            "services": [
                {"name": "iris-stable-predictor", "port": 80, "weight": 70},
                {"name": "iris-candidate-predictor", "port": 80, "weight": 30},
            ]
        }
    }


def test_a_shadow_is_a_mirroring_service_from_stable_to_the_candidate() -> None:
    spec = traefik_service_spec(TARGET, Routes(mirror_percent=40), port=8080)
    assert spec == {
        "mirroring": {
            "name": "iris-stable-predictor",
            "port": 8080,
            "mirrorBody": True,
            "mirrors": [{"name": "iris-candidate-predictor", "port": 8080, "percent": 40}],
        }
    }


def test_a_version_at_weight_0_is_left_out() -> None:
    """Traefik drops a whole TraefikService one of whose Services does not exist (yet): the
    candidate's predictor is named only once it gets traffic, and reads back as weight 0 before."""
    names = [s["name"] for s in traefik_service_spec(TARGET, Routes())["weighted"]["services"]]
    assert names == ["iris-stable-predictor"]
    names = [
        s["name"] for s in traefik_service_spec(TARGET, Routes(candidate_weight=100))["weighted"]["services"]
    ]
    assert names == ["iris-candidate-predictor"]


def test_read_back_takes_traefiks_default_weight_of_one() -> None:
    obj = {"metadata": {"name": "iris"}, "spec": {"weighted": {"services": [
        {"name": "iris-stable-predictor", "port": 80}, {"name": "iris-candidate-predictor", "port": 80},
    ]}}}  # fmt: skip
    assert routes_from_traefik_service(obj, TARGET) == Routes(candidate_weight=50)


@pytest.mark.parametrize(
    ("routes", "says"),
    [
        (Routes(match=(HeaderMatch(header="X-Rollout-Preview", value="1"),)), "cannot match headers"),
        (
            Routes(candidate_weight=10, match=(HeaderMatch(cookie="cohort", value="b"),)),
            "cannot match headers",
        ),
        (Routes(candidate_weight=50, sticky=StickyKey(header="X-User-ID")), "their own header or cookie"),
        (Routes(candidate_weight=20, mirror_percent=50), "weighted or mirroring, not both"),
    ],
)
def test_what_a_traefik_service_cannot_express_is_refused(routes: Routes, says: str) -> None:
    with pytest.raises(UnsupportedRouteError, match=says) as err:
        traefik_service_spec(TARGET, routes)
    assert "nothing was written" in str(err.value)


def test_objects_that_are_not_ours_are_not_read_as_routes() -> None:
    mirrored_from_elsewhere = {
        "metadata": {"name": "iris"},
        "spec": {"mirroring": {"name": "other", "mirrors": []}},
    }
    with pytest.raises(RouterError, match="not stable's"):
        routes_from_traefik_service(mirrored_from_elsewhere, TARGET)
    stranger = {
        "metadata": {"name": "iris"},
        "spec": {"weighted": {"services": [{"name": "x", "weight": 1}]}},
    }
    with pytest.raises(RouterError, match="also balances to"):
        routes_from_traefik_service(stranger, TARGET)
    with pytest.raises(RouterError, match="neither weighted nor mirroring"):
        routes_from_traefik_service({"metadata": {"name": "iris"}, "spec": {}}, TARGET)


class FakeClient:
    """The slice of KubeClient a RouteObjectRouter uses, over at most one object."""

    def __init__(self, obj: dict[str, Any] | None = None) -> None:
        self.obj = obj
        self.writes = 0

    def get(self, kind: Any, namespace: str, name: str) -> dict[str, Any]:
        if self.obj is None:
            raise NotFoundError(f"{kind.kind} {namespace}/{name} not found")
        return copy.deepcopy(self.obj)

    def create(self, kind: Any, namespace: str, body: dict[str, Any]) -> None:
        assert kind == TRAEFIK_SERVICE
        self.obj, self.writes = copy.deepcopy(body), self.writes + 1

    def update(self, kind: Any, namespace: str, name: str, mutate: Any) -> None:
        self.obj, self.writes = mutate(self.get(kind, namespace, name)), self.writes + 1


def test_the_router_switches_forms_and_refuses_without_writing() -> None:
    client = FakeClient()
    router = TraefikRouter(client, "models", "iris")  # type: ignore[arg-type]
    router.ensure(TARGET)
    assert client.obj is not None and router.get_routes() == Routes()
    router.set_routes(Routes(mirror_percent=100))
    assert set(client.obj["spec"]) == {"mirroring"}  # the weighted form is gone, not merged
    assert router.get_routes() == Routes(mirror_percent=100)
    writes = client.writes
    with pytest.raises(UnsupportedRouteError, match="TraefikService models/iris"):
        router.set_routes(Routes(match=(HeaderMatch(header="x-rollout-preview", value="1"),)))
    assert client.writes == writes
    router.finalize(TARGET)
    assert set(client.obj["spec"]) == {"weighted"} and router.get_routes() == Routes()


def test_the_registry_builds_it_by_name() -> None:
    router = make_router("traefik", client=FakeClient(), namespace="models", name="iris", port=80)
    assert isinstance(router, TraefikRouter)


def _spec(strategy: dict[str, Any], provider: str = "traefik") -> dict[str, Any]:
    return {"apiVersion": "bento-rollout.io/v1alpha1", "kind": "ModelRollout", "metadata": {"name": "iris"}, "spec": {
        "service": "iris",
        "stable": {"model": "iris:v1"},
        "candidate": {"model": "iris:v2"},
        "strategy": strategy,
        "router": {"provider": provider},
    }}  # fmt: skip


@pytest.mark.parametrize(
    ("strategy", "field"),
    [
        ({"blueGreen": {"previewDuration": "20s"}}, "strategy.blueGreen"),
        (
            {"canary": {"steps": [{"setWeight": 50}], "sticky": {"header": "X-User-ID"}}},
            "strategy.canary.sticky",
        ),
    ],
)
def test_the_spec_refuses_what_traefik_cannot_route(strategy: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError, match=f"router.provider traefik cannot route {field}"):
        parse_rollout(_spec(strategy))
    parse_rollout(_spec(strategy, "gateway-api"))  # the same spec through Gateway API is fine


def test_the_spec_takes_a_shadow_and_a_canary_through_traefik() -> None:
    parse_rollout(_spec({"shadow": {"mirrorPercent": 100, "duration": "30s"}}))
    parse_rollout(_spec({"canary": {"steps": [{"setWeight": 20}]}}))
