"""``make demo`` runs ``rollout demo``: the command a newcomer runs first. Here one of its five
rollouts (``--only canary-poisoned``, about 80 s), for real: BentoML servers, nginx, Prometheus and
Locust, as the full demo runs them. What the person watching sees: what is happening at each stage,
where the demo is (rollout 1 of 1), the rollback, the table, and a report on disk; Locust's labels
are accepted (the stack's feedback token) and joined in the stack's Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from rollout.local.bento import REPO_ROOT


def test_the_demo_says_what_it_does_rolls_the_poisoned_model_back_and_writes_its_report(
    bentoml_home: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home), "BENTOML_DO_NOT_TRACK": "True"}
    r = subprocess.run(
        [
            str(Path(sys.executable).with_name("rollout")),
            "demo",
            "--only",
            "canary-poisoned",
            "--reports",
            str(tmp_path),
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
    )
    out = r.stdout
    assert r.returncode == 0, out[-3000:] + r.stderr[-3000:]
    stages = [
        "models: training the demo's scikit-learn models",
        "model iris:poisoned: up to date",
        "stack: starting nginx, Prometheus and the join store; then 1 rollout, each under Locust load",
        "== [1/1] canary-poisoned: canary of iris:poisoned against iris:v1 (at most 120 s)",
        "RolledBack             rolled back",
        "   canary-poisoned: RolledBack; demo ",
        "canary-poisoned        canary      iris:poisoned  RolledBack  yes",
        "demo took ",
    ]
    at = [out.find(s) for s in stages]
    assert -1 not in at and at == sorted(at), dict(zip(stages, at, strict=True))
    (report,) = tmp_path.iterdir()
    summary = json.loads((report / "summary.json").read_text())
    (row,) = summary["scenarios"]
    assert row["outcome"] == "RolledBack" and row["failed_requests"] == 0, row
    # Locust's labels carried the stack's token and were joined in its Redis: none refused as forged
    labels = json.loads((report / "canary-poisoned.locust.json").read_text())["labels_by_status"]
    assert labels.get("200", 0) > 50 and "401" not in labels and "403" not in labels, labels
    assert (report / row["plot"]).stat().st_size > 0
