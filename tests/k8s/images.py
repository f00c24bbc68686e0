"""Container images built here, with no registry: OCI archives that ``ctr images import`` takes.

Used by tests/k8s/node.py (the single-node cluster imports them into its containerd before the
kubelet starts). No image can be pulled on this machine, so every image a pod runs is made here:

- ``busybox``: one layer holding Debian's static busybox (package busybox-static) with a symlink
  per applet (``sh``, ``httpd``, ``wget``, ``sleep`` ...), ``/etc/passwd`` and ``/etc/group``
  (root, nobody) and a world-writable ``/tmp``. Entrypoint ``sh``.
- ``pause``: the same layer with entrypoint ``sleep infinity``: the pod sandbox image (containerd's
  ``sandbox_image``). The sandbox holds the pod's namespaces; containerd stops it with SIGKILL.

The layer is a reproducible tar (sorted entries, mtime 0, uid/gid 0), so the image digest depends
only on the busybox binary and ``FORMAT``; the archive is cached as
``.cache/images/NAME-KEY.oci.tar`` and reused while both are unchanged (a rebuild is a file check).
References are ``bento-rollout.test/NAME:KEY`` (``KEY``: 12 hex digits of that cache key), so a
changed image never hides behind an old tag; pods use them with ``imagePullPolicy: Never``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rollout.errors import ProcessError

ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = ROOT / ".cache" / "images"
REGISTRY = "bento-rollout.test"  # a name no registry answers to: the images exist only here
BUSYBOX = Path("/bin/busybox")
FORMAT = "1"  # bump when the layout of the images changes (it is part of the cache key)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
PLATFORM = {"architecture": "amd64", "os": "linux"}

PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnobody:x:65534:\n"


@dataclass(frozen=True)
class Image:
    """An image built here: its reference (what a pod's ``image:`` says) and its OCI archive."""

    ref: str
    archive: Path


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class _Tar:
    """A reproducible tar: entries in the order added, owner root, mtime 0."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)

    def _info(self, name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime, info.uid, info.gid = kind, mode, 0, 0, 0
        info.uname = info.gname = ""
        return info

    def dir(self, name: str, mode: int = 0o755) -> None:
        self.tar.addfile(self._info(name, tarfile.DIRTYPE, mode))

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        info = self._info(name, tarfile.REGTYPE, mode)
        info.size = len(data)
        self.tar.addfile(info, io.BytesIO(data))

    def symlink(self, name: str, target: str) -> None:
        info = self._info(name, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        self.tar.addfile(info)

    def close(self) -> bytes:
        self.tar.close()
        return self.buf.getvalue()


def _read_busybox(busybox: Path) -> bytes:
    if not busybox.is_file():
        raise ProcessError(
            f"{busybox} is missing: install busybox-static (`make system`, .ci/install-system.sh)"
        )
    return busybox.read_bytes()


def busybox_applets(busybox: Path = BUSYBOX) -> list[str]:
    proc = subprocess.run([str(busybox), "--list"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ProcessError(f"{busybox} --list failed: {proc.stderr.strip()}")
    return sorted(a for a in proc.stdout.split() if a and "/" not in a and a != "busybox")


def busybox_layer(busybox: Path = BUSYBOX) -> bytes:
    """The root filesystem of the busybox images as an uncompressed tar layer."""
    binary = _read_busybox(busybox)
    t = _Tar()
    for d in ("bin", "dev", "etc", "proc", "root", "sys", "var"):
        t.dir(d, 0o700 if d == "root" else 0o755)
    t.dir("tmp", 0o1777)
    t.file("bin/busybox", binary, 0o755)
    for applet in busybox_applets(busybox):
        t.symlink(f"bin/{applet}", "busybox")
    t.file("etc/passwd", PASSWD.encode())
    t.file("etc/group", GROUP.encode())
    return t.close()


def oci_archive(ref: str, layers: list[bytes], entrypoint: list[str], cmd: list[str] | None = None) -> bytes:
    """An OCI image layout (oci-layout, index.json, blobs/sha256/...) as a tar, for one image whose
    index entry carries its full reference (``io.containerd.image.name``, read by ``ctr images import``)."""
    config = {
        **PLATFORM,
        "config": {"Entrypoint": entrypoint, "Cmd": cmd, "Env": ["PATH=/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [_sha256(layer) for layer in layers]},
    }
    config_blob = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": _sha256(config_blob), "size": len(config_blob)},
        "layers": [
            {"mediaType": OCI_LAYER, "digest": _sha256(layer), "size": len(layer)} for layer in layers
        ],
    }
    manifest_blob = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    tag = ref.rsplit(":", 1)[1]
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": _sha256(manifest_blob),
                "size": len(manifest_blob),
                "platform": PLATFORM,
                "annotations": {"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    t = _Tar()
    t.file("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    t.file("index.json", json.dumps(index, sort_keys=True).encode())
    t.dir("blobs")
    t.dir("blobs/sha256")
    seen: set[str] = set()
    for blob in (config_blob, manifest_blob, *layers):
        digest = _sha256(blob)
        if digest not in seen:
            seen.add(digest)
            t.file(f"blobs/sha256/{digest.split(':', 1)[1]}", blob)
    return t.close()


def _cache_key(*parts: bytes) -> str:
    h = hashlib.sha256(FORMAT.encode())
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()[:12]


def _cached(name: str, key: str, build: Callable[[str], bytes], cache_dir: Path) -> Image:
    ref = f"{REGISTRY}/{name}:{key}"
    archive = cache_dir / f"{name}-{key}.oci.tar"
    if not archive.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = archive.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(build(ref))
        tmp.replace(archive)
    return Image(ref=ref, archive=archive)


def busybox_images(cache_dir: Path = CACHE_DIR, busybox: Path = BUSYBOX) -> dict[str, Image]:
    """``{"busybox": Image, "pause": Image}``, built into ``cache_dir`` unless already there."""
    key = _cache_key(_read_busybox(busybox))
    layer: list[bytes] = []

    def the_layer() -> list[bytes]:
        if not layer:
            layer.append(busybox_layer(busybox))
        return layer

    return {
        "busybox": _cached("busybox", key, lambda ref: oci_archive(ref, the_layer(), ["sh"]), cache_dir),
        "pause": _cached(
            "pause", key, lambda ref: oci_archive(ref, the_layer(), ["sleep", "infinity"]), cache_dir
        ),
    }
