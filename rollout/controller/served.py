"""What the pods behind a predictor Service say they serve: the controller's check that a backend
runs the model the ModelRollout names, asked of the pods themselves.

An InferenceService's status is not that check. In Standard mode (istio, gateway-api, traefik routing)
KServe v0.20.0 copies the predictor Deployment's ``observedGeneration`` there and keeps ``Ready``
True through a rolling update while the old pods still answer; and its spec says what should run,
not what does. So:

- ``PodProbe`` (the edge: the only I/O of this module) reads the Service's EndpointSlices through
  the API (pod IPs and the target port: no cluster DNS, no ClusterIP that picks one pod) and asks
  every Ready endpoint ``GET /v2/models/<name>``, the Open Inference Protocol model metadata the
  Bento serves (bentos/app.py): ``name``, ``versions[0]`` and ``parameters.digest``, the sha256 of
  the artifact the server loaded. A server of another model name answers 404, still with its
  ``X-Model-Name`` / ``X-Model-Version`` headers. Each request has 2 s; a failure is an answer
  whose model is unknown, with why, never an exception out of a reconcile. It also reads a
  Deployment's rollout (``progress``).
- ``check`` (pure): do all Ready endpoints serve ``model`` - its tag, and its digest when the
  ModelRollout pins one? A ``Verdict``: ok, or the reason (``ServedModelMismatch``: an endpoint
  answers another model; ``ServedModelUnknown``: no endpoint to ask, or no answer) and a message
  naming what was expected and what was found.
- ``rollout_progress`` (pure): is a Deployment's rollout done (every replica updated and
  available, no old one left), as ``kubectl rollout status`` decides it.
- ``overlay`` / ``stale`` (pure): a verdict that holds the candidate, as the ``CandidateReady``
  condition of ``.status``.

``ServingProbe`` is the Protocol the reconciler and the hand-off take; ``Memo`` asks each question
once per reconcile. Who calls it: rollout.controller.readiness (the candidate, before any traffic
moves to it), rollout.controller.handoff (stable, before the hand-off completes) and
rollout.controller.reconciler (which builds a ``PodProbe`` unless given another).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from rollout.errors import NotFoundError, RolloutError, excerpt
from rollout.k8s.client import KubeClient, Obj
from rollout.spec import ModelRef

TIMEOUT = 2.0  # seconds per request to a pod
CONDITION = "CandidateReady"
VERIFIED, MISMATCH, UNKNOWN = "ServedModelVerified", "ServedModelMismatch", "ServedModelUnknown"


@dataclass(frozen=True)
class Answer:
    """What one endpoint said it serves (``name`` None: unknown, ``error`` says why)."""

    address: str
    pod: str | None = None
    name: str | None = None
    version: str | None = None
    digest: str | None = None
    error: str | None = None

    @property
    def model(self) -> str:
        """``iris:v2 (sha256:0123456789ab...)``, as a message names it."""
        if self.name is None:
            return "?"
        tag = f"{self.name}:{self.version}" if self.version else self.name
        return f"{tag} ({self.digest[:19]}...)" if self.digest else tag


@dataclass(frozen=True)
class Serving:
    """The answers of the Ready endpoints of one Service (``error``: the endpoints were not read)."""

    service: str
    answers: tuple[Answer, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class Progress:
    """A Deployment's rollout: done, or why not."""

    name: str
    done: bool
    message: str


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str
    message: str


class ServingProbe(Protocol):
    """What a backend serves: its Service's Ready endpoints' answers, and its Deployment's rollout."""

    def serving(self, namespace: str, service: str, model: ModelRef) -> Serving: ...

    def progress(self, namespace: str, deployment: str) -> Progress: ...


# --- pure decisions --------------------------------------------------------------------------------


def _serves(answer: Answer, model: ModelRef) -> bool:
    name, _, version = model.model.partition(":")
    if answer.name != name or (version and answer.version != version):
        return False
    return model.digest is None or answer.digest == model.digest


def check(serving: Serving, model: ModelRef, role: str) -> Verdict:
    """Pure: do all Ready endpoints of ``serving`` serve ``model`` (the rollout's ``role``)?"""
    svc = serving.service
    wanted = model.model + (f" pinned to {model.digest}" if model.digest else "")
    if serving.error is not None:
        return Verdict(False, UNKNOWN, f"{svc}: cannot ask the pods what they serve: {serving.error}")
    n = len(serving.answers)
    if n == 0:
        return Verdict(False, UNKNOWN, f"{svc} has no Ready endpoint to ask what it serves ({role} {wanted})")
    wrong = [a for a in serving.answers if a.name is not None and not _serves(a, model)]
    if wrong:
        found = ", ".join(sorted({a.model for a in wrong}))
        return Verdict(
            False,
            MISMATCH,
            f"{svc}: {len(wrong)} of {n} Ready endpoints serve {found}, but the ModelRollout's {role} is "
            f"{wanted}: no traffic moves until its pods serve it",
        )
    silent = [a for a in serving.answers if a.name is None]
    if silent:
        return Verdict(
            False,
            UNKNOWN,
            f"{svc}: {len(silent)} of {n} Ready endpoints did not say what they serve ({role} {wanted}): "
            f"{silent[0].address}: {silent[0].error}",
        )
    return Verdict(True, VERIFIED, f"{svc}: {n} of {n} Ready endpoints serve {serving.answers[0].model}")


def rollout_progress(deployment: Obj | None, name: str) -> Progress:
    """Pure: is ``deployment``'s rollout done - its generation observed, every replica updated and
    available, no old replica left? (``kubectl rollout status``.) None: it does not exist."""
    if deployment is None:
        return Progress(name, False, f"Deployment {name} does not exist yet")
    want = (deployment.get("spec") or {}).get("replicas", 1)
    st = deployment.get("status") or {}
    generation = (deployment.get("metadata") or {}).get("generation", 0)
    updated, total = st.get("updatedReplicas") or 0, st.get("replicas") or 0
    available = st.get("availableReplicas") or 0
    if (st.get("observedGeneration") or 0) < generation:
        why = f"generation {generation} not observed yet"
    elif updated < want:
        why = f"{updated} of {want} replicas updated"
    elif total > updated:
        why = f"{total - updated} old replica(s) still running"
    elif available < updated:
        why = f"{available} of {updated} updated replicas available"
    else:
        return Progress(name, True, f"Deployment {name} rolled out ({updated} replicas)")
    return Progress(name, False, f"Deployment {name} is rolling out: {why}")


def ready_endpoints(slices: list[Obj]) -> dict[str, str | None]:
    """Pure: ``host:port`` -> pod name of every Ready, not terminating endpoint of ``slices``
    (a ``ready`` that is not set counts as Ready, as the EndpointSlice API says)."""
    out: dict[str, str | None] = {}
    for s in slices:
        ports = [p for p in s.get("ports") or [] if p.get("port") and p.get("protocol", "TCP") == "TCP"]
        if not ports:
            continue
        port, six = ports[0]["port"], s.get("addressType") == "IPv6"
        for e in s.get("endpoints") or []:
            cond = e.get("conditions") or {}
            if cond.get("ready") is False or cond.get("terminating") is True or not e.get("addresses"):
                continue
            host = f"[{e['addresses'][0]}]" if six else e["addresses"][0]
            out[f"{host}:{port}"] = (e.get("targetRef") or {}).get("name")
    return out


def answer_of(address: str, pod: str | None, status: int, headers: dict[str, str], body: bytes) -> Answer:
    """Pure: what ``GET /v2/models/<name>`` answered says is served."""
    name, version = headers.get("x-model-name"), headers.get("x-model-version")
    text = excerpt(body.decode("utf-8", "replace"), 120)
    if status == 200:
        try:
            meta: Any = json.loads(body)
            name = str(meta["name"])
            version = str((meta.get("versions") or [version])[0] or "") or None
            digest = (meta.get("parameters") or {}).get("digest")
        except (ValueError, KeyError, TypeError, AttributeError):
            return Answer(address, pod, error=f"answered 200 with no model metadata: {text}")
        return Answer(address, pod, name, version, str(digest) if digest else None)
    if name:  # another model's server: 404, with the headers every answer of the Bento carries
        return Answer(address, pod, name, version)
    return Answer(address, pod, error=f"answered HTTP {status}: {text}")


def overlay(status: Obj, verdict: Verdict | None) -> Obj:
    """``status`` whose CandidateReady condition says why ``verdict`` holds the candidate."""
    if verdict is None or verdict.ok:
        return status
    for c in status.get("conditions") or []:
        if c.get("type") == CONDITION:
            c.update(status="False", reason=verdict.reason, message=verdict.message)
    return status


def stale(status: Obj | None, verdict: Verdict | None) -> bool:
    """True when ``status``'s CandidateReady condition does not say what ``verdict`` says (or still
    says what an earlier verdict said): the status is worth writing even if the state is not."""
    cond = next((c for c in (status or {}).get("conditions") or [] if c.get("type") == CONDITION), None)
    if cond is None:
        return False
    if verdict is None or verdict.ok:
        return cond.get("reason") in (MISMATCH, UNKNOWN)
    return (cond.get("reason"), cond.get("message")) != (verdict.reason, verdict.message)


# --- the edge --------------------------------------------------------------------------------------


class PodProbe:
    """Asks the pods over HTTP, found through the API server (the controller's client)."""

    def __init__(
        self, client: KubeClient, timeout: float = TIMEOUT, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.client, self.timeout, self.transport = client, timeout, transport

    def serving(self, namespace: str, service: str, model: ModelRef) -> Serving:
        try:
            endpoints = ready_endpoints(self.client.list_endpoint_slices(namespace, service))
        except RolloutError as exc:
            return Serving(service, error=str(exc))
        name = model.model.partition(":")[0]
        # trust_env off: a proxy of the controller's environment is not the way to a pod
        with httpx.Client(timeout=self.timeout, trust_env=False, transport=self.transport) as http:
            answers = tuple(self._ask(http, address, pod, name) for address, pod in sorted(endpoints.items()))
        return Serving(service, answers)

    @staticmethod
    def _ask(http: httpx.Client, address: str, pod: str | None, name: str) -> Answer:
        try:
            r = http.get(f"http://{address}/v2/models/{name}")
        except httpx.HTTPError as exc:
            return Answer(
                address, pod, error=f"{type(exc).__name__}: {excerpt(str(exc) or 'no answer', 120)}"
            )
        return answer_of(address, pod, r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content)

    def progress(self, namespace: str, deployment: str) -> Progress:
        try:
            found: Obj | None = self.client.get_deployment(namespace, deployment)
        except NotFoundError:
            found = None
        except RolloutError as exc:
            return Progress(deployment, False, f"cannot read Deployment {deployment}: {exc}")
        return rollout_progress(found, deployment)


class Memo:
    """``probe``, asking each question once: one reconcile's engine steps share the answers."""

    def __init__(self, probe: ServingProbe) -> None:
        self.probe = probe
        self._serving: dict[tuple[str, str, str, str | None], Serving] = {}
        self._progress: dict[tuple[str, str], Progress] = {}

    def serving(self, namespace: str, service: str, model: ModelRef) -> Serving:
        key = (namespace, service, model.model, model.digest)
        if key not in self._serving:
            self._serving[key] = self.probe.serving(namespace, service, model)
        return self._serving[key]

    def progress(self, namespace: str, deployment: str) -> Progress:
        if (namespace, deployment) not in self._progress:
            self._progress[(namespace, deployment)] = self.probe.progress(namespace, deployment)
        return self._progress[(namespace, deployment)]
