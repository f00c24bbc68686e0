"""A/B cells of the simulator: how often an A/B test picks the wrong winner, and how fast it decides.

Each cell is a pair of versions with a known accuracy gap (0 = an A/A test, where any winner is a
false winner), 50/50 traffic with feedback labels on half the answers (``traffic.generate``), and
the experiment looked at every 10 s on cumulative counts, as the engine does for the A/B deciding
metric. Two rules are driven over the same traffic:
- ``significant (95%)``: the A/B strategy's rule — a winner once both versions have
  ``minSamples`` labels and the always-valid test of ``rollout.analysis.experiment`` proves the
  difference at the confidence; otherwise none by the horizon (``maxDuration``);
- ``leader at minSamples``: the rule it replaced — whichever leads once ``minSamples`` are in.
Who calls it: ``rollout.simulate`` (``rollout simulate``, ``bench/judges.py``) and the unit tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rollout.analysis.batch import ProportionBatch
from rollout.analysis.experiment import CANDIDATE_WINS, NO_WINNER, STABLE_WINS, ExperimentTest
from rollout.metrics.templates import get_template
from rollout.simulator.traffic import TICK_SECONDS, Scenario, Traffic, generate

# accuracy 95 % for stable; the candidate equal, 2 or 3 points better, 5 points worse
AB_SCENARIOS: tuple[Scenario, ...] = (
    Scenario("accuracy"),
    Scenario("accuracy", 0.02),
    Scenario("accuracy", 0.03),
    Scenario("accuracy", -0.05),
)
AB_MIN_SAMPLES = 200
AB_MIN_EFFECT = 0.02  # the deciding metric's judge.minEffect: the mixing scale of the test
AB_CONFIDENCE = 0.95


@dataclass(frozen=True)
class ABRule:
    label: str
    test: ExperimentTest | None  # None: the leader once minSamples are in
    min_samples: int = AB_MIN_SAMPLES


def ab_rules(confidence: float = AB_CONFIDENCE) -> list[ABRule]:
    test = ExperimentTest(get_template("accuracy"), AB_MIN_EFFECT, True, confidence)
    return [ABRule(f"significant ({100 * confidence:.4g}%)", test), ABRule("leader at minSamples", None)]


@dataclass
class ABOutcomes:
    """Per run: NO_WINNER / CANDIDATE_WINS / STABLE_WINS, seconds and labels per version to it."""

    winner: np.ndarray
    seconds: np.ndarray
    samples: np.ndarray


def drive_ab(rule: ABRule, traffic: Traffic, horizon_seconds: float) -> ABOutcomes:
    """Look at the experiment every tick on cumulative counts until a winner or the horizon."""
    cb, ct = np.cumsum(traffic.candidate_bad, axis=1), np.cumsum(traffic.candidate_total, axis=1)
    sb, st = np.cumsum(traffic.stable_bad, axis=1), np.cumsum(traffic.stable_total, axis=1)
    runs, ticks = ct.shape
    last = min(ticks, int(horizon_seconds // TICK_SECONDS))
    winner = np.full(runs, NO_WINNER, dtype=np.int8)
    at = np.full(runs, last)
    open_ = np.ones(runs, dtype=bool)
    for k in range(last):
        batch = ProportionBatch(cb[:, k], ct[:, k], sb[:, k], st[:, k])
        enough = np.minimum(ct[:, k], st[:, k]) >= rule.min_samples
        if rule.test is not None:
            code = rule.test.codes(batch)
        else:  # bad = wrong answers: the version with fewer of them leads
            with np.errstate(invalid="ignore", divide="ignore"):
                rc, rs = cb[:, k] / ct[:, k], sb[:, k] / st[:, k]
            code = np.where(rc < rs, CANDIDATE_WINS, np.where(rc > rs, STABLE_WINS, NO_WINNER))
        done = open_ & enough & (code != NO_WINNER)
        winner[done], at[done] = code[done], k + 1
        open_ &= ~done
        if not open_.any():
            break
    idx = np.clip(at - 1, 0, ticks - 1)
    samples = np.minimum(ct[np.arange(runs), idx], st[np.arange(runs), idx])
    return ABOutcomes(winner, at * TICK_SECONDS, samples)


def ab_row(rule: ABRule, scenario: Scenario, rps: float, out: ABOutcomes) -> dict[str, object]:
    cand, stab = out.winner == CANDIDATE_WINS, out.winner == STABLE_WINS
    row: dict[str, object] = {
        "rule": rule.label,
        "scenario": f"A/B {scenario.name.replace(' good', ' equal')}",
        "accuracy_gap": scenario.regression,
        "rps": rps,
        "runs": int(out.winner.size),
        "candidate_won": float(cand.mean()),
        "stable_won": float(stab.mean()),
        "no_winner": float((out.winner == NO_WINNER).mean()),
        "median_seconds_to_decision": float(np.median(out.seconds)),
        "median_labels_per_version": float(np.median(out.samples)),
    }
    if scenario.regression == 0:
        row["false_winner_rate"] = float((cand | stab).mean())
    else:
        right = cand if scenario.regression > 0 else stab
        row["right_winner_rate"] = float(right.mean())
        row["wrong_winner_rate"] = float((stab if scenario.regression > 0 else cand).mean())
    return row


def simulate_ab(
    rps_levels: tuple[float, ...], runs: int, horizon_seconds: float, seed: int
) -> list[dict[str, object]]:
    """Every rule over every A/B scenario and traffic level (candidate requests per second)."""
    rng = np.random.default_rng(seed)
    ticks = int(horizon_seconds // TICK_SECONDS)
    rows = []
    for rps in rps_levels:
        for scenario in AB_SCENARIOS:
            traffic = generate(scenario, rps, runs, ticks, rng, 1.0)
            for rule in ab_rules():
                rows.append(ab_row(rule, scenario, rps, drive_ab(rule, traffic, horizon_seconds)))
    return rows
