"""The analysis gate: metric results in, judged measurements and limits out.

The engine hands every ``MetricResult`` the edge reported to ``ingest``: a sample is judged by the
metric's judge (``rollout.analysis.registry.make_judge``), an error string becomes a measurement
in phase Error. Per metric, consecutive Failed / Inconclusive / Error counts are kept and checked
against ``failureLimit``, ``inconclusiveLimit`` and ``analysis.errorLimit`` ("past the limit" =
more consecutive results than the limit). ``gate`` tells the strategy whether it may move on.
Who calls it: ``rollout.engine`` only. Works on the engine's private working copy of the state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from rollout.actions import Measure, MetricResult
from rollout.analysis import checks
from rollout.analysis.base import (
    HistogramSample,
    Judge,
    MeanSample,
    Measurement,
    ProportionSample,
    Verdict,
)
from rollout.analysis.checks import check_sample, complete
from rollout.analysis.experiment import ExperimentTest, decide
from rollout.analysis.registry import higher_is_better, make_judge, template_of
from rollout.analysis.threshold import headline, sample_size
from rollout.errors import RolloutError
from rollout.metrics.templates import Headline
from rollout.model import (
    ERROR,
    FAILED,
    INCONCLUSIVE,
    MAX_MEASUREMENTS,
    SUCCESSFUL,
    EventType,
    MeasurementRecord,
    MetricStatus,
    Reason,
    RolloutState,
)
from rollout.routers.base import Routes
from rollout.spec import JudgeKind, MetricSpec, RolloutSpec
from rollout.strategies.base import Comparison, Decision, DecisionKind, Gate, Note

JudgeFactory = Callable[[MetricSpec], Judge]

_judges: dict[tuple[MetricSpec, frozenset[str]], Judge] = {}


def default_judge(metric: MetricSpec) -> Judge:
    """The registry's judge for the metric, cached (judges are pure and configured by the spec).
    Keyed also by the judge fields the user wrote: equal specs can differ there (a minSamples
    written out is honoured by the threshold judge, the default is not)."""
    key = (metric, frozenset(metric.judge.model_fields_set))
    judge = _judges.get(key)
    if judge is None:
        judge = _judges[key] = make_judge(metric)
    return judge


def interval_of(spec: RolloutSpec, metric: MetricSpec) -> float:
    return metric.interval if metric.interval is not None else spec.analysis.interval


def start(spec: RolloutSpec, state: RolloutState, now: float) -> None:
    """Begin an analysis run: first measurements due after ``startDelay``; fresh consecutive counts."""
    state.analysis_started_at = now
    for m in spec.analysis.metrics:
        st = state.metrics.setdefault(m.name, MetricStatus(name=m.name))
        st.next_due = now + spec.analysis.start_delay
        st.latest = None
        st.consecutive_failed = st.consecutive_inconclusive = st.consecutive_errors = 0


def restart(spec: RolloutSpec, state: RolloutState, now: float) -> None:
    """Measure afresh from ``now`` (stable serves again after an outage): cumulative windows start
    here and each metric's next measurement is due one window later, so no window reaches back into
    the outage (the candidate took stable's share then: its latency is no fair comparison)."""
    if state.analysis_started_at is None:
        return
    state.analysis_started_at = now
    for m in spec.analysis.metrics:
        st = state.metrics.get(m.name)
        if st is None or st.next_due is None:
            continue
        st.next_due = now + (spec.analysis.window or interval_of(spec, m))
        st.latest = None
        st.consecutive_failed = st.consecutive_inconclusive = st.consecutive_errors = 0


def stop(state: RolloutState) -> None:
    state.analysis_started_at = None
    for st in state.metrics.values():
        st.next_due = None


def due(spec: RolloutSpec, state: RolloutState, now: float) -> list[Measure]:
    """Measure actions for the metrics that are due (repeated until their result arrives).

    The window is ``analysis.window`` (default: the metric's interval); cumulative since the
    analysis started for sequential judges and the A/B deciding metric; and widened after
    Inconclusive results, one window more per result in a row."""
    if state.analysis_started_at is None:
        return []
    out = []
    for m in spec.analysis.metrics:
        st = state.metrics.get(m.name)
        if st is None or st.next_due is None or st.next_due > now:
            continue
        ab = spec.strategy.ab_test
        if m.judge.kind == JudgeKind.SEQUENTIAL or (ab is not None and ab.metric == m.name):
            # cumulative since the analysis started: the sequential test and the A/B sample size
            window = max(now - state.analysis_started_at, interval_of(spec, m))
        else:
            window = spec.analysis.window or interval_of(spec, m)
            if st.consecutive_inconclusive:
                # too few samples: extend the window by one base window per inconclusive result,
                # up to everything since the analysis started - wait for evidence, never guess
                since = now - state.analysis_started_at
                window = max(window, min(window * (1 + st.consecutive_inconclusive), since))
        out.append(Measure(metric=m.name, window=window))
    return out


def _judge(judge_of: JudgeFactory, metric: MetricSpec, result: MetricResult) -> Measurement:
    if result.error is not None:
        return Measurement(metric=metric.name, verdict=Verdict.ERROR, at=result.at, message=result.error)
    try:
        return judge_of(metric).judge(metric.name, result.sample, result.at)
    except Exception as exc:  # the last line of defence: judges are total, a bug must not stop the loop
        what = str(exc) if isinstance(exc, RolloutError) else f"{type(exc).__name__}: {exc}"
        return Measurement(
            metric=metric.name, verdict=Verdict.ERROR, at=result.at, message=f"judge failed: {what}"
        )


def _record(st: MetricStatus, m: Measurement, result: MetricResult, interval: float) -> None:
    verdict = str(m.verdict)
    value = m.value if m.value is None or math.isfinite(m.value) else None
    details = {k: v for k, v in m.details.items() if isinstance(v, int | float) and math.isfinite(v)}
    st.measurements = [
        *st.measurements,
        MeasurementRecord(at=m.at, verdict=verdict, value=value, message=m.message, details=details),
    ][-MAX_MEASUREMENTS:]
    st.count += 1
    st.latest = verdict
    st.last_elapsed = result.elapsed
    st.next_due = result.at + interval
    if verdict == SUCCESSFUL:
        st.successful += 1
        st.consecutive_failed = st.consecutive_inconclusive = st.consecutive_errors = 0
    elif verdict == FAILED:
        st.failed += 1
        st.consecutive_failed += 1
        st.consecutive_inconclusive = st.consecutive_errors = 0
    elif verdict == INCONCLUSIVE:
        st.inconclusive += 1
        st.consecutive_inconclusive += 1
        st.consecutive_errors = 0
    else:  # Error: no information about the candidate; keeps the other counts
        st.errors += 1
        st.consecutive_errors += 1


def _describe(m: Measurement) -> str:
    value = "" if m.value is None else f" (value {m.value:.6g})"
    return f"{m.verdict}{value}" + (f": {m.message}" if m.message else "")


def ingest(
    spec: RolloutSpec,
    state: RolloutState,
    results: Iterable[MetricResult],
    judge_of: JudgeFactory,
    *,
    baseline: bool = True,
) -> tuple[list[Note], dict[str, Comparison]]:
    """Judge the results and update each metric's status. Returns events and per-version
    comparisons of the fresh samples. Results for unknown metrics, or arriving while no analysis
    runs, are ignored. Without a ``baseline`` (stable does not serve) a metric that compares with
    stable is Inconclusive whatever its sample says: its stable side is data from before."""
    notes: list[Note] = []
    comparisons: dict[str, Comparison] = {}
    if state.analysis_started_at is None:
        return notes, comparisons
    by_name = {m.name: m for m in spec.analysis.metrics}
    for r in results:
        metric = by_name.get(r.metric)
        if metric is None:
            continue
        st = state.metrics.setdefault(metric.name, MetricStatus(name=metric.name))
        before = st.latest
        no_baseline = not baseline and needs_stable(metric)
        if no_baseline:
            m = Measurement(
                metric.name,
                Verdict.INCONCLUSIVE,
                at=r.at,
                message="stable is not serving: no baseline to compare with",
            )
        else:
            m = _judge(judge_of, metric, r)
        _record(st, m, r, interval_of(spec, metric))
        ab = spec.strategy.ab_test
        confidence = ab.confidence if ab is not None and ab.metric == metric.name else None
        if (
            r.sample is not None
            and not no_baseline
            and (cmp := compare(metric, r.sample, confidence)) is not None
        ):
            comparisons[metric.name] = cmp
        if m.verdict == Verdict.FAILED:
            notes.append(
                Note(
                    EventType.WARNING,
                    Reason.MEASUREMENT_FAILED,
                    f"{metric.name}: {_describe(m)} [{st.consecutive_failed} in a row, failureLimit {metric.failure_limit}]",
                )
            )
        elif m.verdict == Verdict.INCONCLUSIVE:
            notes.append(
                Note(
                    EventType.WARNING,
                    Reason.MEASUREMENT_INCONCLUSIVE,
                    f"{metric.name}: {_describe(m)} [{st.consecutive_inconclusive} in a row]",
                )
            )
        elif m.verdict == Verdict.ERROR:
            notes.append(
                Note(
                    EventType.WARNING,
                    Reason.MEASUREMENT_ERROR,
                    f"{metric.name}: cannot measure: {m.message} [{st.consecutive_errors} in a row, "
                    f"errorLimit {spec.analysis.error_limit}]; holding",
                )
            )
        elif before is not None and before != SUCCESSFUL:
            notes.append(Note(EventType.NORMAL, Reason.ANALYSIS_RECOVERED, f"{metric.name}: {_describe(m)}"))
    return notes, comparisons


def verdict_limits(spec: RolloutSpec, state: RolloutState) -> Decision | None:
    """Roll back when a metric failed, or could not be measured, too many times in a row."""
    if state.analysis_started_at is None:
        return None
    for metric in spec.analysis.metrics:
        st = state.metrics.get(metric.name)
        if st is None:
            continue
        last = st.measurements[-1].message if st.measurements else ""
        if st.consecutive_failed > metric.failure_limit:
            return Decision(
                DecisionKind.ROLL_BACK,
                Reason.ANALYSIS_FAILED,
                f"metric {metric.name} failed {st.consecutive_failed} times in a row "
                f"(failureLimit {metric.failure_limit})" + (f": {last}" if last else ""),
            )
        if st.consecutive_errors > spec.analysis.error_limit:
            return Decision(
                DecisionKind.ROLL_BACK,
                Reason.METRICS_UNAVAILABLE,
                f"metric {metric.name} could not be measured {st.consecutive_errors} times in a row "
                f"(errorLimit {spec.analysis.error_limit})" + (f": {last}" if last else ""),
            )
    return None


def inconclusive_limit(spec: RolloutSpec, state: RolloutState) -> str | None:
    """A message when some metric stayed Inconclusive past its (non-zero) inconclusiveLimit."""
    if state.analysis_started_at is None:
        return None
    for metric in spec.analysis.metrics:
        st = state.metrics.get(metric.name)
        if (
            st is not None
            and metric.inconclusive_limit
            and st.consecutive_inconclusive > metric.inconclusive_limit
        ):
            return (
                f"metric {metric.name} was inconclusive {st.consecutive_inconclusive} times in a row "
                f"(inconclusiveLimit {metric.inconclusive_limit}); promote, resume or abort"
            )
    return None


def unavailable(spec: RolloutSpec, state: RolloutState) -> str | None:
    """Why the rollout is paused by itself: a metric whose newest measurement is an Error."""
    if state.analysis_started_at is None:
        return None
    for metric in spec.analysis.metrics:
        st = state.metrics.get(metric.name)
        if st is not None and st.latest == ERROR:
            last = st.measurements[-1].message if st.measurements else ""
            return (
                f"paused: metric {metric.name} cannot be measured ({st.consecutive_errors} in a row, "
                f"errorLimit {spec.analysis.error_limit}): {last}; never promoting while this lasts"
            )
    return None


def needs_stable(metric: MetricSpec) -> bool:
    """The metric compares the candidate with stable (a comparative or sequential judge, or a
    shift/drift headline), so it needs traffic on both."""
    comparative = metric.judge.kind != JudgeKind.THRESHOLD
    try:
        template = template_of(metric)
    except RolloutError:
        return comparative
    return checks.needs_stable(template, comparative=comparative)


def active(spec: RolloutSpec, routes: Routes) -> tuple[str, ...]:
    """The metrics that can be measured under ``routes``: all, except those that need stable
    traffic while stable serves none (after a blue/green switch, a canary at 100%)."""
    no_stable = routes.stable_weight == 0
    return tuple(m.name for m in spec.analysis.metrics if not (no_stable and needs_stable(m)))


def park(spec: RolloutSpec, state: RolloutState, routes: Routes, now: float) -> list[Note]:
    """Stop measuring the metrics that cannot be measured under ``routes`` (their newest verdict
    is forgotten so it cannot hold the rollout) and start again those that can."""
    notes: list[Note] = []
    if state.analysis_started_at is None:
        return notes
    can = set(active(spec, routes))
    for m in spec.analysis.metrics:
        st = state.metrics.setdefault(m.name, MetricStatus(name=m.name))
        if m.name not in can and st.next_due is not None:
            st.next_due, st.latest = None, None
            st.consecutive_failed = st.consecutive_inconclusive = st.consecutive_errors = 0
            notes.append(
                Note(
                    EventType.NORMAL,
                    Reason.METRIC_PARKED,
                    f"{m.name} compares the candidate with stable and stable serves no traffic now: "
                    "not measured until it does",
                )
            )
        elif m.name in can and st.next_due is None:
            st.next_due = now
    return notes


def reset_inconclusive(state: RolloutState) -> None:
    for st in state.metrics.values():
        st.consecutive_inconclusive = 0


def holding(spec: RolloutSpec, state: RolloutState) -> list[str]:
    """Why the gate holds: one line per metric whose newest verdict is not Successful. An A/B
    test's deciding metric is left out: the experiment's own horizon (maxDuration) decides there."""
    if state.analysis_started_at is None:
        return []
    ab = spec.strategy.ab_test
    out = []
    for m in spec.analysis.metrics:
        st = state.metrics.get(m.name)
        if st is None or st.latest in (None, SUCCESSFUL) or (ab is not None and ab.metric == m.name):
            continue
        last = st.measurements[-1].message if st.measurements else ""
        out.append(f"metric {m.name} is {st.latest}" + (f": {last}" if last else ""))
    return out


def gate(spec: RolloutSpec, state: RolloutState) -> Gate:
    """HOLDING while any metric's newest verdict (of the running analysis) is not Successful."""
    if state.analysis_started_at is None:
        return Gate.PASSING
    bad = {FAILED, INCONCLUSIVE, ERROR}
    latest = [st.latest for m in spec.analysis.metrics if (st := state.metrics.get(m.name)) is not None]
    return Gate.HOLDING if any(v in bad for v in latest) else Gate.PASSING


def compare(metric: MetricSpec, sample: object, confidence: float | None = None) -> Comparison | None:
    """Candidate and stable reduced to the metric's headline number (the one the threshold judge
    shows: error rate, accuracy, p99...), for the A/B test, by ``direction``. With a
    ``confidence``, also the A/B significance test (``rollout.analysis.experiment``): the winner
    only once the difference is proven at that confidence. None for samples without a
    per-version headline (a raw value, distribution shifts) and for a malformed sample (which the
    metric's judge reports as an Error measurement)."""

    try:
        template = template_of(metric)
    except RolloutError:
        return None
    if check_sample(sample, template) is not None:
        return None
    try:
        sample = complete(sample)  # type: ignore[arg-type]
        if isinstance(sample, ProportionSample):
            swapped: object = ProportionSample(
                sample.stable_bad, sample.stable_total, sample.candidate_bad, sample.candidate_total
            )
        elif isinstance(sample, HistogramSample) and (template is None or template.headline != Headline.KS):
            swapped = HistogramSample(sample.bounds, sample.stable_counts, sample.candidate_counts)
        elif isinstance(sample, MeanSample):
            swapped = MeanSample(
                sample.stable_n,
                sample.stable_total,
                sample.stable_total_sq,
                sample.candidate_n,
                sample.candidate_total,
                sample.candidate_total_sq,
            )
        else:
            return None
        n_c, n_s = sample_size(sample)
        higher = higher_is_better(metric)
        result = None
        if confidence is not None and template is not None:
            test = ExperimentTest(template, metric.judge.min_effect, higher, confidence)
            result = decide(test, sample)
        return Comparison(
            samples=min(n_c, n_s),
            candidate=headline(template, sample),
            stable=headline(template, swapped),
            higher_is_better=higher,
            tested=result is not None,
            winner=None if result is None else result.winner,
            lower=None if result is None else result.lower,
            upper=None if result is None else result.upper,
            confidence=confidence,
            interval="" if result is None else result.describe(),
        )
    except Exception:  # the last line of defence, as in _judge: no comparison this time
        return None
