"""The images of the project itself, built here with buildah and no registry: the model service (the
Bento of the root bentofile.yaml) and the controller (k8s/build/controller.Dockerfile), on a
Debian base made from Debian's packages. Used by tests that run them on the single-node cluster
(tests/e2e/test_k8s_images.py: ``node.import_image(bento_image())``); by hand::

    .venv/bin/python -m tests.k8s.buildah_images [base|bento|controller|redis ...]

- ``base``: ``debootstrap --variant=minbase bookworm`` with ``BASE_PACKAGES`` (python3, pip,
  CA certificates) into a ``buildah from scratch`` container, apt's lists and caches and the docs
  dropped, committed as ``bento-rollout.test/base:KEY`` (KEY: a hash of the suite, the mirror, the
  package list and the image config). It lives in buildah's storage and is built once (about 70 s).
- ``bento``: the user's own path: ``bentoml build`` of the root bentofile.yaml with
  ``docker.base_image`` set to the base (a copy of the bentofile under the store; the root one
  stays as users and ``make demo`` have it), then ``bentoml containerize --backend buildah``.
  BentoML's generated Dockerfile (bento v2) runs, on any base image: ``groupadd``/``useradd`` of
  ``bentoml`` (uid 1034), ``apt-get install ca-certificates gnupg2 bash build-essential git``
  (always, from its distro table), ``pip install uv`` unless uv is there, ``uv venv`` at
  /app/.venv from the base's python3 and ``uv pip install`` of the locked requirements. So the
  base carries pip and a ``PIP_BREAK_SYSTEM_PACKAGES`` (Debian's python is PEP 668 "externally
  managed") and the RUN steps need the network: ``--network host`` (no CNI network is made) with
  the host's CA bundle mounted read-only over the image's for their duration (this machine reaches
  PyPI through a TLS-intercepting proxy whose CA only the host trusts; nothing of it stays in
  the image), and ``SSL_CERT_FILE`` in the base so that uv reads that bundle. The models the
  bentofile lists are copied in by ``containerize`` from the model store (trained first with
  ``python -m bentos.train --all`` if one is missing).
- ``controller``: ``buildah build`` of k8s/build/controller.Dockerfile with ``BASE_IMAGE`` set to
  the base (the Dockerfile's default stays ``python:3.11-slim`` for users with a registry).
- ``redis``: ``buildah build`` of k8s/build/redis.Dockerfile (Debian's redis-server, the feedback
  join store the chart deploys) on the base, from an empty context (it copies nothing).

Caching, two levels. An image's KEY hashes everything it is made of (for the Bento: bentofile.yaml,
the files it includes, the models' files, the bentoml version, the base's KEY; for the controller:
the Dockerfile, its ignore file and the files it copies); its OCI archive
``.cache/images/NAME-KEY.oci.tar`` is reused while the KEY is unchanged, with no buildah and no
bentoml run at all (``BuiltImage.built`` is False). Otherwise buildah rebuilds with ``--layers``:
a change in bentos/ or rollout/ reruns only the layers after the dependencies (seconds), as the
Dockerfiles install the dependencies before copying the code. Archives of the same image older than
an hour are removed when a new one is written. Measured times and sizes: tests/k8s/README.md.

Nothing global is touched: buildah's storage (graphroot and runroot), its signature policy (only
local transports are accepted: nothing can be pulled), registries.conf (no search registries) and
containers.conf (its CNI directory) are under ``.cache/images/buildah``; every buildah run is in a
private mount namespace whose /var/lib and /run are fresh tmpfs, where containers/image would otherwise create
/var/lib/containers/cache (its blob-info cache) and runc /run/runc; TMPDIR is in the store too. References
are ``bento-rollout.test/NAME:KEY``, used with ``imagePullPolicy: Never``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from rollout.errors import ProcessError
from rollout.k8s import bentofile as bentofile_module
from tests.k8s.images import CACHE_DIR, REGISTRY, ROOT, Image

STORE = CACHE_DIR / "buildah"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# what the images need of Debian: python3 for both, pip for BentoML's `pip install uv` and the
# controller's `pip install`, the CA bundle for pip and uv (passwd, for useradd, is in minbase)
BASE_PACKAGES = ("python3", "python3-pip", "ca-certificates")
BASE_ENV = {
    "LANG": "C.UTF-8",
    "PIP_BREAK_SYSTEM_PACKAGES": "1",
    "SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt",
}
FORMAT = "1"  # bump when the way the images are built changes (part of every KEY)
_REF_NAME = "org.opencontainers.image.ref.name"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
KEEP_ARCHIVES_FOR = 3600.0  # seconds
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BENTOFILE = ROOT / "bentofile.yaml"
CONTROLLER_DOCKERFILE = ROOT / "k8s" / "build" / "controller.Dockerfile"
CONTROLLER_IGNORE = CONTROLLER_DOCKERFILE.with_name(CONTROLLER_DOCKERFILE.name + ".dockerignore")
CONTROLLER_SOURCES = ("pyproject.toml", "README.md", "rollout", "bentos", "loadtests")
REDIS_DOCKERFILE = ROOT / "k8s" / "build" / "redis.Dockerfile"
TOOLS = {"buildah": "buildah", "debootstrap": "debootstrap", "unshare": "util-linux"}
# containers/image writes its blob-info cache to /var/lib/containers/cache, a path no option
# moves, and runc (a RUN step) its state to /run/runc: in the build's own mount namespace /var/lib
# and /run are fresh tmpfs, gone when the build ends
_PRIVATE_DIRS = " && ".join(
    f"mount -t tmpfs -o mode=0755,size=16m bento-rollout-buildah {d}" for d in ("/var/lib", "/run")
)
_PRIVATE_VAR_LIB = _PRIVATE_DIRS + ' && exec "$@"'


@dataclass(frozen=True)
class BuiltImage:
    """An image of this module: what a pod runs (``image.ref``, ``image.archive`` for ``ctr``), and
    whether this call built it (False: the cached archive of the same KEY was reused as it was)."""

    image: Image
    built: bool
    seconds: float


def _missing(tools: Iterable[str]) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pkgs = " ".join(sorted({TOOLS.get(t, t) for t in missing}))
        raise ProcessError(
            f"building images needs {', '.join(missing)}: install the Debian package(s) {pkgs} "
            "(`make system`, .ci/install-system.sh)"
        )


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256(FORMAT.encode())
    for p in parts:
        h.update(hashlib.sha256(p.encode() if isinstance(p, str) else p).digest())
    return h.hexdigest()[:12]


def _files_digest(paths: Iterable[Path]) -> str:
    """One hash of files' paths (relative to the repo, or absolute outside it) and contents."""
    h = hashlib.sha256()
    for p in sorted(set(paths)):
        name = str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)
        h.update(name.encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def _tree(top: Path) -> list[Path]:
    if top.is_file():
        return [top]
    return [p for p in top.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]


class Buildah:
    """buildah on a store of its own (``STORE``): storage, policy, registries and containers.conf."""

    def __init__(self, store: Path = STORE) -> None:
        self.store = store
        self.policy = store / "policy.json"
        self.tmp = store / "tmp"
        self.logs = store / "logs"

    def setup(self) -> None:
        _missing(["buildah", "unshare"])
        for d in (self.store, self.tmp, self.logs, self.store / "cni"):
            d.mkdir(parents=True, exist_ok=True)
        local = [{"type": "insecureAcceptAnything"}]
        policy = {"default": [{"type": "reject"}], "transports": {
            t: {"": local} for t in ("containers-storage", "oci-archive", "oci", "dir")}}  # fmt: skip
        files = {
            "policy.json": json.dumps(policy, indent=2),
            "storage.conf": (
                f'[storage]\ndriver = "overlay"\ngraphroot = "{self.store / "root"}"\n'
                f'runroot = "{self.store / "run"}"\n'
            ),
            "registries.conf": "unqualified-search-registries = []\n",
            "containers.conf": f'[network]\nnetwork_config_dir = "{self.store / "cni"}"\n',
        }
        for name, text in files.items():
            path = self.store / name
            if not path.exists() or path.read_text() != text:
                path.write_text(text)

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "CONTAINERS_STORAGE_CONF": str(self.store / "storage.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(self.store / "registries.conf"),
            "CONTAINERS_CONF": str(self.store / "containers.conf"),
            "TMPDIR": str(self.tmp),
            "BUILDAH_FORMAT": "oci",
        }

    @staticmethod
    def private(cmd: Sequence[str]) -> list[str]:
        """``cmd`` in a private mount namespace with a fresh tmpfs on /var/lib and /run."""
        return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _PRIVATE_VAR_LIB,
                "sh", *cmd]  # fmt: skip

    def run(
        self,
        cmd: Sequence[str],
        what: str,
        log: str,
        env: dict[str, str] | None = None,
        timeout: float = 1800,
    ) -> None:
        """Run ``cmd`` (buildah, or a tool that runs it) privately, its output into
        ``STORE/logs/LOG.log``; a ProcessError with the log's tail if it fails."""
        logfile = self.logs / f"{log}.log"
        with open(logfile, "w") as out:
            proc = subprocess.run(
                self.private(cmd), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env or self.env(),
                timeout=timeout,
            )  # fmt: skip
        if proc.returncode != 0:
            tail = logfile.read_text(errors="replace")[-3000:]
            raise ProcessError(f"{what} failed (exit {proc.returncode}; log {logfile}):\n{tail}")

    def buildah(self, *args: str, what: str = "", log: str = "buildah") -> None:
        self.run(["buildah", *args], what or f"buildah {args[0]}", log)

    def has_image(self, ref: str) -> bool:
        proc = subprocess.run(
            self.private(["buildah", "inspect", "--type", "image", "--format", "{{.FromImageID}}", ref]),
            capture_output=True, text=True, env=self.env(),
        )  # fmt: skip
        return proc.returncode == 0

    def export(self, ref: str, archive: Path) -> None:
        """``ref`` as an uncompressed OCI archive whose index names it (what ``ctr images import``
        reads). buildah 1.28 gzips every layer it pushes to ``oci-archive:`` or ``oci:``
        (``--disable-compression`` is not honoured there, nor are layers it wrote before reused):
        55 s for the Bento's 1.2 GB at every export. To ``dir:`` it honours it (about 11 s), so
        it pushes there, into a directory of its own, and the archive is packed from it. Archives
        of the image older than ``KEEP_ARCHIVES_FOR`` are removed (a younger one may be in use by a
        test run building from the same tree at the same time)."""
        staging = Path(tempfile.mkdtemp(prefix="export-", dir=self.tmp))
        tmp = archive.with_name(f".{archive.name}.tmp{os.getpid()}")
        try:
            self.buildah("push", "--signature-policy", str(self.policy), "--disable-compression", "--quiet",
                         ref, f"dir:{staging}", what=f"exporting {ref}", log="push")  # fmt: skip
            pack_oci_archive(staging, ref, tmp)
            tmp.replace(archive)
        finally:
            tmp.unlink(missing_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
        stem = archive.name.split("-", 1)[0]
        for old in archive.parent.glob(f"{stem}-*.oci.tar"):
            if old != archive and time.time() - old.stat().st_mtime > KEEP_ARCHIVES_FOR:
                old.unlink(missing_ok=True)


def pack_oci_archive(pushed: Path, ref: str, archive: Path) -> None:
    """An image pushed with ``buildah push DIR:`` (manifest.json, the config and layers named by
    their digests' hex) as an OCI archive: oci-layout, an index naming ``ref`` (also as
    ``io.containerd.image.name``) and the blobs."""
    manifest_blob = (pushed / "manifest.json").read_bytes()
    manifest = json.loads(manifest_blob)
    digest = "sha256:" + hashlib.sha256(manifest_blob).hexdigest()
    entry = {"mediaType": manifest.get("mediaType", OCI_MANIFEST), "digest": digest, "size": len(manifest_blob),
             "annotations": {_REF_NAME: ref, "io.containerd.image.name": ref}}  # fmt: skip
    index = json.dumps({"schemaVersion": 2, "manifests": [entry]}).encode()
    with tarfile.open(archive, "w") as tar:
        for name, data in (("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index),
                           (f"blobs/sha256/{digest[7:]}", manifest_blob)):  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        blobs = [manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])]
        for blob in dict.fromkeys(blobs):
            hexdigest = blob.split(":", 1)[1]
            tar.add(pushed / hexdigest, arcname=f"blobs/sha256/{hexdigest}", recursive=False)


def _ref(name: str, key: str) -> str:
    return f"{REGISTRY}/{name}:{key}"


def base_key() -> str:
    return _digest(SUITE, MIRROR, " ".join(BASE_PACKAGES), json.dumps(BASE_ENV, sort_keys=True))


def base_image(buildah: Buildah | None = None) -> str:
    """The Debian base in buildah's storage (built unless there); its reference."""
    b = buildah or Buildah()
    b.setup()
    ref = _ref("base", base_key())
    if b.has_image(ref):
        return ref
    _missing(["debootstrap"])
    env_args = " ".join(f"--env {k}={v}" for k, v in BASE_ENV.items())
    # one shell in the private namespace: the container's mount exists only there
    script = f"""set -eu
c=$(buildah --signature-policy "$POLICY" from scratch)
trap 'buildah rm "$c" >/dev/null 2>&1 || true' EXIT
m=$(buildah mount "$c")
debootstrap --arch=amd64 --variant=minbase --include={",".join(BASE_PACKAGES)} {SUITE} "$m" {MIRROR} >&2
rm -rf "$m"/var/cache/apt/* "$m"/var/lib/apt/lists/* "$m"/usr/share/doc/* "$m"/usr/share/man/* \\
  "$m"/usr/share/info/* "$m"/usr/share/locale/* "$m"/dev/* "$m"/var/log/*.log "$m"/var/log/apt/*
buildah umount "$c"
buildah config {env_args} --cmd '["python3"]' --label org.opencontainers.image.title=bento-rollout-base "$c"
buildah --signature-policy "$POLICY" commit --rm --quiet "$c" "$REF"
trap - EXIT
"""
    b.run(["sh", "-c", script], f"building the base image {ref} (debootstrap {SUITE})", "base",
          env={**b.env(), "POLICY": str(b.policy), "REF": ref})  # fmt: skip
    return ref


# --- the Bento ---------------------------------------------------------------------------------


def _bentoml_home() -> Path:
    return Path(os.environ.get("BENTOML_HOME") or ROOT / ".cache" / "bentoml")


def _bentofile(models: Sequence[str] | None = None) -> dict:
    """The root bentofile.yaml, or (``models``) its copy that packs those models instead: what
    ``BENTO_MODELS`` does for k8s/build/build-bento-image.sh (rollout/k8s/bentofile.py)."""
    root = yaml.safe_load(BENTOFILE.read_text())
    return bentofile_module.derived(root, models) if models else root


def _model_dirs(bentofile: dict, home: Path) -> list[Path]:
    dirs = []
    for tag in bentofile.get("models", []):
        name, _, version = str(tag).partition(":")
        dirs.append(home / "models" / name / version)
    return dirs


def _ensure_models(bentofile: dict, home: Path, train: bool = True) -> None:
    if all((d / "model.yaml").is_file() for d in _model_dirs(bentofile, home)):
        return
    if not train:  # a user's models: registered with `rollout import`, never trained here
        missing = [str(d) for d in _model_dirs(bentofile, home) if not (d / "model.yaml").is_file()]
        raise ProcessError(f"models to pack are not in {home}: {', '.join(missing)} (`rollout import` them)")
    proc = subprocess.run(
        [sys.executable, "-m", "bentos.train", "--all"], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "BENTOML_HOME": str(home)},
    )  # fmt: skip
    missing = [str(d) for d in _model_dirs(bentofile, home) if not (d / "model.yaml").is_file()]
    if proc.returncode != 0 or missing:
        raise ProcessError(
            f"the models of bentofile.yaml are not in {home} ({', '.join(missing) or 'training failed'}) "
            f"and `python -m bentos.train --all` did not make them (`make models`):\n{proc.stderr[-2000:]}"
        )


def bento_key(base: str, models: Sequence[str] | None = None, home: Path | None = None) -> str:
    bentofile = _bentofile(models)
    home = home or _bentoml_home()
    _ensure_models(bentofile, home, train=not models)
    included = [p for pattern in bentofile.get("include", []) for p in ROOT.glob(pattern) if p.is_file()]
    included = [p for p in included if "__pycache__" not in p.parts]
    if script := bentofile.get("docker", {}).get("setup_script"):
        included.append(ROOT / script)
    packed = [p for d in _model_dirs(bentofile, home) for p in _tree(d)]
    spec = yaml.safe_dump(bentofile).encode() if models else BENTOFILE.read_bytes()
    return _digest(
        base, importlib.metadata.version("bentoml"), spec, _files_digest(included), _files_digest(packed)
    )


def bento_image(
    buildah: Buildah | None = None,
    cache_dir: Path = CACHE_DIR,
    models: Sequence[str] | None = None,
    home: Path | None = None,
) -> BuiltImage:
    """The model service image of the root bentofile.yaml (see the module docstring); with
    ``models``, of a Bento that packs those (a user's, from the model store at ``home``)."""
    started = time.monotonic()
    b = buildah or Buildah()
    b.setup()
    home = home or _bentoml_home()
    key = bento_key(_ref("base", base_key()), models, home)
    ref, archive = _ref("bento", key), cache_dir / f"bento-{key}.oci.tar"
    if archive.is_file():
        return BuiltImage(Image(ref, archive), built=False, seconds=time.monotonic() - started)
    _missing(["buildah", "unshare"])
    base = base_image(b)
    bentoml = Path(sys.executable).with_name("bentoml")
    env = {**b.env(), "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
    source = _bentofile(models)
    bentofile = {**source, "docker": {**source.get("docker", {}), "base_image": base}}
    derived = b.store / f"bentofile-{key}.yaml"
    derived.write_text(yaml.safe_dump(bentofile, sort_keys=False))
    proc = subprocess.run(
        [str(bentoml), "build", "-f", str(derived), "--output", "tag", str(ROOT)],
        cwd=ROOT, capture_output=True, text=True, env=env,
    )  # fmt: skip
    tag = next((ln.split(":", 1)[1] for ln in proc.stdout.splitlines() if ln.startswith("__tag__:")), "")
    if proc.returncode != 0 or not tag:
        raise ProcessError(f"bentoml build -f {derived} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    try:
        b.run(
            [str(bentoml), "containerize", tag, "--backend", "buildah", "--image-tag", ref,
             "--opt", "layers", "--opt", "network=host", "--opt", "pull-never",
             "--opt", f"signature-policy={b.policy}",
             "--opt", f"volume={HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"],
            f"bentoml containerize {tag} --backend buildah", "bento", env=env,
        )  # fmt: skip
        b.export(ref, archive)
    finally:
        subprocess.run([str(bentoml), "delete", tag, "-y"], cwd=ROOT, capture_output=True, env=env)
        derived.unlink(missing_ok=True)
    return BuiltImage(Image(ref, archive), built=True, seconds=time.monotonic() - started)


# --- the controller ----------------------------------------------------------------------------


def controller_key(base: str) -> str:
    sources = [p for s in CONTROLLER_SOURCES for p in _tree(ROOT / s)]
    return _digest(
        base, CONTROLLER_DOCKERFILE.read_bytes(), CONTROLLER_IGNORE.read_bytes(), _files_digest(sources)
    )


def _dockerfile_image(
    name: str,
    key: str,
    dockerfile: Path,
    context: Path,
    buildah: Buildah | None,
    cache_dir: Path,
    ignorefile: Path | None = None,
) -> BuiltImage:
    """``buildah build`` of ``dockerfile`` on the Debian base (``BASE_IMAGE``), unless the archive
    of ``key`` is there; the host's CA bundle is mounted for the RUN steps that fetch packages."""
    started = time.monotonic()
    b = buildah or Buildah()
    b.setup()
    ref, archive = _ref(name, key), cache_dir / f"{name}-{key}.oci.tar"
    if archive.is_file():
        return BuiltImage(Image(ref, archive), built=False, seconds=time.monotonic() - started)
    base = base_image(b)
    ignore = ["--ignorefile", str(ignorefile)] if ignorefile else []
    b.buildah(
        "build", "--layers", "--network", "host", "--pull-never", "--signature-policy", str(b.policy),
        "--volume", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro", "--build-arg", f"BASE_IMAGE={base}",
        "--file", str(dockerfile), *ignore, "--tag", ref, str(context),
        what=f"buildah build -f {dockerfile.relative_to(ROOT)}", log=name,
    )  # fmt: skip
    b.export(ref, archive)
    return BuiltImage(Image(ref, archive), built=True, seconds=time.monotonic() - started)


def controller_image(buildah: Buildah | None = None, cache_dir: Path = CACHE_DIR) -> BuiltImage:
    """The controller image of k8s/build/controller.Dockerfile on the Debian base."""
    key = controller_key(_ref("base", base_key()))
    return _dockerfile_image(
        "controller", key, CONTROLLER_DOCKERFILE, ROOT, buildah, cache_dir, CONTROLLER_IGNORE
    )


# --- the join store ----------------------------------------------------------------------------


def redis_key(base: str) -> str:
    return _digest(base, REDIS_DOCKERFILE.read_bytes())


def redis_image(buildah: Buildah | None = None, cache_dir: Path = CACHE_DIR) -> BuiltImage:
    """The join store's image of k8s/build/redis.Dockerfile (Debian's redis-server) on the base,
    from an empty context (it copies nothing)."""
    key = redis_key(_ref("base", base_key()))
    with tempfile.TemporaryDirectory(prefix="redis-context-") as context:
        return _dockerfile_image("redis", key, REDIS_DOCKERFILE, Path(context), buildah, cache_dir)


def main(argv: Sequence[str]) -> int:
    builders = {
        "base": lambda: base_image(),
        "bento": bento_image,
        "controller": controller_image,
        "redis": redis_image,
    }
    for name in argv or ["bento", "controller", "redis"]:
        started = time.monotonic()
        result = builders[name]()
        print(f"{name}: {result} ({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
