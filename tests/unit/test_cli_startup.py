"""`rollout --help`, `rollout status --help` and usage errors load no heavy library.

The engine (scipy), the model store (sklearn, bentoml) and the cluster side (kubernetes, kopf)
are imported inside the commands that need them, so asking the CLI for help or mistyping a
command answers at once. Each case runs in a fresh interpreter, the only way to see what an
import really loads; the speed itself is measured by hand (``python -X importtime``), not here.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("scipy", "sklearn", "numpy", "kubernetes", "kopf", "bentoml", "pydantic", "httpx")

# runs the CLI as the `rollout` entry point does, then reports exit code and loaded heavy modules
SCRIPT = """
import json, sys
import rollout.cli.main as m
code = 0
if len(sys.argv) > 1:
    try:
        m.cli.main(sys.argv[1:], prog_name="rollout")
    except SystemExit as exc:
        code = exc.code
heavy = [h for h in {heavy!r} if h in sys.modules]
print("@@" + json.dumps({{"code": code, "heavy": heavy}}))
"""


def run_cli(*args: str) -> tuple[int, list[str], str]:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(heavy=HEAVY), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "@@" in proc.stdout, proc.stderr
    text, _, report = proc.stdout.rpartition("@@")
    result = json.loads(report)
    return result["code"], result["heavy"], text + proc.stderr


def test_importing_the_cli_loads_no_scipy_sklearn_kubernetes_or_kopf() -> None:
    code, heavy, _ = run_cli()
    assert code == 0
    assert not {"scipy", "sklearn", "kubernetes", "kopf"} & set(heavy), heavy
    assert heavy == [], f"the CLI module imports {heavy} before any command runs"


@pytest.mark.parametrize(
    ("args", "exit_code", "says"),
    [
        (["--help"], 0, "Commands:"),
        (["status", "--help"], 0, "In a cluster (with -n/--namespace)"),
        (["controller", "--help"], 0, "--leader-election"),
        (["nosuch"], 2, "No such command 'nosuch'"),
        (["status", "-n"], 2, "Option '-n' requires an argument"),
        (["simulate", "--runs", "5"], 2, "--runs must be between 10 and 200000"),
    ],
)
def test_help_and_usage_errors_answer_without_loading_heavy_modules(
    args: list[str], exit_code: int, says: str
) -> None:
    code, heavy, output = run_cli(*args)
    assert code == exit_code, output
    assert says in output
    assert heavy == [], f"`rollout {' '.join(args)}` loaded {heavy}"


def test_the_package_still_exports_its_public_names() -> None:
    import rollout
    from rollout import ModelRollout, RolloutError, RolloutSpec, SpecError, load_rollout

    assert set(rollout.__all__) <= set(dir(rollout))
    assert RolloutSpec.__module__ == "rollout.spec" and ModelRollout.__module__ == "rollout.spec"
    assert issubclass(SpecError, RolloutError) and callable(load_rollout)
    with pytest.raises(AttributeError):
        _ = rollout.no_such_name
