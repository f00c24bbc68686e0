"""The chart, rendered by the real ``helm`` for every routing mode with every optional object on,
passes checkov's Kubernetes checks, but for the skips of the chart README's "Security scan" table:
the one skip list, read from there, each with its reason and the kinds it may fail on.

- any finding whose check is not in the table fails the test (a new finding must be fixed or
  justified there);
- a check in the table that fails nothing fails the test too (a stale skip hides a regression);
- a skipped check that fails on a kind the table does not name fails the test (a token mounted
  into the load test would not hide behind the controller's reason);
- the image-digest skip is a default, not a limit: rendered with digests, that check passes.

checkov does not know KServe's InferenceService, so each predictor's pod spec is scanned as a Pod
as well. checkov runs from its own venv (``make checkov``; missing: the test fails, never skips),
offline (``--skip-download``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.helmkit import CHART, ROOT, template

pytestmark = pytest.mark.k8s

CHECKOV = ROOT / ".cache" / "checkov" / "bin" / "checkov"
README = CHART / "README.md"
MODES = ["kserve", "istio", "gateway-api"]
EVERYTHING_ON = {
    "models.candidate": "iris:v2",  # the defaults name none (stable alone)
    "rollout.enabled": True,
    "monitoring.enabled": True,
    "loadtest.enabled": True,
    "loadtest.host": "http://gateway.example",
    "networkPolicy.enabled": True,
    "podDisruptionBudget.enabled": True,
    "feedback.redis.persistence.enabled": True,  # join: redis (the default) with its claim
}
DIGEST = "sha256:" + "0" * 64
WITH_DIGESTS = {"image.digest": DIGEST, "controller.image.digest": DIGEST, "loadtest.image.digest": DIGEST,
                "feedback.redis.image.digest": DIGEST}  # fmt: skip


def skip_table() -> dict[str, set[str]]:
    """{check id: kinds it may fail on} from the README's "Security scan" table."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Security scan", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (CKV2?_K8S_\d+) \| [^|]+ \| ([^|]+) \| ([^|]+) \|$", section, re.M)
    assert rows, "no skip table in the chart README's Security scan section"
    for check, _, reason in rows:
        assert len(reason.strip()) > 40, f"{check}: a skip needs its reason"
    return {check: {k.strip() for k in kinds.split(",")} for check, kinds, _ in rows}


def predictor_pods(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each InferenceService's predictor as the Pod KServe makes of it (checkov knows no CRDs)."""
    pods = []
    for doc in docs:
        if doc["kind"] != "InferenceService":
            continue
        spec = {k: v for k, v in doc["spec"]["predictor"].items() if k not in KSERVE_ONLY}
        meta = doc["metadata"]
        pods.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"{meta['name']}-predictor",
                    "namespace": meta["namespace"],
                    "labels": doc["spec"]["predictor"].get("labels", {}),
                },
                "spec": spec,
            }
        )
    return pods


KSERVE_ONLY = {"minReplicas", "maxReplicas", "canaryTrafficPercent", "labels", "scaleTarget", "scaleMetric"}


def render_all(home: Path, out: Path, extra: dict[str, Any]) -> None:
    out.mkdir()
    for mode in MODES:
        docs = template(home, {**EVERYTHING_ON, "routing.mode": mode, **extra})
        assert any(d["kind"] == "InferenceService" for d in docs)
        (out / f"{mode}.yaml").write_text(yaml.safe_dump_all(docs + predictor_pods(docs)))


def checkov(directory: Path) -> list[dict[str, Any]]:
    """checkov's failed Kubernetes checks on every manifest under ``directory``, offline."""
    if not os.access(CHECKOV, os.X_OK):
        pytest.fail(f"checkov is not installed ({CHECKOV} missing): run `make checkov`", pytrace=False)
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_NO_OUTPUT": ""}
    done = subprocess.run(
        [str(CHECKOV), "-d", str(directory), "--framework", "kubernetes", "--skip-download", "-o", "json",
         "--quiet", "--soft-fail"],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"checkov failed to run:\n{done.stderr[-3000:]}"
    report = json.loads(done.stdout) if done.stdout.strip() else {}
    reports = report if isinstance(report, list) else [report]
    assert reports and all(r.get("check_type") == "kubernetes" for r in reports), done.stdout[:2000]
    passed = sum(r["summary"]["passed"] for r in reports)
    assert passed > 100, f"checkov passed only {passed} checks: did it scan the rendered chart?"
    return [f for r in reports for f in r["results"]["failed_checks"]]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("helm-home")


def test_the_chart_passes_checkov_but_for_the_readmes_justified_skips(home: Path, tmp_path: Path) -> None:
    render_all(home, tmp_path / "rendered", {})
    failed = checkov(tmp_path / "rendered")
    allowed = skip_table()
    unjustified = sorted({f"{f['check_id']} {f['resource']}: {f['check_name']}" for f in failed
                          if f["check_id"] not in allowed})  # fmt: skip
    assert unjustified == [], (
        "new findings: fix them or justify them in the chart README's table:\n" + "\n".join(unjustified)
    )
    stale = sorted(set(allowed) - {f["check_id"] for f in failed})
    assert stale == [], f"skipped checks that fail nothing any more: remove them from the README: {stale}"
    outside = sorted(
        {
            f"{f['check_id']} {f['resource']}"
            for f in failed
            if f["resource"].split(".")[0] not in allowed[f["check_id"]]
        }
    )
    assert outside == [], f"skipped checks failing on kinds the README does not name: {outside}"


def test_with_image_digests_the_digest_check_passes(home: Path, tmp_path: Path) -> None:
    render_all(home, tmp_path / "rendered", WITH_DIGESTS)
    failed = {f["check_id"] for f in checkov(tmp_path / "rendered")}
    assert "CKV_K8S_43" not in failed
    assert failed <= set(skip_table())
