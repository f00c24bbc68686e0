"""The API-only harness runs a kube-apiserver and no pod, so nothing there can be asked what it
serves (rollout/controller/served.py). The controller tests that run on it use this fake instead:

- ``AsAsked``: a FAKE probe - every predictor Service has one Ready endpoint that serves exactly
  the model it is asked about (tag and pinned digest), and every Deployment is rolled out. The
  decisions it feeds are tested on their own (tests/unit/test_served.py) and with real pods
  (tests/e2e/test_cluster_pods.py);
- ``controller(argv)``: the ``rollout`` CLI (``rollout controller ...``) in this process, with
  ``AsAsked`` as the controller's probe (``handlers.run``'s ``probe`` seam).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from rollout.controller.served import Answer, Progress, Serving
from rollout.k8s.client import KubeClient
from rollout.spec import ModelRef


class AsAsked:
    """FAKE (no pod runs here): the pods serve whatever the controller asks about."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str, str]] = []

    def serving(self, namespace: str, service: str, model: ModelRef) -> Serving:
        self.asked.append((namespace, service, model.model))
        name, _, version = model.model.partition(":")
        return Serving(service, (Answer("10.0.0.1:3000", "fake-pod", name, version or None, model.digest),))

    def progress(self, namespace: str, deployment: str) -> Progress:
        return Progress(deployment, True, f"Deployment {deployment} rolled out (fake: no pod runs here)")


def as_asked(_client: KubeClient) -> AsAsked:
    return AsAsked()


def controller(argv: Sequence[str]) -> None:
    """``rollout <argv>`` with the controller's pods answering as asked (the harness has none)."""
    from rollout.cli.main import cli
    from rollout.controller import handlers

    handlers.run = functools.partial(handlers.run, probe=as_asked)  # type: ignore[assignment]
    cli.main(args=list(argv), prog_name="rollout")
