"""KServe router: canary by ``spec.predictor.canaryTrafficPercent`` on one InferenceService.

KServe's own canary model (Knative mode, formerly "Serverless"): when the predictor spec changes,
Knative creates a new revision; ``canaryTrafficPercent: N`` sends N % to that latest *ready*
revision and the rest to the previously rolled-out one. So with this router the candidate is "the
ISVC's latest revision" and the stable is "its previous rolled-out revision"; whoever deploys the
candidate (``helm upgrade``, a GitOps commit) changes the predictor, and this router only moves the
percent.

Limits, enforced (``UnsupportedRouteError``, never silently dropped):
- no mirroring (shadow) and no header/cookie match (A/B by cohort): KServe has no such field;
- no sticky split;
- no canary at all in Standard (formerly "RawDeployment") or ModelMesh mode: no revisions, and
  KServe reads ``canaryTrafficPercent`` only in Knative mode (v0.20.0's Standard-mode canary,
  ``spec.canary``, wants a predictor with a storage URI or model; the chart's Bento carries its
  models in the image): ``ensure`` and ``set_routes`` refuse it rather than write a field KServe
  would keep and ignore.

The mode is read as KServe v0.20.0 decides it (controller/v1beta1/inferenceservice/utils/utils.go
``GetDeploymentMode``): ``status.deploymentMode`` (which KServe records at its first reconcile and
then never lets change), else the ``serving.kserve.io/deploymentMode`` annotation, old names and
new, else KServe's default, ``deploy.defaultDeploymentMode`` of its ``inferenceservice-config``
ConfigMap (read when the controller may; the chart's Role does not grant it). When none of them
can be read the mode is not known, and ``ensure`` raises a ``RouterError`` (retried: KServe
records the mode when it reconciles) that says how to name it; it never guesses one.
Absent ``canaryTrafficPercent`` means the latest revision takes 100 %, so ``get_routes`` reads it
as candidate weight 100; ``finalize`` writes 0 (everything to the previous rolled-out revision).

``candidate_readiness`` reads the status (conditions Ready/PredictorReady, latest created vs
latest ready revision, observedGeneration) so the controller moves no traffic to a candidate that
is not serving; ``stable_readiness`` reads the same status for the version that serves users
meanwhile, so that the controller holds a rollout whose baseline is down. Who calls it: the
controller (``registry.make_router("kserve", ...)``), and the controller's readiness checks for
every router provider whose backends are InferenceServices.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from rollout.errors import RolloutError, RouterError, UnsupportedRouteError, excerpt
from rollout.k8s.client import INFERENCE_SERVICE, KubeClient, Obj
from rollout.routers.base import Routes, RouteTarget

DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
# KServe v0.20.0 pkg/constants/constants.go: DeploymentModeType and ParseDeploymentMode
KNATIVE, STANDARD, MODEL_MESH = "Knative", "Standard", "ModelMesh"
LEGACY_MODES = {"Serverless": KNATIVE, "RawDeployment": STANDARD}  # deprecated names -> current
KNOWN_MODES = {KNATIVE, STANDARD, MODEL_MESH}
NO_REVISION_MODES = {STANDARD, MODEL_MESH}
# where KServe keeps its default mode (constants.InferenceServiceConfigMapName, KServeNamespace)
KSERVE_NAMESPACE = "kserve"
KSERVE_CONFIG_MAP = "inferenceservice-config"


def normalize_mode(mode: object) -> str | None:
    """KServe's current name of a mode name, old or new; None for anything KServe does not know."""
    if not isinstance(mode, str):
        return None
    mode = LEGACY_MODES.get(mode, mode)
    return mode if mode in KNOWN_MODES else None


def default_mode_from_config(config_map: Obj) -> str | None:
    """``deploy.defaultDeploymentMode`` of KServe's inferenceservice-config ConfigMap, normalized
    (v1beta1/configmap.go ``NewDeployConfig``); None when it names none KServe knows."""
    raw = (config_map.get("data") or {}).get("deploy")
    try:
        deploy = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        return None
    return normalize_mode(deploy.get("defaultDeploymentMode")) if isinstance(deploy, dict) else None


def named_mode(isvc: Obj) -> str | None:
    """Pure: the mode ``isvc`` names, in KServe's own order (``GetDeploymentMode``):
    ``status.deploymentMode``, then the annotation (a value KServe does not know counts as none);
    None when it names none. A status value KServe never writes is UnsupportedRouteError."""
    meta = isvc.get("metadata") or {}
    reported = (isvc.get("status") or {}).get("deploymentMode")
    if reported:
        mode = normalize_mode(reported)
        if mode is None:
            raise UnsupportedRouteError(
                f"InferenceService {meta.get('namespace', '?')}/{meta.get('name', '?')}: KServe reports "
                f"status.deploymentMode {excerpt(reported, 40)!r}, which this router does not know "
                "(known: Knative, Standard, ModelMesh and the old Serverless, RawDeployment)"
            )
        return mode
    return normalize_mode((meta.get("annotations") or {}).get(DEPLOYMENT_MODE_ANNOTATION))


def deployment_mode(isvc: Obj, default: str | None = None, why_no_default: str = "") -> str:
    """Pure: the mode KServe runs ``isvc`` in: ``named_mode``, else ``default`` (KServe's
    ``deploy.defaultDeploymentMode``, as KServe itself falls back to it). RouterError when neither
    is known, saying how to name one (``why_no_default``: why the default is not known)."""
    mode = named_mode(isvc) or default
    if mode is not None:
        return mode
    meta = isvc.get("metadata") or {}
    annotated = (meta.get("annotations") or {}).get(DEPLOYMENT_MODE_ANNOTATION)
    found = (
        f"its {DEPLOYMENT_MODE_ANNOTATION} annotation {excerpt(annotated, 40)!r} is no mode KServe knows"
        if annotated
        else f"it has no {DEPLOYMENT_MODE_ANNOTATION} annotation"
    )
    raise RouterError(
        f"InferenceService {meta.get('namespace', '?')}/{meta.get('name', '?')}: deployment mode not "
        f"known: KServe has not recorded status.deploymentMode (it does at its first reconcile), {found}, "
        f"and KServe's default is not known{': ' + why_no_default if why_no_default else ''}. Annotate it "
        f"{DEPLOYMENT_MODE_ANNOTATION}: Knative (kserve routing needs revisions), or let the controller "
        f"get KServe's {KSERVE_CONFIG_MAP} ConfigMap",
        delay=5.0,
    )


@dataclass(frozen=True)
class Readiness:
    """Whether a version an InferenceService carries serves, and why not (``ready`` None: not
    known: only ``stable_readiness`` answers that, for a Ready condition that is Unknown)."""

    ready: bool | None
    reason: str
    latest_created: str | None = None
    latest_ready: str | None = None
    previous_rolled_out: str | None = None


def _condition(isvc: Obj, kind: str) -> Obj | None:
    for c in (isvc.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return c
    return None


def candidate_readiness(isvc: Obj) -> Readiness:
    """Pure: is the latest revision of this InferenceService ready to take traffic?"""
    status = isvc.get("status") or {}
    pred = (status.get("components") or {}).get("predictor") or {}
    created, ready_rev = pred.get("latestCreatedRevision"), pred.get("latestReadyRevision")
    common = {
        "latest_created": created,
        "latest_ready": ready_rev,
        "previous_rolled_out": pred.get("previousRolledoutRevision"),
    }
    name = isvc.get("metadata", {}).get("name", "?")
    generation = isvc.get("metadata", {}).get("generation")
    observed = status.get("observedGeneration")
    if generation is not None and observed is not None and observed < generation:
        return Readiness(
            False, f"{name}: KServe has not yet seen generation {generation} (observed {observed})", **common
        )
    if created and ready_rev != created:
        return Readiness(
            False, f"{name}: latest revision {created} is not ready (latest ready: {ready_rev})", **common
        )
    for kind in ("PredictorReady", "Ready"):
        cond = _condition(isvc, kind)
        if cond is None:
            return Readiness(False, f"{name}: no {kind} condition yet", **common)
        if cond.get("status") != "True":
            why = cond.get("message") or cond.get("reason") or cond.get("status")
            return Readiness(False, f"{name}: {kind} is {cond.get('status')}: {why}", **common)
    return Readiness(True, f"{name}: revision {ready_rev or created or '?'} ready", **common)


def stable_readiness(isvc: Obj | None, name: str = "?") -> Readiness:
    """Pure: does the InferenceService that carries stable still serve it? ``isvc`` None: it does
    not exist. In kserve routing mode that is the one InferenceService, whose stable is the
    revision holding the rest of the traffic (KServe's last rolled-out one); in istio /
    gateway-api mode the ``<service>-stable`` object.

    Stable serves while KServe reports ``Ready`` True. ``Ready`` False means it does not, unless
    what failed is only a newer revision than the one serving (the latest created revision is not
    the latest ready one: in kserve mode the candidate, whose readiness ``candidate_readiness``
    reports), since KServe keeps routing to the revision that is ready. No ``Ready`` condition at
    all: KServe has never reported it serving. ``Ready`` Unknown (KServe is rolling a change out,
    the old revision serving meanwhile) is ``ready`` None: not known, the last answer stands."""
    if isvc is None:
        return Readiness(False, f"InferenceService {name} does not exist")
    pred = ((isvc.get("status") or {}).get("components") or {}).get("predictor") or {}
    created, ready_rev = pred.get("latestCreatedRevision"), pred.get("latestReadyRevision")
    serving = pred.get("latestRolledoutRevision") or ready_rev
    common = {
        "latest_created": created,
        "latest_ready": ready_rev,
        "previous_rolled_out": pred.get("previousRolledoutRevision"),
    }
    name = isvc.get("metadata", {}).get("name", name)
    cond = _condition(isvc, "Ready")
    if cond is None:
        return Readiness(False, f"{name}: no Ready condition: KServe has not reported it serving", **common)
    flag = cond.get("status")
    if flag == "True":
        return Readiness(True, f"{name}: Ready", **common)
    why = cond.get("message") or cond.get("reason") or flag
    if flag != "False":
        return Readiness(None, f"{name}: Ready is {flag}: {why}", **common)
    if created and ready_rev and created != ready_rev:
        return Readiness(
            True, f"{name}: only the latest revision {created} failed; {serving} keeps serving", **common
        )
    return Readiness(False, f"{name}: Ready is False: {why}", **common)


def canary_patch(routes: Routes) -> Obj:
    """The merge patch for ``routes``. Pure; UnsupportedRouteError for what KServe cannot express."""
    if routes.mirror_percent:
        raise UnsupportedRouteError(
            "KServe canaryTrafficPercent cannot mirror traffic: use the istio or gateway-api router for shadow"
        )
    if routes.match:
        raise UnsupportedRouteError(
            "KServe canaryTrafficPercent cannot match headers or cookies: use the istio or gateway-api router for A/B by cohort"
        )
    if routes.sticky is not None:
        raise UnsupportedRouteError(
            "KServe canaryTrafficPercent cannot keep users on one version (sticky): use the gateway-api router"
        )
    return {"spec": {"predictor": {"canaryTrafficPercent": routes.candidate_weight}}}


def routes_from_isvc(isvc: Obj) -> Routes:
    pct = (isvc.get("spec", {}).get("predictor") or {}).get("canaryTrafficPercent")
    return Routes(candidate_weight=100 if pct is None else int(pct))


def traffic_from_status(isvc: Obj) -> int | None:
    """Percent the latest revision really receives, per KServe's status (None until reported)."""
    traffic = ((isvc.get("status") or {}).get("components") or {}).get("predictor", {}).get("traffic")
    if not traffic:
        return None
    return sum(int(t.get("percent") or 0) for t in traffic if t.get("latestRevision"))


class KServeRouter:
    """TrafficRouter over one InferenceService's ``canaryTrafficPercent``."""

    def __init__(
        self, client: KubeClient, namespace: str, name: str, kserve_namespace: str = KSERVE_NAMESPACE
    ) -> None:
        self.client, self.namespace, self.name = client, namespace, name
        self.kserve_namespace = kserve_namespace
        self.target: RouteTarget | None = None

    def _kserve_default(self) -> tuple[str | None, str]:
        """KServe's default mode from its ConfigMap, or None and why it is not known."""
        where = f"ConfigMap {self.kserve_namespace}/{KSERVE_CONFIG_MAP}"
        try:
            cm = self.client.call(
                where, self.client.core.read_namespaced_config_map, KSERVE_CONFIG_MAP, self.kserve_namespace
            )
        except RolloutError as exc:
            return None, excerpt(str(exc))
        mode = default_mode_from_config(self.client.api_client.sanitize_for_serialization(cm))
        return mode, "" if mode else f"{where} names no deploy.defaultDeploymentMode KServe knows"

    def mode(self, isvc: Obj) -> str:
        """The mode KServe runs ``isvc`` in (``deployment_mode``; KServe's default read only when
        the object names none)."""
        return named_mode(isvc) or deployment_mode(isvc, *self._kserve_default())

    def _refuse_without_revisions(self, isvc: Obj) -> None:
        """UnsupportedRouteError when KServe runs ``isvc`` in a mode without revisions: only its
        Knative reconciler reads canaryTrafficPercent (reconcilers/knative/ksvc_reconciler.go);
        Standard mode would keep the field and ignore it, all traffic on the one Deployment."""
        mode = self.mode(isvc)
        if mode in NO_REVISION_MODES:
            raise UnsupportedRouteError(
                f"InferenceService {self.namespace}/{self.name} runs in KServe's {mode} mode, which has no "
                "revisions, so KServe ignores canaryTrafficPercent there: use Knative mode or the istio / "
                "gateway-api router"
            )

    def ensure(self, target: RouteTarget) -> None:
        """Check the InferenceService exists and can canary. Nothing is written: KServe copies an
        InferenceService's labels and annotations into its Knative revision template
        (components/predictor.go buildObjectMeta, reconcilers/knative/ksvc_reconciler.go), so
        any change there is a new revision that takes the candidate's place; and the routes are
        the percent alone, read back without a recorded target."""
        self._refuse_without_revisions(self.client.get(INFERENCE_SERVICE, self.namespace, self.name))
        self.target = target

    def readiness(self) -> Readiness:
        return candidate_readiness(self.client.get(INFERENCE_SERVICE, self.namespace, self.name))

    def set_routes(self, routes: Routes) -> None:
        """Write the candidate's percent; refused (nothing written) in a mode without revisions,
        checked on the object being written, not only at ``ensure``."""
        self._write_percent(canary_patch(routes)["spec"]["predictor"]["canaryTrafficPercent"], check=True)

    def _write_percent(self, pct: int, check: bool) -> None:
        def mutate(isvc: Obj) -> Obj | None:
            if check:
                self._refuse_without_revisions(isvc)
            pred = isvc["spec"].setdefault("predictor", {})
            if pred.get("canaryTrafficPercent") == pct:
                return None
            pred["canaryTrafficPercent"] = pct
            return isvc

        self.client.update(INFERENCE_SERVICE, self.namespace, self.name, mutate)

    def get_routes(self) -> Routes:
        return routes_from_isvc(self.client.get(INFERENCE_SERVICE, self.namespace, self.name))

    def finalize(self, target: RouteTarget) -> None:
        """All traffic back to the previous rolled-out revision (KServe's rollback: percent 0).
        In a mode without revisions nothing is written: this router never split such an object
        (``ensure`` and ``set_routes`` refuse it), so there is nothing to undo. A mode not known
        (yet) does not hold a deletion up: percent 0 is the rollback in Knative mode and changes
        nothing in the others."""
        self.target = target
        isvc = self.client.get(INFERENCE_SERVICE, self.namespace, self.name)
        try:
            mode: str | None = self.mode(isvc)
        except RouterError:
            mode = None
        if mode in NO_REVISION_MODES:
            return
        self._write_percent(0, check=False)
