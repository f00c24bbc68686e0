"""What the controller observes of the two versions before each engine step: the candidate's and
stable's readiness, as KServe reports it on their InferenceServices.

- the **candidate** (``routers.kserve.candidate_readiness``): no traffic moves to it before its
  latest revision is ready (``Observations.candidate_ready``);
- **stable** (``routers.kserve.stable_readiness``): while it does not serve (its InferenceService
  reports ``Ready`` False, has no Ready condition, or is gone) the engine holds the rollout -
  Paused, StableUnavailable, weights as they are, nothing compared with a baseline that is down -
  and resumes by itself once it is Ready again; past ``spec.progressDeadline`` it rolls back
  (``Observations.stable_ready``). A ``Ready`` that is Unknown is reported as not checked.

In kserve routing mode both are one InferenceService (stable is the revision that holds the rest
of the traffic), read once; in istio / gateway-api mode they are ``<service>-candidate`` and
``<service>-stable`` (conventions.py). Who calls it: rollout.controller.reconciler.
"""

from __future__ import annotations

from dataclasses import dataclass

from rollout.errors import NotFoundError
from rollout.k8s.client import INFERENCE_SERVICE, KubeClient, Obj
from rollout.routers.kserve import Readiness, candidate_readiness, stable_readiness
from rollout.spec import RolloutSpec

from .conventions import isvc_name


@dataclass(frozen=True)
class Backends:
    """The readiness of both versions, as read for one engine step."""

    candidate: Readiness
    stable: Readiness


def observe(client: KubeClient, spec: RolloutSpec, namespace: str) -> Backends:
    """Read the InferenceServices of ``spec``'s rollout (each once) and say whether each version serves."""
    found: dict[str, Obj | None] = {}

    def read(name: str) -> Obj | None:
        if name not in found:
            try:
                found[name] = client.get(INFERENCE_SERVICE, namespace, name)
            except NotFoundError:
                found[name] = None
        return found[name]

    candidate_name, stable_name = isvc_name(spec, "candidate"), isvc_name(spec, "stable")
    candidate = read(candidate_name)
    return Backends(
        candidate=(
            candidate_readiness(candidate)
            if candidate is not None
            else Readiness(False, f"InferenceService {namespace}/{candidate_name} does not exist yet")
        ),
        stable=stable_readiness(read(stable_name), f"{namespace}/{stable_name}"),
    )
