"""``rollout demo``: the local progressive-rollout demo (rollout/demo/scenarios.py).

Exit 0 when every scenario ended as it should (good candidates promoted, bad ones rolled back)
with no failed client request. Who calls it: rollout/cli/main.py, ``make demo``.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command("demo")
@click.option("--users", type=int, default=8, show_default=True, help="concurrent Locust users")
@click.option("--reports", type=click.Path(file_okay=False), default="reports", show_default=True)
@click.option("--only", multiple=True, help="run only these scenarios (repeatable)")
def demo_cmd(users: int, reports: str, only: tuple[str, ...]) -> None:
    """Train, bring up BentoML + nginx + Prometheus, and run canary, blue/green, shadow and A/B rollouts."""
    from rollout.demo.scenarios import SCENARIOS, run_demo
    from rollout.errors import UsageError

    unknown = sorted(set(only) - {s.name for s in SCENARIOS})
    if unknown:
        raise UsageError(
            f"unknown scenario {', '.join(unknown)}; choose from {', '.join(s.name for s in SCENARIOS)}"
        )
    raise SystemExit(run_demo(Path(reports), users=users, only=list(only) or None, echo=click.echo))


def register(cli: click.Group) -> None:
    cli.add_command(demo_cmd)
