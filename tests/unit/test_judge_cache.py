"""The engine's judge cache tells apart specs that compare equal but judge differently.

``MetricSpec`` equality ignores which fields the user wrote; the threshold judge honours a
``minSamples`` only when it was written. A rollout whose spec spells out the default must not
hand its judge to another rollout that left it out (found when one test's spec leaked its
``minSamples: 100`` into the next test's rollout, which then never promoted).
"""

from __future__ import annotations

from rollout.analysis.base import ProportionSample, Verdict
from rollout.gate import default_judge
from rollout.spec import MetricSpec

BASE = {"name": "error-rate", "template": "error-rate", "threshold": {"max": 0.05}}


def test_a_written_default_min_samples_does_not_leak_into_an_equal_spec_without_it() -> None:
    written = MetricSpec.model_validate({**BASE, "judge": {"minSamples": 100}}, by_alias=True)
    plain = MetricSpec.model_validate(BASE, by_alias=True)
    assert written == plain  # equal as values ...
    few = ProportionSample(0.0, 10.0, 0.0, 10.0)
    assert default_judge(written).judge("e", few, 0.0).verdict == Verdict.INCONCLUSIVE
    assert default_judge(plain).judge("e", few, 0.0).verdict == Verdict.SUCCESSFUL  # ... not as judges
