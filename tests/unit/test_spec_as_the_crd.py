"""What ``rollout run`` accepts is what the CRD accepts, and nothing is silently stood in for.

- ``analysis.metrics[].provider``: Prometheus is the only provider; any other name was accepted
  and the metric queried on Prometheus anyway (a fallback the house rules forbid): now refused,
  naming the field, by the spec and by the CRD's enum.
- durations: the CRD takes an integer or a string like '30s'; the spec also took 1.5 and ' 30s '.
"""

from __future__ import annotations

import pytest
import yaml

from rollout.errors import SpecError
from rollout.k8s import generate
from rollout.spec import MetricProviderKind
from tests.kit import rollout_spec

CANARY = {"canary": {"steps": [{"setWeight": 10}]}}


def metric(**extra: object) -> dict[str, object]:
    return {"name": "errors", "query": "up", "threshold": {"max": 1}, **extra}


def test_prometheus_written_or_left_out_is_the_provider() -> None:
    for m in (metric(), metric(provider="prometheus")):
        spec = rollout_spec("ok", strategy=CANARY, analysis={"metrics": [m]}).spec
        assert spec.analysis.metrics[0].provider == MetricProviderKind.PROMETHEUS


def test_another_provider_is_refused_naming_the_field() -> None:
    with pytest.raises(
        SpecError, match=r"spec\.analysis\.metrics\[0\]\.provider: Input should be 'prometheus'"
    ):
        rollout_spec("dd", strategy=CANARY, analysis={"metrics": [metric(provider="datadog")]})


def test_the_crd_refuses_it_too() -> None:
    crd = yaml.safe_load(generate.CRD_FILE.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    provider = spec["properties"]["analysis"]["properties"]["metrics"]["items"]["properties"]["provider"]
    assert provider["enum"] == ["prometheus"]


@pytest.mark.parametrize("written", [1.5, " 30s", "30s ", "30 s"])
def test_a_duration_the_crd_would_refuse_is_refused_by_rollout_run_too(written: object) -> None:
    """The CRD admits an integer or a string like '30s' (no spaces); the spec took 1.5 and ' 30s ',
    so a file that `rollout run` accepted was refused by `kubectl apply`."""
    import re

    with pytest.raises(SpecError, match="invalid duration"):
        rollout_spec("d", strategy=CANARY, analysis={"interval": written})
    crd = yaml.safe_load(generate.CRD_FILE.read_text())
    analysis = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "analysis"
    ]
    pattern = analysis["properties"]["interval"]["pattern"]
    assert isinstance(written, float) or not re.match(pattern, str(written))


def test_durations_the_crd_admits_are_taken() -> None:
    for written, seconds in ((2, 2.0), ("1.5m", 90.0), ("500ms", 0.5), ("1.5", 1.5)):
        assert (
            rollout_spec("d", strategy=CANARY, analysis={"interval": written}).spec.analysis.interval
            == seconds
        )
