"""The ``rollout`` command: a click group; each command group lives in its own module.

Errors: every ``RolloutError`` becomes one line on stderr and its exit code (spec and usage errors
exit 2, a failed gate 3, others 1), as click does for ``ClickException``. Command modules register
themselves by being listed in ``COMMAND_MODULES``; each exposes ``register(group)``.
"""

from __future__ import annotations

import importlib
import sys

import click

from rollout.errors import RolloutError

# one module per command group; each defines register(cli: click.Group) -> None
COMMAND_MODULES: list[str] = [
    "rollout.cli.models",
    "rollout.cli.local",
    "rollout.cli.demo",
    "rollout.cli.simulate",
    "rollout.cli.cluster",
]  # cluster last: it merges same-named commands


class RolloutGroup(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except RolloutError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=RolloutGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bento-rollout")
def cli() -> None:
    """Serve BentoML models and roll out new versions progressively (canary, blue/green, shadow, A/B)."""


for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(cli)


def main() -> None:
    cli(prog_name="rollout")


def kubectl_plugin() -> None:
    """``kubectl modelrollout ...``: the cluster commands under kubectl's plugin mechanism."""
    cli(prog_name="kubectl modelrollout", args=sys.argv[1:])
