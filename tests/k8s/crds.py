"""Install the real third-party CRDs (KServe, Gateway API, Istio, Prometheus Operator) into a cluster.

The sources and pinned versions are listed in tests/k8s/crd-sources.yaml. Each module is fetched
with ``go mod download -json MODULE@VERSION`` through the Go module proxy into .cache/go/mod (the
same cache tests/k8s/build-tools.sh uses), and the CRD YAML files are read from the module there:
nothing is copied into this repository. CRDs are applied server-side and we wait until each is
Established and its resource is served.

Called by the ``k8s_cluster`` fixture (tests/conftest.py). ``apply_crd_documents`` also installs
any other CRD (for example the project's own ModelRollout CRD from k8s/).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from rollout.errors import InvalidObjectError, ProcessError

ROOT = Path(__file__).resolve().parents[2]
SOURCES = Path(__file__).with_name("crd-sources.yaml")
GOMODCACHE = ROOT / ".cache" / "go" / "mod"
FIELD_MANAGER = "bento-rollout-tests"
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
# Its version in crd-sources.yaml is also the KServe controller's (build-tools.sh, kserve.py).
KSERVE_MODULE = "github.com/kserve/kserve"


@dataclass(frozen=True)
class CrdSource:
    module: str
    version: str
    files: tuple[str, ...]
    groups: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()


@dataclass(frozen=True)
class InstalledCrd:
    """One CRD now served by the cluster, and the module version it came from."""

    name: str
    group: str
    kind: str
    plural: str
    versions: tuple[str, ...]  # served versions, storage version first
    source: str  # MODULE@VERSION

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.versions[0]}"


def load_sources(path: Path = SOURCES) -> list[CrdSource]:
    raw = yaml.safe_load(path.read_text())
    return [
        CrdSource(
            e["module"],
            e["version"],
            tuple(e["files"]),
            tuple(e.get("groups", ())),
            tuple(e.get("kinds", ())),
        )
        for e in raw
    ]


def pinned(module: str, path: Path = SOURCES) -> str:
    """The version crd-sources.yaml pins ``module`` at (KServe's: CRDs and controller alike)."""
    versions = {s.version for s in load_sources(path) if s.module == module}
    if len(versions) != 1:
        raise ProcessError(f"{path} pins {module} at {sorted(versions) or 'no version'}: want one")
    return versions.pop()


def module_dir(module: str, version: str) -> Path:
    """The extracted module in the Go module cache, downloading it through the proxy if needed."""
    env = {**os.environ, "GOMODCACHE": str(GOMODCACHE), "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"}
    try:
        proc = subprocess.run(
            ["go", "mod", "download", "-json", f"{module}@{version}"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    except FileNotFoundError as exc:
        raise ProcessError("`go` is not on PATH: it is needed to fetch the pinned CRD modules") from exc
    info = json.loads(proc.stdout) if proc.stdout.strip() else {}
    if proc.returncode != 0 or info.get("Error") or not info.get("Dir"):
        detail = info.get("Error") or proc.stderr.strip()
        raise ProcessError(f"cannot fetch {module}@{version} from the Go module proxy: {detail}")
    return Path(info["Dir"])


def documents(source: CrdSource) -> list[dict[str, Any]]:
    """The CustomResourceDefinition documents a source contributes (filtered by group if asked)."""
    root = module_dir(source.module, source.version)
    docs: list[dict[str, Any]] = []
    for rel in source.files:
        path = root / rel
        if not path.is_file():
            raise ProcessError(
                f"{source.module}@{source.version} has no {rel}: fix tests/k8s/crd-sources.yaml"
            )
        for doc in yaml.load_all(path.read_text(), Loader=yaml.CSafeLoader):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            if source.groups and doc["spec"]["group"] not in source.groups:
                continue
            if source.kinds and doc["spec"]["names"]["kind"] not in source.kinds:
                continue
            doc.setdefault("metadata", {}).setdefault("annotations", {})["bento-rollout.dev/source"] = (
                f"{source.module}@{source.version}"
            )
            docs.append(doc)
    if not docs:
        raise ProcessError(f"no CRDs found in {source.module}@{source.version} {list(source.files)}")
    return docs


def _describe(doc: dict[str, Any]) -> InstalledCrd:
    spec = doc["spec"]
    served = [v for v in spec["versions"] if v.get("served")]
    served.sort(key=lambda v: not v.get("storage"))
    return InstalledCrd(
        name=doc["metadata"]["name"],
        group=spec["group"],
        kind=spec["names"]["kind"],
        plural=spec["names"]["plural"],
        versions=tuple(v["name"] for v in served),
        source=doc["metadata"].get("annotations", {}).get("bento-rollout.dev/source", ""),
    )


def apply_crd_documents(
    http: httpx.Client, docs: list[dict[str, Any]], timeout: float = 180.0
) -> list[InstalledCrd]:
    """Server-side apply the CRDs, then wait until each is Established and its resource is served."""
    for doc in docs:
        doc = {k: v for k, v in doc.items() if k != "status"}
        name = doc["metadata"]["name"]
        resp = http.patch(
            f"{CRD_PATH}/{name}",
            params={"fieldManager": FIELD_MANAGER, "force": "true"},
            content=json.dumps(doc),
            headers={"Content-Type": "application/apply-patch+yaml"},
        )
        if not resp.is_success:
            raise InvalidObjectError(
                f"the API server refused CRD {name} ({resp.status_code}): {resp.text[:2000]}"
            )
    installed = [_describe(d) for d in docs]
    deadline = time.monotonic() + timeout
    for crd in installed:
        _wait_served(http, crd, deadline)
    return installed


def _wait_served(http: httpx.Client, crd: InstalledCrd, deadline: float) -> None:
    state = "not yet Established"
    while time.monotonic() < deadline:
        obj = http.get(f"{CRD_PATH}/{crd.name}").json()
        conds = {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}
        if conds.get("Established", {}).get("status") == "True":
            # Established can precede the handler by a moment: list the resource to be sure.
            if http.get(f"/apis/{crd.group}/{crd.versions[0]}/{crd.plural}", params={"limit": 1}).is_success:
                return
            state = "Established but not served yet"
        elif conds.get("NamesAccepted", {}).get("status") == "False":
            raise InvalidObjectError(
                f"CRD {crd.name}: names not accepted: {conds['NamesAccepted'].get('message')}"
            )
        time.sleep(0.2)
    raise ProcessError(f"CRD {crd.name} from {crd.source} is {state} after the timeout")


def install_pinned(http: httpx.Client, sources: list[CrdSource] | None = None) -> list[InstalledCrd]:
    """Install every CRD listed in crd-sources.yaml (or ``sources``); returns what is now served."""
    docs = [d for s in (sources if sources is not None else load_sources()) for d in documents(s)]
    return apply_crd_documents(http, docs)


def prefetch() -> None:
    """Download every pinned CRD module into the cache (``python -m tests.k8s.crds``)."""
    for s in load_sources():
        print(f"crds: {s.module}@{s.version} -> {module_dir(s.module, s.version)}")


if __name__ == "__main__":
    prefetch()
