"""Cluster commands: ``rollout controller`` and ``rollout status|promote|abort|pause|resume NAME -n NS``.

``controller`` runs the operator (rollout/controller/handlers.py); its settings also come from the
``ROLLOUT_*`` environment the Helm chart sets. The other commands talk to the API server from the
kubeconfig: ``status`` reads the ModelRollout's ``.status`` (``--watch`` redraws it until the
rollout ends); ``promote``/``abort``/``pause``/``resume`` write one command annotation with a
unique id, which the controller applies exactly once and then removes. The same commands run as
``kubectl modelrollout ...`` (the ``kubectl-modelrollout`` entry point).

If another module already registered a command of the same name (the local mode's ``status``,
``promote``...), the two are merged: with ``-n/--namespace``, ``--kubeconfig`` or ``--context`` the
cluster version runs, otherwise the local one. Who calls it: rollout/cli/main.py (COMMAND_MODULES).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import click

from rollout.errors import NotFoundError, UsageError

CLUSTER_FLAGS = ("-n", "--namespace", "--kubeconfig", "--context")


def _client(kubeconfig: str | None, context: str | None) -> Any:
    from rollout.k8s.client import KubeClient

    return KubeClient.from_kubeconfig(kubeconfig, context)


def _cluster_options(fn: Any) -> Any:
    fn = click.option("--context", default=None, help="kubeconfig context")(fn)
    fn = click.option("--kubeconfig", envvar="KUBECONFIG", default=None, help="kubeconfig file")(fn)
    fn = click.option("-n", "--namespace", default=None, help="namespace of the ModelRollout")(fn)
    return fn


def _namespace(namespace: str | None, client: Any) -> str:
    if namespace:
        return namespace
    from kubernetes import config

    try:
        _, active = config.list_kube_config_contexts(config_file=os.environ.get("KUBECONFIG"))
        return str(active.get("context", {}).get("namespace") or "default")
    except (config.ConfigException, OSError, TypeError):
        return "default"


# --- status --------------------------------------------------------------------------------------


def render_status(obj: dict[str, Any]) -> str:
    """The human view of a ModelRollout: phase, step, weights, analysis, recent history."""
    meta, spec, st = obj["metadata"], obj.get("spec", {}), obj.get("status") or {}
    w = st.get("weights") or {}
    lines = [
        f"ModelRollout {meta['namespace']}/{meta['name']}  service {spec.get('service')}",
        f"  stable     {spec.get('stable', {}).get('model')}",
        f"  candidate  {spec.get('candidate', {}).get('model')}",
        f"  phase      {st.get('phase', 'Pending (no controller has picked it up yet)')}"
        + (f"  ({st.get('reason')})" if st.get("reason") else ""),
    ]
    if st.get("message"):
        lines.append(f"  message    {st['message']}")
    if st:
        lines.append(f"  step       {st.get('currentStep', 0)} {st.get('stepName', '')}".rstrip())
        lines.append(
            f"  traffic    stable {w.get('stable', 100)}%  candidate {w.get('candidate', 0)}%"
            + (f"  mirror {w['mirror']}%" if w.get("mirror") else "")
        )
    if st.get("handoff"):  # istio / gateway-api after a promotion: stable takes the model over
        h = st["handoff"]
        lines.append(f"  handoff    {h.get('phase')}: {h.get('message', '')}")
    if st.get("analysis"):
        lines.append("  analysis")
        for m in st["analysis"]:
            value = "-" if m.get("value") is None else f"{m['value']:.4g}"
            lines.append(
                f"    {m['name']:<20} {m.get('latest') or '-':<13} value {value:<10} "
                f"ok {m.get('successful', 0)} failed {m.get('failed', 0)} inconclusive {m.get('inconclusive', 0)} "
                f"errors {m.get('errors', 0)}"
            )
    if st.get("history"):
        lines.append("  history")
        for e in st["history"][-8:]:
            lines.append(f"    {e.get('time')}  {e.get('type'):<7} {e.get('reason'):<22} {e.get('message')}")
    return "\n".join(lines)


TERMINAL = {"Promoted", "RolledBack", "Aborted", "Succeeded", "Invalid"}


@click.command("status")
@click.argument("name")
@_cluster_options
@click.option("-w", "--watch", is_flag=True, help="redraw until the rollout ends")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
@click.option(
    "--interval", type=float, default=2.0, show_default=True, help="--watch refresh period, seconds"
)
def status_cmd(
    name: str,
    namespace: str | None,
    kubeconfig: str | None,
    context: str | None,
    watch: bool,
    output: str,
    interval: float,
) -> None:
    """Show a ModelRollout's phase, step, weights, analysis and history from the cluster."""
    from rollout.k8s.client import MODEL_ROLLOUT

    client = _client(kubeconfig, context)
    ns = _namespace(namespace, client)
    while True:
        obj = client.get(MODEL_ROLLOUT, ns, name)
        if output == "json":
            st = dict(obj.get("status") or {})
            st.pop("state", None)
            click.echo(json.dumps(st, indent=1))
        else:
            if watch:
                click.clear()
            click.echo(render_status(obj))
        phase = (obj.get("status") or {}).get("phase")
        if not watch or phase in TERMINAL:
            break
        time.sleep(interval)


# --- commands ------------------------------------------------------------------------------------


def send_command(client: Any, namespace: str, name: str, kind: str) -> str:
    """Write one command annotation; returns its id. NotFoundError when there is no such rollout."""
    from rollout.controller.status import command_annotation
    from rollout.k8s.client import MODEL_ROLLOUT

    cid, annotations = command_annotation(kind)
    client.patch(MODEL_ROLLOUT, namespace, name, {"metadata": {"annotations": annotations}})
    return cid


def _command(kind: str, help_text: str) -> click.Command:
    @click.command(kind, help=help_text)
    @click.argument("name")
    @_cluster_options
    @click.option("--wait/--no-wait", default=False, help="wait until the controller has applied it")
    @click.option("--timeout", type=float, default=60.0, show_default=True)
    def cmd(
        name: str,
        namespace: str | None,
        kubeconfig: str | None,
        context: str | None,
        wait: bool,
        timeout: float,
        **kw: Any,
    ) -> None:
        from rollout.k8s.client import MODEL_ROLLOUT

        client = _client(kubeconfig, context)
        ns = _namespace(namespace, client)
        what = "promote-full" if kw.get("full") else kind
        try:
            cid = send_command(client, ns, name, what)
        except NotFoundError:
            raise NotFoundError(f"no ModelRollout {name!r} in namespace {ns}") from None
        click.echo(f"{what} requested for {ns}/{name} (command {cid})")
        deadline = time.monotonic() + timeout
        while wait:
            st = client.get(MODEL_ROLLOUT, ns, name).get("status") or {}
            if cid in ((st.get("state") or {}).get("applied_commands") or []):
                click.echo(f"applied: phase {st.get('phase')}")
                return
            if time.monotonic() > deadline:
                raise UsageError(
                    f"the controller did not apply {what} within {timeout:g}s: is `rollout controller` running?"
                )
            time.sleep(1.0)

    if kind == "promote":
        cmd = click.option("--full", is_flag=True, help="skip the remaining steps: promote now")(cmd)
    return cmd


# --- controller ----------------------------------------------------------------------------------


@click.command("controller")
@click.option(
    "-n",
    "--namespace",
    envvar="ROLLOUT_WATCH_NAMESPACE",
    default=None,
    help="watch one namespace (default: all)",
)
@click.option(
    "--kubeconfig",
    envvar="KUBECONFIG",
    default=None,
    help="kubeconfig (default: in-cluster, then ~/.kube/config)",
)
@click.option("--context", default=None)
@click.option(
    "--metrics-address",
    envvar="ROLLOUT_METRICS_ADDRESS",
    default=None,
    help="Prometheus URL when a spec has none",
)
@click.option(
    "--allowed-metrics-address",
    "allowed_metrics_addresses",
    envvar="ROLLOUT_ALLOWED_METRICS_ADDRESSES",
    multiple=True,
    metavar="ADDRESSES",
    help="what a spec's metricsAddress may name: host, host:port or http(s)://host:port/path prefixes, "
    "comma-separated or repeated (default: --metrics-address). Link-local and cloud metadata "
    "addresses are refused even when listed",
)
@click.option(
    "--interval", type=float, default=2.0, show_default=True, help="seconds between reconciles of a rollout"
)
@click.option(
    "--leader-election/--no-leader-election",
    envvar="ROLLOUT_LEADER_ELECTION",
    default=True,
    show_default=True,
)
@click.option(
    "--lease-name", envvar="ROLLOUT_LEASE_NAME", default="bento-rollout-controller", show_default=True
)
@click.option(
    "--lease-namespace", envvar="POD_NAMESPACE", default=None, help="default: the watched namespace"
)
@click.option(
    "--lease-duration", envvar="ROLLOUT_LEASE_DURATION", type=float, default=15.0, show_default=True
)
@click.option(
    "--identity", envvar="POD_NAME", default="", help="leader-election identity (default: host-pid)"
)
@click.option(
    "--health-port", envvar="ROLLOUT_HEALTH_PORT", type=int, default=None, help="serve /healthz on this port"
)
@click.option(
    "--metrics-port",
    envvar="ROLLOUT_METRICS_PORT",
    type=int,
    default=None,
    help="serve the rollout_* series (phase, weight, rollbacks) at /metrics on this port",
)
@click.option(
    "--metrics-host",
    envvar="ROLLOUT_METRICS_HOST",
    default="127.0.0.1",
    show_default=True,
    help="address of --metrics-port (the Helm chart sets 0.0.0.0 so Prometheus reaches the Pod)",
)
@click.option("--log-level", envvar="ROLLOUT_LOG_LEVEL", default="info", show_default=True)
@click.option(
    "--router",
    envvar="ROLLOUT_ROUTER",
    type=click.Choice(["kserve", "istio", "gateway-api", "traefik"]),
    default="kserve",
    show_default=True,
    help="router for rollouts whose spec names none (spec.router.provider left at nginx)",
)
def controller_cmd(
    namespace: str | None,
    kubeconfig: str | None,
    context: str | None,
    metrics_address: str | None,
    allowed_metrics_addresses: tuple[str, ...],
    interval: float,
    leader_election: bool,
    lease_name: str,
    lease_namespace: str | None,
    lease_duration: float,
    identity: str,
    health_port: int | None,
    metrics_port: int | None,
    metrics_host: str,
    log_level: str,
    router: str,
) -> None:
    """Run the ModelRollout operator (kopf): reconcile rollouts with the same engine as local mode."""
    import logging

    from rollout.addresses import split_entries
    from rollout.controller.handlers import ControllerConfig, run

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    in_pod = bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and kubeconfig is None
    cfg = ControllerConfig(
        namespace=namespace,
        kubeconfig=kubeconfig,
        context=context,
        metrics_address=metrics_address,
        allowed_metrics_addresses=split_entries(allowed_metrics_addresses),
        interval=interval,
        leader_election=leader_election,
        lease_name=lease_name,
        lease_namespace=lease_namespace,
        lease_duration=lease_duration,
        identity=identity,
        health_host="0.0.0.0" if in_pod else "127.0.0.1",  # the kubelet probes the pod IP
        health_port=health_port,
        router=router,
        metrics_host=metrics_host,
        metrics_port=metrics_port,
    )
    run(cfg)


# --- registration --------------------------------------------------------------------------------


def _merged(name: str, local: click.Command, cluster: click.Command) -> click.Command:
    """One command that runs ``cluster`` when a cluster flag is given, else ``local``."""

    @click.command(
        name,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
        add_help_option=False,
        help=f"{local.help or ''}\n\nWith -n/--namespace, --kubeconfig or --context: {cluster.help or ''}",
        short_help=(local.get_short_help_str(60) + " (-n NS: in the cluster)"),
    )
    @click.pass_context
    def dispatch(ctx: click.Context) -> Any:
        args = list(ctx.args)
        to_cluster = any(a == f or a.startswith(f + "=") for a in args for f in CLUSTER_FLAGS)
        if not to_cluster and any(a in ("-h", "--help") for a in args):
            for title, cmd in (("Local", local), ("In a cluster (with -n/--namespace)", cluster)):
                sub = cmd.make_context(name, [], parent=ctx.parent, resilient_parsing=True)
                click.echo(f"{title}:\n{cmd.get_help(sub)}\n")
            return None
        use = cluster if to_cluster else local
        with use.make_context(name, args, parent=ctx.parent, help_option_names=["-h", "--help"]) as sub:
            return use.invoke(sub)

    return dispatch


def register(cli: click.Group) -> None:
    commands = [
        status_cmd,
        _command("promote", "Promote: end the current step or wait (--full: promote now)."),
        _command("abort", "Abort: all traffic back to stable now."),
        _command("pause", "Pause: hold the weights (analysis keeps running)."),
        _command("resume", "Resume a paused rollout."),
    ]
    for cmd in commands:
        assert cmd.name is not None
        existing = cli.commands.get(cmd.name)
        cli.add_command(_merged(cmd.name, existing, cmd) if existing is not None else cmd)
    cli.add_command(controller_cmd)
