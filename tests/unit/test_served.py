"""The controller asks the pods what they serve (rollout/controller/served.py) before traffic moves
to a candidate and before the promotion hand-off completes: the pure decisions, the readiness
they feed (readiness.observe with a fake probe), and the probe's own reading of EndpointSlices
and of the Bento's ``GET /v2/models/<name>`` answers (httpx's MockTransport)."""

from __future__ import annotations

import json
from typing import Any

import httpx

from rollout.controller import handoff, readiness, served
from rollout.controller.served import Answer, Progress, Serving
from rollout.spec import ModelRef
from tests.kit import rollout_spec

PIN = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64
V2 = ModelRef(model="iris:v2")
CANARY = {"canary": {"steps": [{"setWeight": 10}]}}


def serving(*models: tuple[str, str | None], service: str = "iris-candidate-predictor") -> Serving:
    """One Ready endpoint per (tag, digest)."""
    answers = []
    for i, (tag, digest) in enumerate(models):
        name, _, version = tag.partition(":")
        answers.append(Answer(f"10.0.0.{i + 1}:3000", f"pod-{i}", name, version, digest))
    return Serving(service, tuple(answers))


# --- the candidate ------------------------------------------------------------------------------


def test_a_candidate_whose_pods_serve_another_model_is_held_naming_both() -> None:
    v = served.check(serving(("iris:v1", PIN)), V2, "candidate")
    assert not v.ok and v.reason == served.MISMATCH
    assert "1 of 1 Ready endpoints serve iris:v1 (sha256:aaaaaaaaaaaa...)" in v.message
    assert "the ModelRollout's candidate is iris:v2" in v.message and "no traffic moves" in v.message


def test_a_candidate_whose_pods_all_serve_its_model_proceeds() -> None:
    v = served.check(serving(("iris:v2", PIN), ("iris:v2", PIN)), V2, "candidate")
    assert v.ok and v.reason == served.VERIFIED and "2 of 2 Ready endpoints serve iris:v2" in v.message


def test_one_old_pod_among_new_ones_still_holds() -> None:
    v = served.check(serving(("iris:v2", None), ("iris:v1", None)), V2, "candidate")
    assert not v.ok and "1 of 2 Ready endpoints serve iris:v1" in v.message


def test_a_pinned_digest_must_be_the_one_the_pods_loaded() -> None:
    pinned = ModelRef(model="iris:v2", digest=PIN)
    assert served.check(serving(("iris:v2", PIN)), pinned, "candidate").ok
    v = served.check(serving(("iris:v2", OTHER)), pinned, "candidate")
    assert not v.ok and v.reason == served.MISMATCH and f"pinned to {PIN}" in v.message
    assert not served.check(serving(("iris:v2", None)), pinned, "candidate").ok


def test_a_tag_without_version_is_judged_by_name() -> None:
    assert served.check(serving(("iris:v7", None)), ModelRef(model="iris"), "candidate").ok
    assert not served.check(serving(("wine:v1", None)), ModelRef(model="iris"), "candidate").ok


def test_no_endpoint_no_answer_or_no_slices_is_unknown_never_ok() -> None:
    empty = served.check(Serving("svc"), V2, "candidate")
    assert not empty.ok and empty.reason == served.UNKNOWN and "no Ready endpoint" in empty.message
    silent = Serving("svc", (Answer("10.0.0.1:3000", error="ConnectTimeout: timed out"),))
    v = served.check(silent, V2, "candidate")
    assert not v.ok and v.reason == served.UNKNOWN and "ConnectTimeout" in v.message
    forbidden = served.check(Serving("svc", error="forbidden; grant the verb"), V2, "candidate")
    assert not forbidden.ok and "grant the verb" in forbidden.message


class FakeClient:
    """The InferenceServices KServe reports Ready (a fake API: readiness.observe only reads)."""

    def __init__(self, *objs: dict[str, Any]) -> None:
        self.objs = {o["metadata"]["name"]: o for o in objs}

    def get(self, kind: Any, namespace: str, name: str) -> dict[str, Any]:
        return self.objs[name]


def ready_isvc(name: str, tag: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "generation": 1},
        "spec": {"predictor": {"containers": [{"name": "kserve-container", "env": [
            {"name": "BENTO_MODEL_TAG", "value": tag}]}]}},
        "status": {"observedGeneration": 1, "conditions": [
            {"type": "PredictorReady", "status": "True"}, {"type": "Ready", "status": "True"}]},
    }  # fmt: skip


class FakeProbe:
    """FAKE pods: ``models[service]`` is what its endpoints answer."""

    def __init__(self, models: dict[str, Serving], rolling: tuple[str, ...] = ()) -> None:
        self.models, self.asked, self.rolling = models, [], rolling

    def serving(self, namespace: str, service: str, model: ModelRef) -> Serving:
        self.asked.append(service)
        return self.models[service]

    def progress(self, namespace: str, deployment: str) -> Progress:
        if deployment in self.rolling:
            return Progress(
                deployment, False, f"Deployment {deployment} is rolling out: 1 old replica(s) still running"
            )
        return Progress(deployment, True, "rolled out")


def test_observe_holds_a_ready_candidate_whose_pods_serve_the_old_model() -> None:
    spec = rollout_spec("iris", router={"provider": "istio"}, strategy=CANARY).spec
    client = FakeClient(ready_isvc("iris-stable", "iris:v1"), ready_isvc("iris-candidate", "iris:v2"))
    probe = FakeProbe({"iris-candidate-predictor": serving(("iris:v1", None))})
    seen = readiness.observe(client, spec, "ns", probe)  # type: ignore[arg-type]
    assert probe.asked == ["iris-candidate-predictor"]
    assert seen.candidate.ready is False and seen.served is not None and not seen.served.ok
    assert seen.candidate.reason == seen.served.message and "serve iris:v1" in seen.served.message
    assert seen.stable.ready is True and seen.mismatch is None

    probe.models["iris-candidate-predictor"] = serving(("iris:v2", None))
    seen = readiness.observe(client, spec, "ns", probe)  # type: ignore[arg-type]
    assert seen.candidate.ready is True and seen.served is not None and seen.served.ok


def test_observe_holds_a_candidate_whose_deployment_still_rolls_out_even_if_every_pod_serves_its_model() -> (
    None
):
    """Only the candidate's env changed (e.g. a fault injection removed): the old pods serve the
    same model tag, and until KServe has replaced them no traffic moves (measured on the cluster:
    an A/B began on the old, faulty pod and was decided in 5 s)."""
    spec = rollout_spec("iris", router={"provider": "gateway-api"}, strategy=CANARY).spec
    client = FakeClient(ready_isvc("iris-stable", "iris:v1"), ready_isvc("iris-candidate", "iris:v2"))
    probe = FakeProbe(
        {"iris-candidate-predictor": serving(("iris:v2", None))}, rolling=("iris-candidate-predictor",)
    )
    seen = readiness.observe(client, spec, "ns", probe)  # type: ignore[arg-type]
    assert seen.candidate.ready is False and "old replica(s) still running" in seen.candidate.reason
    probe.rolling = ()
    assert readiness.observe(client, spec, "ns", probe).candidate.ready is True  # type: ignore[arg-type]


def test_observe_asks_no_pod_in_kserve_mode_nor_without_a_probe_nor_before_kserve_says_ready() -> None:
    probe = FakeProbe({})
    kserve = rollout_spec("iris", router={"provider": "kserve"}, strategy=CANARY).spec
    one = ready_isvc("iris", "iris:v2")
    assert readiness.observe(FakeClient(one), kserve, "ns", probe).served is None  # type: ignore[arg-type]
    istio = rollout_spec("iris", router={"provider": "istio"}, strategy=CANARY).spec
    both = FakeClient(ready_isvc("iris-stable", "iris:v1"), ready_isvc("iris-candidate", "iris:v2"))
    assert readiness.observe(both, istio, "ns").served is None  # type: ignore[arg-type]
    both.objs["iris-candidate"]["status"]["conditions"][1]["status"] = "False"
    assert readiness.observe(both, istio, "ns", probe).served is None  # type: ignore[arg-type]
    assert probe.asked == []


def test_the_hold_is_the_candidate_ready_condition_until_the_pods_serve_it() -> None:
    v = served.check(serving(("iris:v1", None)), V2, "candidate")
    status = {"conditions": [{"type": "CandidateReady", "status": "False", "reason": "CandidateNotReady",
                              "message": ""}, {"type": "Paused", "status": "False"}]}  # fmt: skip
    assert served.stale(status, v)
    held = served.overlay(status, v)
    cond = held["conditions"][0]
    assert (cond["status"], cond["reason"], cond["message"]) == ("False", served.MISMATCH, v.message)
    assert not served.stale(held, v)
    ok = served.check(serving(("iris:v2", None)), V2, "candidate")
    assert served.stale(held, ok)  # the old verdict is rewritten once the pods serve it
    assert served.overlay(held, ok) is held


# --- the hand-off -----------------------------------------------------------------------------------


def deployment(replicas: int = 2, updated: int = 2, total: int = 2, available: int = 2, observed: int = 3):
    return {
        "metadata": {"name": "iris-stable-predictor", "generation": 3},
        "spec": {"replicas": replicas},
        "status": {"observedGeneration": observed, "updatedReplicas": updated, "replicas": total,
                   "availableReplicas": available},
    }  # fmt: skip


def test_the_deployment_rollout_is_done_only_with_every_replica_new_and_available() -> None:
    name = "iris-stable-predictor"
    assert served.rollout_progress(deployment(), name).done
    cases = {
        "generation 3 not observed": deployment(observed=2),
        "1 of 2 replicas updated": deployment(updated=1, total=3),
        "1 old replica(s) still running": deployment(total=3),
        "1 of 2 updated replicas available": deployment(available=1),
        "does not exist": None,
    }
    for why, dep in cases.items():
        p = served.rollout_progress(dep, name)
        assert not p.done and why in p.message, (why, p)


def test_the_hand_off_waits_while_any_stable_endpoint_serves_the_old_model_or_the_rollout_runs() -> None:
    svc = "iris-stable-predictor"
    done = served.rollout_progress(deployment(), svc)
    old = served.check(serving(("iris:v2", None), ("iris:v1", None), service=svc), V2, "candidate")
    ok, why = handoff.settled(done, old)
    assert not ok and "1 of 2 Ready endpoints serve iris:v1" in why
    new = served.check(serving(("iris:v2", None), ("iris:v2", None), service=svc), V2, "candidate")
    rolling = served.rollout_progress(deployment(total=3), svc)
    ok, why = handoff.settled(rolling, new)  # the new pods answer, an old one still runs
    assert not ok and "rolling out: 1 old replica(s) still running" in why
    assert handoff.settled(done, new) == (True, "")


# --- the probe: EndpointSlices and the Bento's answers -------------------------------------------------


def slice_(*endpoints: tuple[str, bool | None, bool], port: int = 3000) -> dict[str, Any]:
    return {
        "addressType": "IPv4",
        "ports": [{"name": "http1", "port": port, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [ip], "conditions": {"ready": ready, "terminating": terminating},
             "targetRef": {"kind": "Pod", "name": f"pod-{ip}"}}
            for ip, ready, terminating in endpoints
        ],
    }  # fmt: skip


def test_ready_endpoints_are_ready_or_unset_and_not_terminating() -> None:
    slices = [slice_(("10.0.0.1", True, False), ("10.0.0.2", None, False), ("10.0.0.3", False, False),
                     ("10.0.0.4", True, True))]  # fmt: skip
    assert served.ready_endpoints(slices) == {
        "10.0.0.1:3000": "pod-10.0.0.1",
        "10.0.0.2:3000": "pod-10.0.0.2",
    }
    six = {**slice_(("fd00::1", True, False)), "addressType": "IPv6"}
    assert list(served.ready_endpoints([six])) == ["[fd00::1]:3000"]


class SlicesClient:
    def __init__(self, slices: list[dict[str, Any]], error: Exception | None = None) -> None:
        self.slices, self.error = slices, error

    def list_endpoint_slices(self, namespace: str, service: str) -> list[dict[str, Any]]:
        if self.error is not None:
            raise self.error
        return self.slices


def bento(request: httpx.Request) -> httpx.Response:
    """What bentos/app.py answers: iris:v2 on 10.0.0.1, iris:v1 on .2, another model on .3, and .4 hangs."""
    host = request.url.host
    if host == "10.0.0.4":
        raise httpx.ConnectTimeout("timed out", request=request)
    if host == "10.0.0.3":
        headers = {"x-model-name": "wine", "x-model-version": "v1"}
        return httpx.Response(
            404, headers=headers, json={"error": "this server serves model 'wine', not 'iris'"}
        )
    version = "v2" if host == "10.0.0.1" else "v1"
    assert request.url.path == "/v2/models/iris"
    meta = {"name": "iris", "versions": [version], "platform": "sklearn", "parameters": {"digest": PIN}}
    return httpx.Response(200, headers={"x-model-version": version}, content=json.dumps(meta))


def test_the_probe_asks_every_ready_endpoint_and_a_failure_is_an_unknown_answer() -> None:
    ips = [(f"10.0.0.{i}", True, False) for i in (1, 2, 3, 4)]
    probe = served.PodProbe(SlicesClient([slice_(*ips)]), transport=httpx.MockTransport(bento))  # type: ignore[arg-type]
    got = probe.serving("ns", "iris-candidate-predictor", V2)
    by_ip = {a.address.split(":")[0]: a for a in got.answers}
    assert (by_ip["10.0.0.1"].name, by_ip["10.0.0.1"].version, by_ip["10.0.0.1"].digest) == (
        "iris",
        "v2",
        PIN,
    )
    assert by_ip["10.0.0.2"].version == "v1" and by_ip["10.0.0.2"].pod == "pod-10.0.0.2"
    assert (by_ip["10.0.0.3"].name, by_ip["10.0.0.3"].version) == ("wine", "v1")
    assert by_ip["10.0.0.4"].name is None and "ConnectTimeout" in (by_ip["10.0.0.4"].error or "")
    v = served.check(got, V2, "candidate")
    assert not v.ok and "2 of 4 Ready endpoints serve iris:v1 (sha256:aaaaaaaaaaaa...), wine:v1" in v.message


def test_the_probe_turns_an_api_error_into_an_unknown_never_an_exception() -> None:
    from rollout.errors import ForbiddenError

    client = SlicesClient([], ForbiddenError("list EndpointSlices: forbidden; grant the verb"))
    got = served.PodProbe(client).serving("ns", "svc", V2)  # type: ignore[arg-type]
    assert got.error is not None and "grant the verb" in got.error
    assert served.answer_of("a", None, 200, {}, b"not json").error is not None
    assert served.answer_of("a", None, 503, {}, b"loading").error == "answered HTTP 503: loading"
