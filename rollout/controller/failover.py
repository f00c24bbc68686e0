"""Traffic to whoever is healthy, on a cluster: the routes the controller writes while one version
has no Ready pod.

A Gateway API or Istio route splits by weight whatever the backends' health: Traefik answers 503 for
the whole share of a version whose Service has no Ready endpoint (measured: 13 % of requests failed
while stable's only pod was replaced mid-canary, tests/k8s/README.md), until a pod is back. The
local tier's nginx fails over by itself; on a cluster the controller does it, as an edge policy on
the routes the engine wants (``effective``), re-decided every reconcile (about every 2 s):

- the candidate not Ready (its pod gone, or serving another model) while stable is: the candidate's
  weight and header matches go to stable; a mirror stays (copies to it are only lost);
- stable not Ready while the candidate is, and the rollout still running: everything to the
  candidate. Never to a candidate that is rolled back or whose rollout has ended: then the routes
  stay as they are (stable's share fails until it is back, as before).

The engine still wants its own routes; it reads the effective ones back (``Observations.routes``),
so no step that changes traffic completes while a failover is in force, and the engine already
holds while stable is down (StableUnavailable). Once both are Ready the desired routes are written
again. Pure; the reconciler emits ``FailoverStarted`` / ``FailoverEnded`` Events.
Who calls it: rollout.controller.reconciler (``_act``), in Standard mode only (istio, gateway-api, traefik; in
kserve mode KServe's own revision routing decides).
"""

from __future__ import annotations

from dataclasses import replace

from rollout.routers.base import Routes

from .conventions import STANDARD_PROVIDERS

STARTED, ENDED = "FailoverStarted", "FailoverEnded"
PROVIDERS = STANDARD_PROVIDERS


def effective(
    routes: Routes, stable_ready: bool | None, candidate_ready: bool | None, running: bool
) -> Routes:
    """The routes to write instead of ``routes`` (None readiness: unknown, nothing is changed).
    ``running``: the rollout is in progress (not Promoted, RolledBack or otherwise ended)."""
    if candidate_ready is False and stable_ready is True and (routes.candidate_weight or routes.match):
        return replace(routes, candidate_weight=0, match=(), sticky=None)
    if stable_ready is False and candidate_ready is True and running and routes.candidate_weight < 100:
        return replace(routes, candidate_weight=100, match=(), sticky=None)
    return routes


def why(routes: Routes, wanted: Routes, stable: str, candidate: str) -> str:
    """The Event message for a failover from ``routes`` (desired) to ``wanted`` (effective)."""
    if wanted.candidate_weight > routes.candidate_weight:
        return (
            f"stable {stable} has no Ready pod: all traffic to the candidate {candidate} until it is back "
            f"(wanted {100 - routes.candidate_weight}/{routes.candidate_weight})"
        )
    return (
        f"candidate {candidate} is not ready: its {routes.candidate_weight}% (and header matches) to stable "
        f"{stable} until it is"
    )
