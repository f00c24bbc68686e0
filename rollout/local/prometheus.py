"""Prometheus for the local data plane: config, start, stop, readiness, scrape targets.

The Debian package's binary runs with the project's own config and a data directory of its own
(never /etc/prometheus or /var/lib/prometheus), on a free 127.0.0.1 port, scraping every second.
Targets are files under ``targets/`` (file_sd_configs), so a model server added or removed during
a rollout is picked up without a restart: ``add_target`` writes one JSON file atomically,
``remove_target`` deletes it. Who calls it: rollout/local/stack.py, tests.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import yaml

from rollout.errors import ProcessError
from rollout.local.processes import LOOPBACK, ManagedProcess, Supervisor, http_ok

PROMETHEUS_BIN = os.environ.get("ROLLOUT_PROMETHEUS", "/usr/bin/prometheus")
TARGET_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


def render_config(targets_dir: Path, scrape_interval: str = "1s") -> str:
    """prometheus.yml: one job over every targets/*.json file, scraped every ``scrape_interval``."""
    cfg = {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
            "evaluation_interval": scrape_interval,
        },
        "scrape_configs": [
            {
                "job_name": "rollout",
                "file_sd_configs": [{"files": [str(targets_dir / "*.json")], "refresh_interval": "5s"}],
            }
        ],
    }
    return yaml.safe_dump(cfg, sort_keys=False)


class PrometheusServer:
    """One Prometheus with config, targets and TSDB under ``home``."""

    def __init__(
        self,
        supervisor: Supervisor,
        home: Path,
        port: int,
        data_dir: Path | None = None,
        name: str = "prometheus",
    ) -> None:
        self.supervisor = supervisor
        self.home = home
        self.data_dir = data_dir or home / "data"
        self.port = port
        self.name = name
        self.proc: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def targets_dir(self) -> Path:
        return self.home / "targets"

    def start(self, timeout: float = 60.0) -> float:
        """Write the config, start Prometheus, wait for /-/ready; seconds to ready."""
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        conf = self.home / "prometheus.yml"
        conf.write_text(render_config(self.targets_dir))
        argv = [
            PROMETHEUS_BIN,
            f"--config.file={conf}",
            f"--storage.tsdb.path={self.data_dir}",
            "--storage.tsdb.retention.time=1d",
            f"--web.listen-address={LOOPBACK}:{self.port}",
            "--log.level=warn",
        ]
        self.proc = self.supervisor.start(self.name, argv, self.home / "prometheus.log")
        try:
            return self.supervisor.wait_ready(self.proc, http_ok(self.url + "/-/ready"), timeout=timeout)
        except ProcessError as exc:
            raise ProcessError(f"Prometheus ({PROMETHEUS_BIN}) did not start: {exc}") from exc

    def add_target(
        self, name: str, address: str, labels: dict[str, str] | None = None, metrics_path: str = "/metrics"
    ) -> Path:
        """Scrape ``address`` (host:port) under ``name``; picked up within seconds, no restart."""
        if not TARGET_NAME.match(name):
            raise ProcessError(f"target name {name!r} must match {TARGET_NAME.pattern}", delay=0)
        all_labels = {**(labels or {}), "__metrics_path__": metrics_path, "target": name}
        doc = [{"targets": [address], "labels": all_labels}]
        path = self.targets_dir / f"{name}.json"
        tmp = path.with_suffix(".tmp")  # not *.json, so Prometheus never reads a half-written file
        tmp.write_text(json.dumps(doc))
        tmp.replace(path)
        return path

    def remove_target(self, name: str) -> None:
        (self.targets_dir / f"{name}.json").unlink(missing_ok=True)

    def targets(self) -> list[str]:
        return sorted(p.stem for p in self.targets_dir.glob("*.json"))

    def stop(self, timeout: float = 15.0) -> None:
        self.supervisor.stop(self.name, timeout=timeout, sig=signal.SIGTERM)
        self.proc = None
