"""The rollout spec: one source of truth for the YAML file, the ModelRollout CRD and Helm values.

Users write a ``ModelRollout`` (YAML) for ``rollout run``; the Kubernetes operator reads the same
object from the API server. The CRD's openAPIV3Schema and the chart's values schema are generated
from (or tested against) these pydantic models. Field names are camelCase on the wire, like every
Kubernetes API. Who calls it: the CLI (``load_rollout``), the engine and strategies (read-only),
the controller and the packaging generators.
"""

from __future__ import annotations

import json
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from rollout.addresses import MAX_URL, URL_PATTERN, check_metrics_url
from rollout.errors import SpecError

API_GROUP = "bento-rollout.io"
API_VERSION = f"{API_GROUP}/v1alpha1"
KIND = "ModelRollout"

_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")  # DURATION_PATTERN, the CRD's
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
DURATION_PATTERN = r"^\d+(\.\d+)?(ms|s|m|h)?$"


def parse_duration(value: Any) -> float:
    """'30s', '2m', '1h', '500ms' or a whole number of seconds -> seconds (float). Exactly what the
    CRD admits (int-or-string with DURATION_PATTERN), so a spec ``rollout run`` takes is one the
    API server takes: no fraction without a unit (1.5 -> '1.5s'), no spaces."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '30s', '2m', '500ms'")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"invalid duration {value!r}: a fraction needs a unit, as in '{value}s'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION_RE.match(value)):
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    else:
        raise ValueError(f"invalid duration {value!r}: use a number of seconds or '30s', '2m', '1h', '500ms'")
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError(f"invalid duration {value!r}: must be a finite, non-negative time")
    return seconds


def _duration_doc(text: str) -> str:
    """A Duration field's description: what it is, then the format of every duration."""
    return f"{text} {DURATION_FORMAT}"


def format_duration(seconds: float) -> str:
    if seconds and seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds == int(seconds):
        s = int(seconds)
        if s and s % 3600 == 0:
            return f"{s // 3600}h"
        if s and s % 60 == 0:
            return f"{s // 60}m"
        return f"{s}s"
    return f"{seconds}s"


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN, "x-kubernetes-int-or-string": True}),
]
DURATION_FORMAT = "A duration: seconds, or a number with ms, s, m or h (500ms, 30s, 1.5m, 2h)."
Percent = Annotated[int, Field(ge=0, le=100)]
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
MODEL_TAG = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}(:[A-Za-z0-9_.-]{1,128})?$"
HEADER_NAME = r"^[A-Za-z0-9-]{1,64}$"
MODEL_DIGEST = r"^sha256:[a-f0-9]{64}$"
# http(s)://host[:port][/path]; no user info, query, fragment, link-local or metadata address
# (rollout/addresses.py); the controller fetches only the addresses its allow-list names
MetricsURL = Annotated[  # the validator runs first (its message says what is wrong), then the pattern
    str, Field(pattern=URL_PATTERN, max_length=MAX_URL), BeforeValidator(check_metrics_url)
]


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True, use_enum_values=False
    )


def _exactly_one(model: BaseModel, names: list[str], what: str) -> None:
    set_ = [n for n in names if getattr(model, n) is not None]
    if len(set_) != 1:
        wire = [to_camel(n) for n in names]
        got = ", ".join(to_camel(n) for n in set_) or "none"
        raise ValueError(f"{what} needs exactly one of {', '.join(wire)} (got {got})")


# --- targets -------------------------------------------------------------------------------------

# Field descriptions are the API documentation: they become the CRD's (``kubectl explain``) and the
# chart's values schema's. Write them for the user of the field, as Kubernetes' own API docs are:
# what it means, units, default, allowed values, how it interacts (tests/unit/test_field_docs.py).


class ModelRef(_Model):
    """A model version: a BentoML model store tag such as `iris:v2`, optionally pinned to its artifact's digest."""

    # digest: what `rollout models` shows; the model server (bentos/service.py) refuses any other
    # artifact under the tag, whoever rewrote the model store (rollout/registry.py)

    model: str = Field(
        pattern=MODEL_TAG,
        description=(
            "BentoML model tag, name or name:version, as in the model store (`rollout models` lists "
            "them). The version part (after ':') is the `version` label of the model's metric series."
        ),
    )
    digest: str | None = Field(
        default=None,
        pattern=MODEL_DIGEST,
        description=(
            "Pins the model's artifact: sha256: and 64 hex digits, as `rollout models` prints it. A "
            "server started with the pin (BENTO_MODEL_DIGEST; the chart's models.stableDigest / "
            "candidateDigest) refuses any other artifact under the tag and never becomes ready. "
            "`rollout run` starts its servers with it; the controller holds the rollout while the "
            "InferenceService's server runs without it. Absent: not pinned."
        ),
    )
    replicas: int = Field(
        default=1,
        ge=0,
        le=100,
        description=(
            "Reserved, 0-100, default 1: neither `rollout run` (one server per version) nor the "
            "controller reads it; on a cluster the chart's replicas.min / replicas.max size the "
            "predictors."
        ),
    )


# --- routing -------------------------------------------------------------------------------------


class HeaderMatch(_Model):
    """Requests whose header (or cookie) has exactly this value go to the candidate."""

    header: str | None = Field(
        default=None,
        pattern=HEADER_NAME,
        description="HTTP header to match (letters, digits and '-', up to 64). Exactly one of header, cookie.",
    )
    cookie: str | None = Field(
        default=None,
        pattern=HEADER_NAME,
        description="Cookie to match instead of a header (letters, digits and '-', up to 64).",
    )
    value: str = Field(
        min_length=1, max_length=256, description="The exact value to match, 1-256 characters."
    )

    @model_validator(mode="after")
    def _one(self) -> HeaderMatch:
        _exactly_one(self, ["header", "cookie"], "a match")
        return self


class StickyKey(_Model):
    """The header or cookie that identifies a user: the router hashes its value to keep each user on one version."""

    header: str | None = Field(
        default=None,
        pattern=HEADER_NAME,
        description=(
            "HTTP header whose value identifies a user (e.g. x-user-id). Exactly one of header, cookie."
        ),
    )
    cookie: str | None = Field(
        default=None,
        pattern=HEADER_NAME,
        description="Cookie whose value identifies a user, instead of a header.",
    )

    @model_validator(mode="after")
    def _one(self) -> StickyKey:
        _exactly_one(self, ["header", "cookie"], "sticky")
        return self


class RouterProvider(StrEnum):
    """The traffic router that applies a rollout's routes."""

    NGINX = "nginx"
    KSERVE = "kserve"
    ISTIO = "istio"
    GATEWAY_API = "gateway-api"
    TRAEFIK = "traefik"


class RouterSpec(_Model):
    """The traffic router that applies the weights, mirrors and matches, and its objects' names."""

    provider: RouterProvider = Field(
        default=RouterProvider.NGINX,
        description=(
            "nginx: the local data plane of `rollout run` (its default). kserve: canaryTrafficPercent "
            "of one InferenceService (KServe's Knative mode; no mirror, match or sticky). istio: a "
            "VirtualService over the <service>-stable and <service>-candidate InferenceServices "
            "(no sticky). gateway-api: an HTTPRoute over the same. traefik: a TraefikService over the "
            "same (Traefik's CRD provider: weights and mirror; no header match, so no blue/green "
            "preview and no sticky or matched A/B). In a cluster, nginx written out "
            "makes the ModelRollout Invalid; left out, the controller's --router (the chart's "
            "routing.mode) applies."
        ),
    )
    # provider-specific names of the routing object (VirtualService / HTTPRoute / InferenceService)
    name: str | None = Field(
        default=None,
        pattern=DNS_LABEL,
        description=(
            "Name of the routing object: the InferenceService (kserve), VirtualService (istio), "
            "HTTPRoute (gateway-api) or TraefikService (traefik). Default: the service name. nginx "
            "ignores it."
        ),
    )
    gateway: str | None = Field(
        default=None,
        description=(
            "Gateway the routes attach to: istio, the VirtualService's gateway (name or "
            "namespace/name); gateway-api, the HTTPRoute's parent Gateway (a name in the rollout's "
            "namespace). Absent: an existing object's gateways or parentRefs are kept. kserve, "
            "traefik and nginx ignore it."
        ),
    )


# --- analysis ------------------------------------------------------------------------------------


class JudgeKind(StrEnum):
    """How a metric's measurements are judged (rollout/analysis/registry.py)."""

    THRESHOLD = "threshold"
    COMPARATIVE = "comparative"
    SEQUENTIAL = "sequential"


class Range(_Model):
    """The passing range of a metric's headline value: min, max or both (min <= max)."""

    min: float | None = Field(
        default=None, description="Lowest passing value, inclusive: a value below it is Failed."
    )
    max: float | None = Field(
        default=None, description="Highest passing value, inclusive: a value above it is Failed."
    )

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.min is None and self.max is None:
            raise ValueError("a range needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class MetricProviderKind(StrEnum):
    PROMETHEUS = "prometheus"


class Direction(StrEnum):
    """Which way a metric's value is better."""

    HIGHER_IS_BETTER = "higher"
    LOWER_IS_BETTER = "lower"


class JudgeSpec(_Model):
    """How a metric's measurements are judged: Successful, Failed, Inconclusive (no or too little data) or Error."""

    kind: JudgeKind = Field(
        default=JudgeKind.THRESHOLD,
        description=(
            "threshold (default): the candidate's headline value (error rate, accuracy, p99 latency, "
            "PSI, KS distance, or a raw query's value) against `threshold`. comparative: candidate "
            "against stable over the same window, a fixed-sample test (two-proportion z, Mann-Whitney "
            "U, chi-square, KS, Welch t for mae and rmse): Failed only when a regression is "
            "significant at alpha and at least minEffect. sequential: an always-valid test (mSPRT) on "
            "data since the analysis started, valid at every look; error-rate, accuracy, latency-p99, "
            "confidence-shift, mae and rmse only. "
            "comparative and sequential need a built-in template other than shadow-agreement."
        ),
    )
    # comparative / sequential: the smallest regression that matters (absolute for rates, relative
    # for latency, mae and rmse, e.g. 0.01 = one percentage point or 1 %), the false-positive rate,
    # min samples.
    min_effect: float = Field(
        default=0.01,
        gt=0,
        le=10,
        description=(
            "comparative, sequential: the smallest regression that matters; a smaller one is never "
            "Failed. Absolute for rates (0.01 = one percentage point), relative for latency (0.2 = "
            "20 % slower) and for a regressor's mae and rmse (0.1 = MAE or RMSE 10 % above stable's), "
            "PSI or KS distance for shifts. On the A/B test's metric, the size of "
            "difference its test is tuned to find. Above 0, at most 10; default 0.01."
        ),
    )
    alpha: float = Field(
        default=0.01,
        gt=0,
        lt=0.5,
        description=(
            "comparative, sequential: the false-positive rate, i.e. the chance of failing a candidate "
            "that is no worse. Above 0, below 0.5; default 0.01. threshold ignores it."
        ),
    )
    min_samples: int = Field(
        default=100,
        ge=1,
        le=10_000_000,
        description=(
            "Observations a version needs before a verdict other than Inconclusive: each version's "
            "for comparative and sequential (default 100); the candidate's for threshold, only when "
            "written out (threshold has no minimum by default). 1-10000000."
        ),
    )


class MetricSpec(_Model):
    """One analysis metric: a built-in template or a raw PromQL query, and how its measurements are judged."""

    name: str = Field(
        pattern=DNS_LABEL,
        description="Name of the metric, unique in this analysis (a DNS label); events, status and abTest.metric use it.",
    )
    template: str | None = Field(
        default=None,
        description=(
            "Built-in template, queried for stable and candidate over the same window: error-rate "
            "(5xx share), latency-p99 (seconds), accuracy (from delayed feedback labels), "
            "prediction-shift (PSI of predicted classes), confidence-shift (KS distance), "
            "feature-drift (largest per-feature PSI), shadow-agreement (candidate gave stable's "
            "answer; threshold only); for regressors mae and rmse (mean absolute and root mean "
            "squared error of labelled predictions) and prediction-value-shift (KS distance of "
            "predicted values; threshold or comparative). Exactly one of template, query."
        ),
    )
    query: str | None = Field(
        default=None,
        max_length=4096,
        description=(
            "Raw PromQL giving one number for the candidate; threshold judge only. {{service}}, "
            "{{stable}}, {{candidate}}, {{version}} (the candidate's: the part of its tag after ':') "
            "and {{window}} (a PromQL duration such as 30s) are filled in. Exactly one of template, query."
        ),
    )
    threshold: Range | None = Field(
        default=None,
        description="Passing range of the headline value. Required by the threshold judge; ignored by the others.",
    )
    judge: JudgeSpec = Field(
        default=JudgeSpec(), description="How measurements are judged. Default: threshold."
    )
    direction: Direction | None = Field(
        default=None,
        description=(
            "lower or higher: which way the value is better. Only the A/B test reads it, to name the "
            "winner on its metric. Left out: the template's (higher for accuracy and "
            "shadow-agreement, lower for the others); lower for a raw query. The judges ignore it "
            "(a regression is what the template counts as bad)."
        ),
    )
    interval: Duration | None = Field(
        default=None,
        description=_duration_doc("Time between this metric's measurements, instead of analysis.interval."),
    )
    failure_limit: int = Field(
        default=1,
        ge=0,
        le=1000,
        description=(
            "Failed measurements in a row tolerated: one more rolls the rollout back (AnalysisFailed); "
            "0: the first Failed does. A Successful or Inconclusive measurement resets the count, an "
            "Error does not. Meanwhile the gate holds. 0-1000, default 1."
        ),
    )
    inconclusive_limit: int = Field(
        default=0,
        ge=0,
        le=1000,
        description=(
            "Inconclusive measurements in a row tolerated before the rollout pauses for a human "
            "(Paused, InconclusiveLimit: promote, resume or abort). 0 (default): never pauses; the "
            "gate holds and progressDeadline applies. 0-1000."
        ),
    )
    provider: MetricProviderKind = Field(
        default=MetricProviderKind.PROMETHEUS,
        description=(
            "Where the metric is queried: prometheus (spec.metricsAddress), the only provider; "
            "any other name is refused, never queried on Prometheus instead. Default prometheus."
        ),
    )

    @model_validator(mode="after")
    def _source(self) -> MetricSpec:
        _exactly_one(self, ["template", "query"], f"metric {self.name!r}")
        if self.judge.kind == JudgeKind.THRESHOLD and self.threshold is None:
            raise ValueError(f"metric {self.name!r} uses the threshold judge and needs a threshold")
        return self


class AnalysisSpec(_Model):
    """The metrics that gate the rollout, and when they are measured."""

    interval: Duration = Field(
        default=10.0,
        description=_duration_doc(
            "Time between measurements of each metric (a metric's interval overrides it); also the "
            "default query window. Default 10s."
        ),
    )
    window: Duration | None = Field(
        default=None,
        description=_duration_doc(
            "PromQL range window: how far back a measurement looks. Default: the metric's interval. "
            "Sequential metrics and the A/B test's metric query everything since the analysis "
            "started; after Inconclusive results the window grows by one window per result in a row."
        ),
    )
    start_delay: Duration = Field(
        default=0.0,
        description=_duration_doc(
            "Wait this long after the analysis starts (the candidate gets traffic, a mirror or the "
            "preview) before the first measurement. Default 0s."
        ),
    )
    metrics: list[MetricSpec] = Field(
        default_factory=list,
        max_length=50,
        description=(
            "The metrics, at most 50, names unique. A step completes, and the candidate is promoted, "
            "only while every metric's newest verdict is Successful (the gate holds otherwise). "
            "Empty: steps wait on time and routing alone."
        ),
    )
    # consecutive provider errors (Prometheus unreachable) before the rollout is rolled back;
    # while errors last the rollout never promotes and holds its weights.
    error_limit: int = Field(
        default=5,
        ge=1,
        le=1000,
        description=(
            "Error measurements (Prometheus unreachable, query failed) in a row tolerated per metric: "
            "one more rolls back (MetricsUnavailable). While a metric's newest is an Error the rollout "
            "is Paused (MetricsUnavailable), weights held, never promoting; it resumes by itself. "
            "1-1000, default 5."
        ),
    )

    @model_validator(mode="after")
    def _unique(self) -> AnalysisSpec:
        names = [m.name for m in self.metrics]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"metric names must be unique: {', '.join(dup)} repeated")
        return self


# --- strategies ----------------------------------------------------------------------------------


class Pause(_Model):
    """Wait at the current weight: for a time, or until promoted."""

    duration: Duration | None = Field(
        default=None,
        description=_duration_doc(
            "How long to wait (the analysis keeps running; no step completes while it holds). "
            "Absent: until `rollout promote` (Paused, WaitingForPromotion; progressDeadline does not "
            "count the wait)."
        ),
    )


class StepAnalysis(_Model):
    """Run the analysis at the current weight for this long (or this many intervals)."""

    duration: Duration | None = Field(default=None, description=_duration_doc("Least time at this weight."))
    intervals: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description=(
            "Measurements of each metric needed since the step started, the newest Successful; 1 "
            "when not given. Without metrics the step waits duration, else intervals x "
            "analysis.interval. 1-10000."
        ),
    )


class CanaryStep(_Model):
    """One canary step: exactly one of setWeight, pause, analysis."""

    set_weight: Percent | None = Field(
        default=None,
        description="Percent of user traffic (0-100) to the candidate; done once the router reports it applied.",
    )
    pause: Pause | None = Field(
        default=None, description="Wait at the current weight: for a duration, or until promoted."
    )
    analysis: StepAnalysis | None = Field(
        default=None,
        description="Stay at the current weight until the analysis has passed for a duration or a number of intervals.",
    )

    @model_validator(mode="after")
    def _one(self) -> CanaryStep:
        _exactly_one(self, ["set_weight", "pause", "analysis"], "a canary step")
        return self


class CanaryStrategy(_Model):
    """Move user traffic to the candidate step by step; after the last step it is promoted (100 %)."""

    steps: list[CanaryStep] | None = Field(
        default=None,
        max_length=200,
        description=(
            "The steps in order, 1-200; the candidate is promoted after the last. No step completes "
            "while a metric's newest verdict is not Successful; `rollout promote` ends the current "
            "pause or analysis step. Exactly one of steps, stepWeight."
        ),
    )
    # Flagger-style generated steps when ``steps`` is absent: stepWeight every stepInterval up to maxWeight
    step_weight: int | None = Field(
        default=None,
        ge=1,
        le=100,
        description=(
            "Generate the steps instead: setWeight stepWeight, 2 x stepWeight, ... up to maxWeight, "
            "each followed by analysis for stepInterval. 1-100."
        ),
    )
    max_weight: int = Field(
        default=100,
        ge=1,
        le=100,
        description="Last generated weight, 1-100 (default 100); promotion then moves to 100 %. Ignored with steps.",
    )
    step_interval: Duration = Field(
        default=30.0,
        description=_duration_doc(
            "Analysis time after each generated weight. Default 30s. Ignored with steps."
        ),
    )
    sticky: StickyKey | None = Field(
        default=None,
        description=(
            "Keep each user on one version while the candidate has traffic: nginx hashes this header "
            "or cookie; gateway-api sends the keys ending in the candidate's share of the digits and "
            "hex letters to it (header match; weights 10, 20 ... 90). nginx and gateway-api only."
        ),
    )

    @model_validator(mode="after")
    def _steps(self) -> CanaryStrategy:
        if (self.steps is None) == (self.step_weight is None):
            raise ValueError("a canary needs exactly one of steps, stepWeight")
        if self.steps is not None and not self.steps:
            raise ValueError("steps must not be empty")
        return self


class BlueGreenStrategy(_Model):
    """Preview the candidate without user traffic, switch all traffic at once, watch it, then retire stable."""

    preview_duration: Duration = Field(  # analysis against the preview (no user traffic) this long
        default=30.0,
        description=_duration_doc(
            "Preview time: every user on stable; the candidate gets a mirror of live traffic and "
            "requests with header X-Rollout-Preview: 1. Ends once this has passed and every metric's "
            "newest verdict is Successful; a failure rolls back before any user saw the candidate. "
            "Default 30s."
        ),
    )
    # during the preview the candidate gets this share of live traffic as a mirror (answers
    # discarded, users unaffected) so that its analysis has data; 0: preview requests only
    preview_mirror_percent: Percent = Field(
        default=100,
        description=(
            "Percent of live traffic (0-100) mirrored to the candidate during the preview (answers "
            "discarded, users unaffected), so its analysis has data. 0: preview requests only. "
            "Default 100."
        ),
    )
    auto_promote: bool = Field(
        default=True,
        description=(
            "true (default): switch as soon as the preview passes. false: wait for `rollout promote` "
            "(Paused, WaitingForPromotion)."
        ),
    )
    post_promotion_duration: Duration = Field(
        default=30.0,
        description=_duration_doc(
            "Analysis time after the switch (all traffic on the candidate; metrics that compare with "
            "stable are not measured). A failure or abort switches back to stable at once. Default 30s."
        ),
    )
    scale_down_delay: Duration = Field(  # keep the old version warm this long after the switch
        default=30.0,
        description=_duration_doc(
            "Keep the old stable running this long after the post-promotion analysis, so an abort "
            "still switches back at once; then the rollout is Promoted and it stops. Default 30s."
        ),
    )


class ShadowStrategy(_Model):
    """Mirror live traffic to the candidate; users only ever get stable's answers."""

    mirror_percent: int = Field(
        default=100,
        ge=1,
        le=100,
        description="Percent of user requests (1-100) copied to the candidate; its answers are discarded. Default 100.",
    )
    duration: Duration = Field(
        default=60.0,
        description=_duration_doc(
            "Analysis time once the router reports the mirror applied; the shadow passes after it "
            "with every metric's newest verdict Successful. Default 60s."
        ),
    )
    promote_on_success: bool = Field(  # after a good shadow: switch to the candidate, or just report
        default=False,
        description=(
            "After a passing shadow: true moves all traffic to the candidate (Promoted); false "
            "(default) removes the mirror and stops the candidate, stable keeps serving (Succeeded)."
        ),
    )


class InconclusiveOutcome(StrEnum):
    """What an A/B test does when it ends without a significant difference."""

    KEEP_STABLE = "keep-stable"
    PROMOTE_CANDIDATE = "promote-candidate"


class ABTestStrategy(_Model):
    """Split users between the versions; promote the one proven better on one metric."""

    weight: int = Field(
        default=50, ge=1, le=99, description="Percent of users (1-99) sent to the candidate. Default 50."
    )
    sticky: StickyKey | None = Field(
        default=None,
        description=(
            "Keep each user on one version: nginx hashes this header or cookie; gateway-api sends the "
            "keys ending in the candidate's share of the digits and hex letters to it (header match; "
            "weight 10, 20 ... 90). nginx and gateway-api only."
        ),
    )
    match: list[HeaderMatch] | None = Field(
        default=None,
        description="Requests matching any of these always go to the candidate (e.g. testers). Not with kserve.",
    )
    metric: str = Field(
        pattern=DNS_LABEL,
        description=(
            "Name of the analysis metric that picks the winner, by its direction; measured over "
            "everything since the experiment started."
        ),
    )
    min_samples: int = Field(
        default=500,
        ge=1,
        le=100_000_000,
        description="Observations each version needs before a winner can be named. Default 500.",
    )
    max_duration: Duration = Field(
        default=600.0,
        description=_duration_doc(
            "Longest the experiment runs once the split is applied; then onInconclusive decides. Default 10m."
        ),
    )
    # a winner only when the difference is significant at this confidence (an always-valid
    # sequential test, so looking every interval does not inflate false winners)
    confidence: float = Field(
        default=0.95,
        ge=0.5,
        le=0.9999,
        description=(
            "A winner only when the difference is significant at this confidence, by an always-valid "
            "sequential test (looking every interval does not inflate false winners). 0.5-0.9999, "
            "default 0.95."
        ),
    )
    max_samples: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000_000,
        description=(
            "End the experiment once each version has this many samples (at least minSamples); then "
            "onInconclusive decides. Absent: maxDuration alone."
        ),
    )
    on_inconclusive: InconclusiveOutcome = Field(
        default=InconclusiveOutcome.KEEP_STABLE,
        description=(
            "Outcome at maxDuration or maxSamples without a significant difference (reason "
            "ExperimentInconclusive): keep-stable (default; RolledBack) or promote-candidate "
            "(Promoted, unless another metric holds the gate)."
        ),
    )

    @model_validator(mode="after")
    def _caps(self) -> ABTestStrategy:
        if self.max_samples is not None and self.max_samples < self.min_samples:
            raise ValueError(f"maxSamples ({self.max_samples}) is below minSamples ({self.min_samples})")
        return self


class Strategy(_Model):
    """How traffic moves to the candidate: exactly one of canary, blueGreen, shadow, abTest."""

    canary: CanaryStrategy | None = Field(
        default=None, description="Shift user traffic in steps: setWeight, pause, analysis (or generated)."
    )
    blue_green: BlueGreenStrategy | None = Field(
        default=None, description="Preview without users, then switch all traffic at once."
    )
    shadow: ShadowStrategy | None = Field(
        default=None, description="Mirror traffic to the candidate; users only get stable's answers."
    )
    ab_test: ABTestStrategy | None = Field(
        default=None, description="Split users between the versions; promote the proven winner on one metric."
    )

    @model_validator(mode="after")
    def _one(self) -> Strategy:
        _exactly_one(self, ["canary", "blue_green", "shadow", "ab_test"], "strategy")
        return self

    @property
    def name(self) -> str:
        for n in ("canary", "blue_green", "shadow", "ab_test"):
            if getattr(self, n) is not None:
                return n
        raise AssertionError("validated: exactly one strategy")


# --- the resource --------------------------------------------------------------------------------


class RolloutSpec(_Model):
    """What to roll out and how: service, stable and candidate models, strategy, analysis."""

    service: str = Field(
        pattern=DNS_LABEL,
        description=(
            "Name of the served model (a DNS label): the `model` label of its metric series, the "
            "route's name and, on a cluster, the InferenceServices' (<service>, or <service>-stable "
            "and <service>-candidate). One rollout in progress per service."
        ),
    )
    stable: ModelRef = Field(
        description="The version serving users now; it gets all traffic back on rollback or abort."
    )
    candidate: ModelRef = Field(
        description="The new version; on promotion it becomes the stable. Not the same model as stable."
    )
    strategy: Strategy = Field(
        description="How traffic moves: exactly one of canary, blueGreen, shadow, abTest."
    )
    analysis: AnalysisSpec = Field(
        default=AnalysisSpec(), description="The metrics that gate every step and the promotion."
    )
    router: RouterSpec = Field(
        default=RouterSpec(),
        description="The traffic router. Default: nginx for `rollout run`; the controller's --router in a cluster.",
    )
    metrics_address: MetricsURL | None = Field(
        default=None,
        description=(
            "URL of the Prometheus the controller queries, http(s)://host[:port][/path]: no user "
            "info, query or fragment, never a link-local or cloud metadata address. Default: the "
            "controller's --metrics-address (the chart's controller.prometheusUrl). It fetches only addresses its allow-list names "
            "(--allowed-metrics-address; default its own address): any other makes the ModelRollout "
            "Invalid (MetricsAddressRefused) and nothing is fetched. `rollout run` queries its local "
            "stack's Prometheus."
        ),
    )
    progress_deadline: Duration = Field(
        default=600.0,
        description=_duration_doc(
            "Longest the rollout may hold by itself (a metric Inconclusive, Failed under its limit or "
            "unmeasurable; the candidate not ready; stable not serving) before it is rolled back "
            "(ProgressDeadlineExceeded). A human's pause and a wait for promote do not count. 0: no "
            "deadline; else at least the longest metric interval. Default 10m."
        ),
    )

    @field_validator("progress_deadline")
    @classmethod
    def _deadline_outlives_an_interval(cls, deadline: float, info: ValidationInfo) -> float:
        """A deadline shorter than a metric's interval rolls back on one Inconclusive measurement,
        before the next one is taken (the first window after a step often has no requests yet)."""
        analysis = info.data.get("analysis")
        if not deadline or analysis is None or not analysis.metrics:
            return deadline
        longest, what = max(
            (m.interval, f"the interval of metric {m.name!r}")
            if m.interval is not None
            else (analysis.interval, "analysis.interval")
            for m in analysis.metrics
        )
        if deadline < longest:
            raise ValueError(
                f"{format_duration(deadline)} is shorter than {what} ({format_duration(longest)}): one "
                "Inconclusive measurement would roll the rollout back before the next is taken; make "
                "it at least that long, or 0 for no deadline"
            )
        return deadline

    @model_validator(mode="after")
    def _consistent(self) -> RolloutSpec:
        if self.stable.model == self.candidate.model:
            raise ValueError(f"stable and candidate are the same model ({self.stable.model})")
        ab = self.strategy.ab_test
        if ab is not None and ab.metric not in {m.name for m in self.analysis.metrics}:
            raise ValueError(f"strategy.abTest.metric {ab.metric!r} is not one of analysis.metrics")
        if self.router.provider == RouterProvider.TRAEFIK:
            self._traefik_can_route()
        return self

    def _traefik_can_route(self) -> None:
        """Traefik's TraefikService has weights and a mirror, no header match (routers/traefik.py)."""
        st = self.strategy
        needs = [
            (st.blue_green is not None, "strategy.blueGreen (its preview is a header match)"),
            (st.canary is not None and st.canary.sticky is not None, "strategy.canary.sticky"),
            (st.ab_test is not None and st.ab_test.sticky is not None, "strategy.abTest.sticky"),
            (st.ab_test is not None and bool(st.ab_test.match), "strategy.abTest.match"),
        ]
        refused = [what for cond, what in needs if cond]
        if refused:
            raise ValueError(
                f"router.provider traefik cannot route {', '.join(refused)}: a TraefikService splits by "
                "weight and mirrors, it matches no header or cookie; use router.provider gateway-api "
                "or istio"
            )


# Kubernetes' own wording for the fields every object has (apimachinery's ObjectMeta/TypeMeta docs)
API_CONVENTIONS = "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md"
API_VERSION_DOC = (
    "APIVersion defines the versioned schema of this representation of an object. Servers should "
    "convert recognized schemas to the latest internal value, and may reject unrecognized values. "
    f"More info: {API_CONVENTIONS}#resources"
)
KIND_DOC = (
    "Kind is a string value representing the REST resource this object represents. Servers may "
    "infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. "
    f"More info: {API_CONVENTIONS}#types-kinds"
)
METADATA_DOC = f"Standard object's metadata. More info: {API_CONVENTIONS}#metadata"


class ObjectMeta(_Model):
    """The part of Kubernetes' ObjectMeta a rollout file uses; other keys are kept as they are."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow", frozen=True)
    name: str = Field(
        pattern=DNS_LABEL, description="Name of the rollout (a DNS label), unique in its namespace."
    )
    namespace: str | None = Field(
        default=None, pattern=DNS_LABEL, description="Namespace of the rollout (a DNS label)."
    )
    labels: dict[str, str] | None = Field(
        default=None, description="Labels of the rollout, as in Kubernetes."
    )


class ModelRollout(_Model):
    """A progressive rollout of a BentoML model version (canary, blue/green, shadow, A/B)."""

    api_version: Literal["bento-rollout.io/v1alpha1"] = Field(
        default=API_VERSION, description=API_VERSION_DOC
    )
    kind: Literal["ModelRollout"] = Field(default=KIND, description=KIND_DOC)
    metadata: ObjectMeta = Field(description=METADATA_DOC)
    spec: RolloutSpec = Field(
        description="What to roll out and how: service, stable and candidate models, strategy, analysis."
    )
    status: dict[str, Any] | None = Field(
        default=None,
        description="Written by the controller (phase, weights, analysis, history); ignored in a rollout file.",
    )


# --- loading -------------------------------------------------------------------------------------


_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def _field_path(loc: tuple[Any, ...]) -> str:
    # the wire is validated by alias only, so pydantic's loc already holds the keys as the user
    # wrote them: camelCase field names, and free-form keys (labels, unknown fields) verbatim
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _PLAIN_KEY.match(key := str(part)):
            out += f"[{json.dumps(key, ensure_ascii=False)}]"
        else:
            out += ("." if out else "") + key
    return out or "(document)"


def spec_error(exc: ValidationError) -> SpecError:
    """Turn pydantic's error into one line per problem, each naming the field."""
    problems = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = err["msg"].removeprefix("Value error, ")
        problems.append((_field_path(loc), msg))
    if len(problems) == 1:
        return SpecError(problems[0][1], field=problems[0][0])
    return SpecError("; ".join(f"{path}: {msg}" for path, msg in problems) or str(exc), field=None)


def parse_rollout(data: Any) -> ModelRollout:
    if not isinstance(data, dict):
        raise SpecError(
            "a rollout spec is a mapping with apiVersion, kind, metadata and spec", field="(document)"
        )
    try:
        # the wire speaks camelCase only (as the CRD does): a snake_case key is an unknown field,
        # named in the error, not a second spelling that silently overrides the camelCase one
        return ModelRollout.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as exc:
        raise spec_error(exc) from None


class _DuplicateKey(yaml.constructor.ConstructorError):
    """A key written twice in one mapping (its message names both lines)."""


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key twice in one mapping (as Kubernetes' strict decoding
    does): PyYAML keeps the last value silently, so ``service:`` written twice would win unseen.
    Keys a merge (``<<: *anchor``) brings in may be overridden, as YAML's merge keys intend."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # the base constructor merges (flatten_mapping): merged keys may be overridden
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
                seen[key] = line
            except TypeError:
                continue  # an unhashable key: the base constructor reports it
            if first is not None:
                raise _DuplicateKey(
                    None, None, f"duplicate key {key!r} on line {line} (first on line {first})"
                )
        return super().construct_mapping(node, deep=deep)


def load_rollout(path: str | Path) -> ModelRollout:
    """Read a ModelRollout YAML file. Raises SpecError naming the field on any problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"no such file: {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read {p}: {exc}") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except _DuplicateKey as exc:
        raise SpecError(f"{p}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{p} is not valid YAML: {exc}".replace("\n", " ")) from None
    return parse_rollout(data)
