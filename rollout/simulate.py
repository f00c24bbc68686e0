"""Decision quality, measured: thousands of simulated rollouts with known truth, judged side by side.

For every traffic level (candidate requests per second) and scenario (good candidates; error rate
+1 and +5 points over a 1 % baseline; latency +20 %; a tail-only latency regression, p99 doubled
with the median unchanged; accuracy -3 points; a regressor whose absolute errors are 15 % larger),
``simulate`` draws the
counters' increases for ``runs`` rollouts (``rollout.simulator.traffic``) and drives each judge
over them as the engine does (``rollout.simulator.drive``). Per judge and cell it reports the
false-rollback rate (good candidates rolled back), the missed-regression rate (bad candidates not
rolled back: promoted, or undecided at the horizon), the median seconds and candidate requests to
a decision, and the requests hurt (bad requests beyond baseline served by a bad candidate until
it is rolled back, or until the horizon when it is not; every request for a latency regression). With
``ab`` it also runs the A/B cells (``rollout.simulator.abtest``: false winners between equal
versions, time to the right winner). It also calibrates the threshold judge's error-rate limit to the sequential judge's
false-rollback rate, so the two can be compared at equal false rollbacks, and checks the targets.
Who calls it: ``rollout simulate`` (rollout.cli.simulate) and ``bench/judges.py``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from rollout.analysis.stats import histogram_quantile
from rollout.simulator.abtest import simulate_ab
from rollout.simulator.drive import (
    ROLLED_BACK,
    UNDECIDED,
    JudgeSetup,
    Outcomes,
    drive,
    threshold_setup,
    user_setups,
)
from rollout.simulator.traffic import (
    BOUNDS,
    LATENCY_MEDIAN_SECONDS,
    REGRESSOR_SCENARIOS,
    SCENARIOS,
    TICK_SECONDS,
    Scenario,
    Traffic,
    generate,
    latency_bucket_probabilities,
)

CALIBRATION_LIMITS = (0.0125, 0.015, 0.0175, 0.02, 0.025, 0.03, 0.035, 0.04, 0.05, 0.06)


@dataclass(frozen=True)
class SimulationConfig:
    runs: int = 2000  # simulated rollouts per scenario and traffic level
    rps: tuple[float, ...] = (1.0, 10.0, 100.0)
    horizon_seconds: float = 1200.0  # a rollout still undecided then counts as undecided
    stable_ratio: float = 1.0  # stable requests per candidate request over the same window
    seed: int = 20261122
    calibrate: bool = True
    ab: bool = True  # also the A/B cells (rollout.simulator.abtest), under "ab_rows"


def _row(label: str, scenario: Scenario, rps: float, out: Outcomes) -> dict[str, object]:
    back = out.outcome == ROLLED_BACK
    undecided = out.outcome == UNDECIDED
    # a bad candidate hurts until it is rolled back; one that is not keeps serving (to the horizon)
    hurt = scenario.hurt_per_request * np.where(back, out.requests, out.requests_by_horizon)
    row: dict[str, object] = {
        "judge": label,
        "scenario": scenario.name,
        "metric": scenario.metric,
        "regression": scenario.regression,
        "good": scenario.good,
        "rps": rps,
        "runs": int(out.outcome.size),
        "rolled_back": float(back.mean()),
        "promoted": float((~back & ~undecided).mean()),
        "undecided": float(undecided.mean()),
        "median_seconds_to_decision": float(np.median(out.seconds)),
        "median_requests_to_decision": float(np.median(out.requests)),
    }
    if scenario.good:
        row["false_rollback_rate"] = row["rolled_back"]
    else:
        row["missed_regression_rate"] = float(1 - back.mean())
        row["median_requests_hurt"] = float(np.median(hurt))
        row["mean_requests_hurt"] = float(hurt.mean())
    return row


def latency_threshold() -> float:
    """The p99 limit a user would set: 10 % above stable's p99 as the buckets report it."""
    p99 = histogram_quantile(0.99, BOUNDS, tuple(latency_bucket_probabilities(LATENCY_MEDIAN_SECONDS)))
    return round(1.1 * float(p99), 4)


def _calibrate(
    rows: list[dict[str, object]],
    traffic: dict[Scenario, Traffic],
    rps: float,
    cfg: SimulationConfig,
    base: JudgeSetup,
) -> list[dict[str, object]]:
    """The smallest error-rate limit at which the threshold judge rolls back no more good candidates
    than the sequential judge (at least 0.5 %), run on the same error-rate traffic."""
    seq = next(
        r
        for r in rows
        if r["judge"] == "sequential" and r["scenario"] == "error-rate good" and r["rps"] == rps
    )
    target = max(float(seq["false_rollback_rate"]), 0.005)
    good = next(s for s in traffic if s.metric == "error-rate" and s.good)
    for limit in CALIBRATION_LIMITS:
        setup = threshold_setup(base.metric, limit)
        out = drive(setup, traffic[good], cfg.horizon_seconds)
        if float((out.outcome == ROLLED_BACK).mean()) <= target:
            label = "threshold (calibrated)"
            extra = {"calibrated_max": limit, "target_false_rollback_rate": target}
            result = [{**_row(label, good, rps, out), **extra}]
            for s, t in traffic.items():
                if s.metric == "error-rate" and not s.good:
                    result.append({**_row(label, s, rps, drive(setup, t, cfg.horizon_seconds)), **extra})
            return result
    return []


def _find(rows: list[dict[str, object]], judge: str, scenario: str, rps: float) -> dict[str, object] | None:
    return next(
        (r for r in rows if r["judge"] == judge and r["scenario"] == scenario and r["rps"] == rps), None
    )


def targets(rows: list[dict[str, object]]) -> dict[str, object]:
    """The issue's targets, each with the measured figure and whether it is met."""
    out: dict[str, object] = {}
    for judge in sorted({str(r["judge"]) for r in rows}):
        worst = max(
            (float(r["false_rollback_rate"]) for r in rows if r["judge"] == judge and r["good"]), default=0.0
        )
        out[f"false_rollbacks_below_1pct[{judge}]"] = {
            "worst_false_rollback_rate": worst,
            "met": worst < 0.01,
        }
    seq5 = _find(rows, "sequential", "error-rate +5%", 10.0)
    if seq5 is not None:
        out["error_rate_plus5_at_10rps[sequential]"] = {
            "missed_regression_rate": seq5["missed_regression_rate"],
            "median_seconds_to_decision": seq5["median_seconds_to_decision"],
            "met": float(seq5["missed_regression_rate"]) < 0.01
            and float(seq5["median_seconds_to_decision"]) <= 60,
        }
    ratios: dict[str, object] = {}
    for r in rows:
        if r["judge"] != "sequential" or r["metric"] != "error-rate":
            continue
        for other in ("threshold", "threshold (calibrated)"):
            o = _find(rows, other, str(r["scenario"]), float(r["rps"]))
            if o is not None and float(r["median_requests_to_decision"]) > 0:
                key = f"{other} / sequential, {r['scenario']} @ {r['rps']:g} req/s"
                ratios[key] = float(o["median_requests_to_decision"]) / float(
                    r["median_requests_to_decision"]
                )
    out["requests_to_decision_ratio"] = ratios
    key = "threshold (calibrated) / sequential, error-rate +5% @ 10 req/s"
    if key in ratios:
        out["sequential_2x_fewer_requests_at_equal_false_rollbacks"] = {
            "ratio": ratios[key],
            "met": ratios[key] >= 2,
        }
    return out


def _judge_scenarios(
    scenarios: tuple[Scenario, ...],
    rps: float,
    cfg: SimulationConfig,
    rng: np.random.Generator,
    p99_max: float,
) -> tuple[list[dict[str, object]], dict[Scenario, Traffic], dict[str, list[JudgeSetup]]]:
    """Rows of every user judge over these scenarios' traffic; the traffic and setups too."""
    ticks = int(cfg.horizon_seconds // TICK_SECONDS)
    traffic = {s: generate(s, rps, cfg.runs, ticks, rng, cfg.stable_ratio) for s in scenarios}
    rows: list[dict[str, object]] = []
    setups: dict[str, list[JudgeSetup]] = {}
    for scenario, t in traffic.items():
        for setup in setups.setdefault(scenario.metric, user_setups(scenario.metric, p99_max)):
            rows.append(_row(setup.label, scenario, rps, drive(setup, t, cfg.horizon_seconds)))
    return rows, traffic, setups


def simulate(cfg: SimulationConfig) -> dict[str, object]:
    """Run every judge over every scenario and traffic level; rows, targets and timings."""
    started = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    # the regressor's scenarios draw from a stream of their own: the others' figures stay as they were
    regressor_rng = np.random.default_rng(cfg.seed + 2)
    p99_max = latency_threshold()
    rows: list[dict[str, object]] = []
    for rps in cfg.rps:
        cell_rows, traffic, setups = _judge_scenarios(SCENARIOS, rps, cfg, rng, p99_max)
        rows.extend(cell_rows)
        if cfg.calibrate:
            rows.extend(_calibrate(rows, traffic, rps, cfg, setups["error-rate"][0]))
        del traffic
        rows.extend(_judge_scenarios(REGRESSOR_SCENARIOS, rps, cfg, regressor_rng, p99_max)[0])
    ab_rows = simulate_ab(cfg.rps, cfg.runs, cfg.horizon_seconds, cfg.seed + 1) if cfg.ab else []
    return {
        "config": {**asdict(cfg), "latency_p99_threshold_seconds": p99_max, "tick_seconds": TICK_SECONDS},
        "judges": {
            metric: [
                {
                    "label": s.label,
                    "spec": s.metric.model_dump(by_alias=True, exclude_none=True),
                    "min_checks": s.min_checks,
                }
                for s in user_setups(metric, p99_max)
            ]
            for metric in ("error-rate", "latency", "accuracy", "mae")
        },
        "rows": rows,
        "targets": targets(rows),
        "ab_rows": ab_rows,
        "seconds": time.perf_counter() - started,
    }
