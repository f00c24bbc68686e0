"""``analysis.metrics[].provider`` names where a metric is queried. Prometheus is the only provider:
any other name was accepted and the metric queried on Prometheus anyway (a fallback the house
rules forbid); now the spec is refused, naming the field, in ``rollout run`` and in the CRD."""

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
