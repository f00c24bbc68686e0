"""Local-mode commands: ``rollout up|down|run|status|promote|abort|pause|resume``.

``up`` starts the embedded data plane (nginx, Prometheus and the feedback join store on
127.0.0.1) and the stable model server, and leaves it running; ``run SPEC`` drives one rollout on
it to the end (exit 0 promoted or shadow passed, 1 rolled back, 4 aborted, 2 bad spec, or refused:
another live ``run`` drives it, or another rollout of the service is in progress - ``--supersede``
aborts that one first);
``status`` shows the live view (the same one as ``rollout status NAME -n NS`` on a cluster);
``promote|abort|pause|resume`` queue a command that the running ``run`` applies once; with no
live ``run``, ``abort`` acts at once and the others wait for the next ``run`` (it says so);
``down`` stops everything. Who does what: rollout/local/control.py.
State lives under ``$ROLLOUT_HOME`` (default ``.state``). Who calls it: rollout/cli/main.py.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING

import click

from rollout.errors import NotFoundError

if TYPE_CHECKING:
    from rollout.model import RolloutState

# The engine, the data plane and the spec (scipy, numpy, pydantic, httpx...) are imported inside
# the commands, so `rollout --help` and usage errors do not pay for them.

# keyed by Phase value (Phase is a StrEnum: Phase.PROMOTED == "Promoted", same hash)
EXIT_BY_PHASE = {"Promoted": 0, "Succeeded": 0, "RolledBack": 1, "Aborted": 4}


def render_local(name: str, state: RolloutState) -> str:
    from rollout.cli.cluster import render_status
    from rollout.controller.status import status_from_state

    obj = {
        "metadata": {"namespace": "local", "name": name},
        "spec": {
            "service": state.service,
            "stable": {"model": state.stable},
            "candidate": {"model": state.candidate},
        },
        "status": status_from_state(state, time.time()),
    }
    return render_status(obj)


@click.command("up")
@click.option("--service", default="iris", show_default=True, help="the service name clients call")
@click.option("--model", "model_tag", default="iris:v1", show_default=True, help="stable model tag to serve")
@click.option("--workers", type=int, default=1, show_default=True)
@click.option(
    "--digest",
    default=None,
    help="pin the stable model's artifact (sha256:<64 hex>, as `rollout models` shows it): "
    "the server refuses any other",
)
def up_cmd(service: str, model_tag: str, workers: int, digest: str | None) -> None:
    """Start nginx, Prometheus, the join store and the stable model server on 127.0.0.1 (stays up
    until `rollout down`)."""
    from bentos.train import default_bentoml_home
    from rollout.local.stack import LocalStack
    from rollout.registry import check_digest, get_record, verify_artifact
    from rollout.routers.base import RouteTarget

    check_digest(digest)  # UsageError (exit 2) for a malformed pin, before anything starts
    default_bentoml_home()  # the store the servers read (rollout/local/bento.py), not ~/bentoml
    # before anything starts: ModelNotFoundError with a hint, ModelIntegrityError naming
    # both digests (the server checks again, and refuses, whatever changes in between)
    verify_artifact(get_record(model_tag), digest)
    stack = LocalStack.up(services=[service], detach=True, supervise=True)
    try:
        stable = stack.start_bento(service, model_tag, workers=workers, digest=digest)
        stack.router(service).ensure(RouteTarget(service, stable))
    except BaseException:
        stack.stop()
        raise
    stack.detach()
    click.echo(f"service {service}: {stack.service_url(service)}  (stable {model_tag} at {stable.address})")
    click.echo(f"prometheus:   {stack.prometheus_url}")
    click.echo(
        f"labels:       POST {stack.service_url(service)}/feedback with 'Authorization: Bearer <token>'"
        f" (the token is in {stack.join.token_file})"
    )
    click.echo("next: rollout run SPEC; rollout status --watch; rollout down")


@click.command("down")
def down_cmd() -> None:
    """Stop everything `rollout up` started."""
    from rollout.local.stack import LocalStack

    click.echo("stopped the local stack" if LocalStack.down() else "no local stack was running")


def start_note(name: str, spec_path: str, first: RolloutState, replaced: RolloutState | None) -> str | None:
    """What `rollout run` says before it drives ``first``: that a saved rollout of another candidate
    was replaced, or that the rollout ended before (its saved result follows); None otherwise."""
    if replaced is not None:
        return (
            f"note: {name}'s saved rollout of {replaced.candidate} ({replaced.strategy}, "
            f"{replaced.phase.value}) is replaced: {spec_path} ships {first.candidate} "
            f"({first.strategy}); it starts over"
        )
    if first.done:
        ended = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(first.finished_at or 0))
        return (
            f"note: {name} ended before ({first.phase.value} at {ended}): this is its saved result; "
            f"`rollout run --fresh {spec_path}` runs it again"
        )
    return None


@click.command("run")
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("--timeout", type=float, default=None, help="give up waiting after this many seconds")
@click.option("--fresh", is_flag=True, help="forget a saved state of this rollout and start over")
@click.option("-q", "--quiet", is_flag=True, help="print only the outcome")
@click.option("--supersede", is_flag=True, help="abort another rollout of the service in progress first")
def run_cmd(spec_path: str, timeout: float | None, fresh: bool, quiet: bool, supersede: bool) -> None:
    """Run a rollout to the end on the local stack. Exit 0 promoted, 1 rolled back, 4 aborted,
    2 refused (another `rollout run` drives it, or another rollout of the service is in progress)."""
    from rollout.local.control import begin, event_line
    from rollout.local.runner import LocalRunner
    from rollout.local.stack import LocalStack
    from rollout.spec import load_rollout

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rollout = load_rollout(spec_path)
    stack = LocalStack.attach()
    name = rollout.metadata.name
    if rollout.spec.metrics_address is not None:  # the cluster's setting: say that it is not used here
        click.echo(
            f"note: spec.metricsAddress ({rollout.spec.metrics_address}) is read by the cluster's "
            f"controller; `rollout run` queries the local stack's Prometheus ({stack.prometheus_url})",
            err=True,
        )
    seen = [0]

    def report(state: RolloutState) -> None:
        if quiet:
            return
        for e in state.events[seen[0] :] if len(state.events) >= seen[0] else state.events:
            click.echo(event_line(e))
        seen[0] = len(state.events)

    runner = LocalRunner(rollout, stack, on_step=report)
    first = begin(runner, fresh=fresh, supersede=supersede, echo=click.echo)
    note = start_note(name, spec_path, first, runner.replaced)
    if note:
        click.echo(note, err=True)
    try:
        state = runner.run(timeout=timeout)
    except KeyboardInterrupt:
        click.echo(
            f"interrupted; the rollout's state is saved: `rollout run {spec_path}` resumes it", err=True
        )
        raise SystemExit(130) from None
    if not state.done:
        click.echo(f"{name}: still {state.phase.value} after {timeout}s; run again to resume", err=True)
        raise SystemExit(5)
    click.echo(f"{name}: {state.phase.value} ({state.reason}: {state.message})")
    raise SystemExit(EXIT_BY_PHASE.get(state.phase, 1))


@click.command("status")
@click.argument("name", required=False)
@click.option("-w", "--watch", is_flag=True, help="redraw until the rollout ends")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
@click.option("--interval", type=float, default=1.0, show_default=True)
def status_cmd(name: str | None, watch: bool, output: str, interval: float) -> None:
    """Show a local rollout's phase, step, weights, analysis and recent events (all when no NAME)."""
    from rollout.local.control import active_rollout, list_rollouts, load_state

    if name is None and not watch:
        rollouts = list_rollouts()
        if not rollouts:
            raise NotFoundError("no rollouts yet; start one with `rollout run SPEC`")
        if output == "json":
            click.echo(json.dumps({n: json.loads(s.to_json()) for n, s in rollouts}, indent=1))
            return
        for n, s in rollouts:
            w = s.desired_routes
            click.echo(
                f"{n:<28} {s.phase.value:<12} candidate {w.candidate_weight:>3}%  {s.candidate}  {s.reason}"
            )
        return
    name = name or active_rollout()
    while True:
        state = load_state(name)
        if output == "json":
            click.echo(state.to_json())
        else:
            if watch:
                click.clear()
            click.echo(render_local(name, state))
        if not watch or state.done:
            return
        time.sleep(interval)


def _command(kind: str, help_text: str) -> click.Command:
    """A command that gives ``kind`` (a CommandKind value: promote, abort, pause, resume) to a
    rollout: applied by its live ``rollout run``; with none, ``abort`` acts at once, the others
    wait for the next ``rollout run``."""

    @click.command(kind, help=help_text)
    @click.argument("name", required=False)
    def cmd(name: str | None, **opts: bool) -> None:
        from rollout.actions import CommandKind
        from rollout.local.control import active_rollout, send

        real = CommandKind.PROMOTE_FULL if opts.get("full") else CommandKind(kind)
        for line in send(name or active_rollout(), real):
            click.echo(line)

    if kind == "promote":
        cmd = click.option("--full", is_flag=True, help="skip the remaining steps: promote now")(cmd)
    return cmd


def register(cli: click.Group) -> None:
    for c in (up_cmd, down_cmd, run_cmd, status_cmd):
        cli.add_command(c)
    cli.add_command(_command("promote", "Promote: end the current step or wait (--full: promote now)."))
    cli.add_command(_command("abort", "Abort: all traffic back to stable now."))
    cli.add_command(_command("pause", "Pause: hold the weights (analysis keeps running)."))
    cli.add_command(_command("resume", "Resume a paused rollout."))
