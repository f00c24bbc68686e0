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

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
DURATION_PATTERN = r"^\d+(\.\d+)?(ms|s|m|h)?$"


def parse_duration(value: Any) -> float:
    """'30s', '2m', '1h', '500ms' or a number of seconds -> seconds (float)."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '30s', '2m', '500ms'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION_RE.match(value)):
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    else:
        raise ValueError(f"invalid duration {value!r}: use a number of seconds or '30s', '2m', '1h', '500ms'")
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError(f"invalid duration {value!r}: must be a finite, non-negative time")
    return seconds


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


class ModelRef(_Model):
    """A model version: a BentoML model store tag such as ``iris_clf:good``, optionally pinned to its artifact's digest."""

    # digest: what `rollout models` shows; the model server (bentos/service.py) refuses any other
    # artifact under the tag, whoever rewrote the model store (rollout/registry.py)

    model: str = Field(pattern=MODEL_TAG, description="BentoML model tag, name:version")
    digest: str | None = Field(
        default=None,
        pattern=MODEL_DIGEST,
        description="sha256:<64 hex> of the model artifact; the server refuses any other artifact",
    )
    replicas: int = Field(default=1, ge=0, le=100)


# --- routing -------------------------------------------------------------------------------------


class HeaderMatch(_Model):
    """Send requests whose header (or cookie) has this exact value to the candidate."""

    header: str | None = Field(default=None, pattern=HEADER_NAME)
    cookie: str | None = Field(default=None, pattern=HEADER_NAME)
    value: str = Field(min_length=1, max_length=256)

    @model_validator(mode="after")
    def _one(self) -> HeaderMatch:
        _exactly_one(self, ["header", "cookie"], "a match")
        return self


class StickyKey(_Model):
    """Hash this header or cookie to assign a user to a version for good."""

    header: str | None = Field(default=None, pattern=HEADER_NAME)
    cookie: str | None = Field(default=None, pattern=HEADER_NAME)

    @model_validator(mode="after")
    def _one(self) -> StickyKey:
        _exactly_one(self, ["header", "cookie"], "sticky")
        return self


class RouterProvider(StrEnum):
    NGINX = "nginx"
    KSERVE = "kserve"
    ISTIO = "istio"
    GATEWAY_API = "gateway-api"


class RouterSpec(_Model):
    provider: RouterProvider = RouterProvider.NGINX
    # provider-specific names of the routing object (VirtualService / HTTPRoute / InferenceService)
    name: str | None = Field(default=None, pattern=DNS_LABEL)
    gateway: str | None = Field(
        default=None, description="Gateway (Istio or Gateway API) to attach routes to"
    )


# --- analysis ------------------------------------------------------------------------------------


class JudgeKind(StrEnum):
    THRESHOLD = "threshold"
    COMPARATIVE = "comparative"
    SEQUENTIAL = "sequential"


class Range(_Model):
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.min is None and self.max is None:
            raise ValueError("a range needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class Direction(StrEnum):
    HIGHER_IS_BETTER = "higher"
    LOWER_IS_BETTER = "lower"


class JudgeSpec(_Model):
    kind: JudgeKind = JudgeKind.THRESHOLD
    # comparative / sequential: the smallest regression that matters (absolute for rates, relative
    # for latency, e.g. 0.01 = one percentage point or 1 %), the false-positive rate, min samples.
    min_effect: float = Field(default=0.01, gt=0, le=10)
    alpha: float = Field(default=0.01, gt=0, lt=0.5)
    min_samples: int = Field(default=100, ge=1, le=10_000_000)


class MetricSpec(_Model):
    """One gate: a built-in template or a raw PromQL query, and how to judge it."""

    name: str = Field(pattern=DNS_LABEL)
    template: str | None = Field(
        default=None, description="built-in: error-rate, latency-p99, accuracy, prediction-shift, ..."
    )
    query: str | None = Field(
        default=None,
        max_length=4096,
        description="PromQL; {{service}}, {{stable}}, {{candidate}}, {{version}}, {{window}} are filled in",
    )
    threshold: Range | None = None
    judge: JudgeSpec = JudgeSpec()
    direction: Direction = Direction.LOWER_IS_BETTER
    interval: Duration | None = None
    failure_limit: int = Field(default=1, ge=0, le=1000)
    inconclusive_limit: int = Field(default=0, ge=0, le=1000)
    provider: str = "prometheus"

    @model_validator(mode="after")
    def _source(self) -> MetricSpec:
        _exactly_one(self, ["template", "query"], f"metric {self.name!r}")
        if self.judge.kind == JudgeKind.THRESHOLD and self.threshold is None:
            raise ValueError(f"metric {self.name!r} uses the threshold judge and needs a threshold")
        return self


class AnalysisSpec(_Model):
    interval: Duration = 10.0
    window: Duration | None = Field(default=None, description="PromQL range window; default: interval")
    start_delay: Duration = 0.0
    metrics: list[MetricSpec] = Field(default_factory=list, max_length=50)
    # consecutive provider errors (Prometheus unreachable) before the rollout is rolled back;
    # while errors last the rollout never promotes and holds its weights.
    error_limit: int = Field(default=5, ge=1, le=1000)

    @model_validator(mode="after")
    def _unique(self) -> AnalysisSpec:
        names = [m.name for m in self.metrics]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"metric names must be unique: {', '.join(dup)} repeated")
        return self


# --- strategies ----------------------------------------------------------------------------------


class Pause(_Model):
    duration: Duration | None = Field(default=None, description="absent: wait until promoted")


class StepAnalysis(_Model):
    """Run the analysis at the current weight for this long (or this many intervals)."""

    duration: Duration | None = None
    intervals: int | None = Field(default=None, ge=1, le=10_000)


class CanaryStep(_Model):
    set_weight: Percent | None = None
    pause: Pause | None = None
    analysis: StepAnalysis | None = None

    @model_validator(mode="after")
    def _one(self) -> CanaryStep:
        _exactly_one(self, ["set_weight", "pause", "analysis"], "a canary step")
        return self


class CanaryStrategy(_Model):
    steps: list[CanaryStep] | None = Field(default=None, max_length=200)
    # Flagger-style generated steps when ``steps`` is absent: stepWeight every stepInterval up to maxWeight
    step_weight: int | None = Field(default=None, ge=1, le=100)
    max_weight: int = Field(default=100, ge=1, le=100)
    step_interval: Duration = 30.0
    sticky: StickyKey | None = None

    @model_validator(mode="after")
    def _steps(self) -> CanaryStrategy:
        if (self.steps is None) == (self.step_weight is None):
            raise ValueError("a canary needs exactly one of steps, stepWeight")
        if self.steps is not None and not self.steps:
            raise ValueError("steps must not be empty")
        return self


class BlueGreenStrategy(_Model):
    preview_duration: Duration = 30.0  # analysis against the preview (no user traffic) this long
    # during the preview the candidate gets this share of live traffic as a mirror (answers
    # discarded, users unaffected) so that its analysis has real data; 0: preview requests only
    preview_mirror_percent: Percent = 100
    auto_promote: bool = True
    post_promotion_duration: Duration = 30.0
    scale_down_delay: Duration = 30.0  # keep the old version warm this long after the switch


class ShadowStrategy(_Model):
    mirror_percent: int = Field(default=100, ge=1, le=100)
    duration: Duration = 60.0
    promote_on_success: bool = False  # after a good shadow: switch to the candidate, or just report


class InconclusiveOutcome(StrEnum):
    """What an A/B test does when it ends without a significant difference."""

    KEEP_STABLE = "keep-stable"
    PROMOTE_CANDIDATE = "promote-candidate"


class ABTestStrategy(_Model):
    weight: int = Field(default=50, ge=1, le=99)
    sticky: StickyKey | None = None
    match: list[HeaderMatch] | None = None
    metric: str = Field(pattern=DNS_LABEL, description="name of the analysis metric that picks the winner")
    min_samples: int = Field(default=500, ge=1, le=100_000_000)
    max_duration: Duration = 600.0
    # a winner only when the difference is significant at this confidence (an always-valid
    # sequential test, so looking every interval does not inflate false winners)
    confidence: float = Field(
        default=0.95, ge=0.5, le=0.9999, description="confidence that the winner is really better"
    )
    max_samples: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000_000,
        description="end the experiment at this many samples per version",
    )
    on_inconclusive: InconclusiveOutcome = Field(
        default=InconclusiveOutcome.KEEP_STABLE,
        description="outcome at maxDuration/maxSamples without a significant difference",
    )

    @model_validator(mode="after")
    def _caps(self) -> ABTestStrategy:
        if self.max_samples is not None and self.max_samples < self.min_samples:
            raise ValueError(f"maxSamples ({self.max_samples}) is below minSamples ({self.min_samples})")
        return self


class Strategy(_Model):
    canary: CanaryStrategy | None = None
    blue_green: BlueGreenStrategy | None = None
    shadow: ShadowStrategy | None = None
    ab_test: ABTestStrategy | None = None

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
    service: str = Field(pattern=DNS_LABEL, description="the served model's name (route and metric label)")
    stable: ModelRef
    candidate: ModelRef
    strategy: Strategy
    analysis: AnalysisSpec = AnalysisSpec()
    router: RouterSpec = RouterSpec()
    metrics_address: MetricsURL | None = Field(
        default=None,
        description=(
            "Prometheus URL, http(s)://host[:port][/path]; default: the controller's (the local "
            "stack's for rollout run). The controller fetches only addresses on its allow-list"
        ),
    )
    progress_deadline: Duration = Field(
        default=600.0,
        description=(
            "longest the rollout may hold by itself (analysis inconclusive or unmeasurable, candidate "
            "not ready) before it is rolled back (ProgressDeadlineExceeded); 0: no deadline. Human "
            "pauses and waits for promote do not count"
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
        return self


class ObjectMeta(_Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow", frozen=True)
    name: str = Field(pattern=DNS_LABEL)
    namespace: str | None = Field(default=None, pattern=DNS_LABEL)
    labels: dict[str, str] | None = None


class ModelRollout(_Model):
    api_version: Literal["bento-rollout.io/v1alpha1"] = API_VERSION
    kind: Literal["ModelRollout"] = KIND
    metadata: ObjectMeta
    spec: RolloutSpec
    status: dict[str, Any] | None = None


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
