"""What the controller observes of the two versions before each engine step: the candidate's and
stable's readiness, as KServe reports it on their InferenceServices.

- the **candidate** (``routers.kserve.candidate_readiness``): no traffic moves to it before its
  latest revision is ready (``Observations.candidate_ready``);
- **stable** (``routers.kserve.stable_readiness``): while it does not serve (its InferenceService
  reports ``Ready`` False, has no Ready condition, or is gone) the engine holds the rollout -
  Paused, StableUnavailable, weights as they are, nothing compared with a baseline that is down -
  and resumes by itself once it is Ready again; past ``spec.progressDeadline`` it rolls back
  (``Observations.stable_ready``). A ``Ready`` that is Unknown is reported as not checked.

Each version must also be the model the ModelRollout names: the InferenceService's predictor
container runs ``BENTO_MODEL_TAG`` (and, when the spec pins ``stable.digest`` /
``candidate.digest``, the server's own check ``BENTO_MODEL_DIGEST``: it refuses any other
artifact). One that runs another model, or without the pin, is a ``mismatch`` (``served_as``)
that holds the rollout in progress with its message, routes as they are, until the two agree: a
hand-written or hand-edited ModelRollout whose pin the Helm values did not put on the
InferenceService pinned nothing before. (In kserve routing mode only the candidate's is read:
stable is an older revision of the same object.)

Neither the spec nor KServe's status says what the pods run (KServe v0.20.0 keeps a Standard-mode
InferenceService Ready through a rolling update, the old pods answering). So in istio /
gateway-api / traefik mode a candidate is ready only once every Ready endpoint of its predictor Service
answers the ModelRollout's candidate - tag, and digest when pinned (``served.check``, asked with
``probe``): until then it is not ready, no traffic moves to it, and ``Backends.served`` says what
was expected and what was found (the reconciler writes it to the CandidateReady condition and an
Event). No probe (a finished rollout): not asked.

In kserve routing mode both are one InferenceService (stable is the revision that holds the rest
of the traffic), read once; in istio / gateway-api / traefik mode they are ``<service>-candidate`` and
``<service>-stable`` (conventions.py). Who calls it: rollout.controller.reconciler.
"""

from __future__ import annotations

from dataclasses import dataclass

from rollout.errors import NotFoundError
from rollout.k8s.client import INFERENCE_SERVICE, KubeClient, Obj
from rollout.registry import MODEL_DIGEST_ENV, MODEL_TAG_ENV
from rollout.routers.kserve import Readiness, candidate_readiness, stable_readiness
from rollout.spec import ModelRef, RolloutSpec

from . import served
from .conventions import isvc_name, predictor, server_env


@dataclass(frozen=True)
class Backends:
    """The readiness of both versions, as read for one engine step."""

    candidate: Readiness
    stable: Readiness
    mismatch: str | None = None  # a version's InferenceService runs another model or without its pin
    served: served.Verdict | None = None  # what the candidate's pods answered (None: not asked)


def observe(
    client: KubeClient, spec: RolloutSpec, namespace: str, probe: served.ServingProbe | None = None
) -> Backends:
    """Read the InferenceServices of ``spec``'s rollout (each once) and say whether each version
    serves; with ``probe``, in Standard mode (istio, gateway-api, traefik), ask a Ready candidate's pods what they serve."""
    found: dict[str, Obj | None] = {}

    def read(name: str) -> Obj | None:
        if name not in found:
            try:
                found[name] = client.get(INFERENCE_SERVICE, namespace, name)
            except NotFoundError:
                found[name] = None
        return found[name]

    candidate_name, stable_name = isvc_name(spec, "candidate"), isvc_name(spec, "stable")
    candidate, stable = read(candidate_name), read(stable_name)
    mismatch = served_as(candidate, spec.candidate, "candidate") if candidate is not None else None
    if mismatch is None and stable is not None and stable_name != candidate_name:  # kserve mode: one spec
        mismatch = served_as(stable, spec.stable, "stable")
    ready = (
        candidate_readiness(candidate)
        if candidate is not None
        else Readiness(False, f"InferenceService {namespace}/{candidate_name} does not exist yet")
    )
    verdict = None
    if probe is not None and ready.ready and mismatch is None and stable_name != candidate_name:
        service = predictor(candidate_name)
        verdict = served.check(probe.serving(namespace, service, spec.candidate), spec.candidate, "candidate")
        if not verdict.ok:
            ready = Readiness(False, verdict.message)
        else:  # a pod of the old template may serve the same model (e.g. only its env changed): not yet
            progress = probe.progress(namespace, service)  # KServe names the Deployment as the Service
            if not progress.done:
                ready = Readiness(False, f"candidate not ready: {progress.message}")
    return Backends(
        candidate=ready,
        stable=stable_readiness(stable, f"{namespace}/{stable_name}"),
        mismatch=mismatch,
        served=verdict,
    )


def served_as(isvc: Obj, model: ModelRef, role: str) -> str | None:
    """Pure: why the predictor of ``isvc`` is not ``model`` (the rollout's ``role`` version), or None."""
    env = server_env(isvc)
    name = (isvc.get("metadata") or {}).get("name", "?")
    tag = env.get(MODEL_TAG_ENV)
    if tag and tag != model.model:
        return f"{name} serves {MODEL_TAG_ENV}={tag}, but the ModelRollout's {role} is {model.model}"
    if model.digest is not None and env.get(MODEL_DIGEST_ENV) != model.digest:
        has = env.get(MODEL_DIGEST_ENV)
        runs = f"with {MODEL_DIGEST_ENV}={has}" if has else f"without {MODEL_DIGEST_ENV}"
        return (
            f"{name} runs {runs}, but the ModelRollout pins {role}.digest {model.digest}: set "
            f"models.{role}Digest to it in the chart's values (the server then refuses any other artifact)"
        )
    return None
