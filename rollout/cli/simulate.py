"""``rollout simulate``: measure the judges on simulated rollouts with known truth.

Runs ``rollout.simulate`` (good and bad candidates at several traffic levels, each judge driven as
the engine drives it), prints the side-by-side table and the targets, and optionally writes the
JSON and a PNG plot. Registered by ``rollout/cli/main.py`` through COMMAND_MODULES.
"""

from __future__ import annotations

from pathlib import Path

import click

from rollout.errors import UsageError


@click.command("simulate")
@click.option(
    "--runs", default=2000, show_default=True, help="Simulated rollouts per scenario and traffic level."
)
@click.option(
    "--rps",
    "rps",
    multiple=True,
    type=float,
    help="Candidate requests per second (repeat). Default: 1, 10, 100.",
)
@click.option(
    "--horizon", default=1200.0, show_default=True, help="Seconds after which a rollout counts as undecided."
)
@click.option(
    "--stable-ratio",
    default=1.0,
    show_default=True,
    help="Stable requests per candidate request (9 = a 10% canary).",
)
@click.option("--seed", default=20261122, show_default=True, help="Random seed (same seed, same figures).")
@click.option(
    "--no-calibrate", is_flag=True, help="Skip calibrating the threshold judge to equal false rollbacks."
)
@click.option("--no-ab", is_flag=True, help="Skip the A/B cells (false winners and time to a winner).")
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the results here."
)
@click.option(
    "--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), help="Write a PNG plot here."
)
def simulate_command(
    runs: int,
    rps: tuple[float, ...],
    horizon: float,
    stable_ratio: float,
    seed: int,
    no_calibrate: bool,
    no_ab: bool,
    json_path: Path | None,
    plot_path: Path | None,
) -> None:
    """Compare the threshold, comparative and sequential judges on simulated rollouts (and the
    A/B test's rule against picking the leader)."""
    if runs < 10 or runs > 200_000:
        raise UsageError(f"--runs must be between 10 and 200000, got {runs}")
    if any(r <= 0 for r in rps):
        raise UsageError("--rps must be positive")
    if horizon < 60:
        raise UsageError(f"--horizon must be at least 60 seconds, got {horizon:g}")
    if stable_ratio <= 0:
        raise UsageError("--stable-ratio must be positive")
    from rollout.simulate import SimulationConfig, simulate  # numpy, scipy: after the usage checks
    from rollout.simulator.report import plot, table, write_json

    cfg = SimulationConfig(
        runs=runs,
        rps=tuple(rps) or (1.0, 10.0, 100.0),
        horizon_seconds=horizon,
        stable_ratio=stable_ratio,
        seed=seed,
        calibrate=not no_calibrate,
        ab=not no_ab,
    )
    result = simulate(cfg)
    click.echo(table(result))
    click.echo(f"\n{runs} rollouts per cell, {float(result['seconds']):.1f} s")  # type: ignore[arg-type]
    if json_path is not None:
        write_json(result, json_path)
        click.echo(f"wrote {json_path}")
    if plot_path is not None:
        plot(result, plot_path)
        click.echo(f"wrote {plot_path}")


def register(cli: click.Group) -> None:
    cli.add_command(simulate_command)
