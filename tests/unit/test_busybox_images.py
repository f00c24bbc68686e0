"""tests/k8s/images.py: the OCI archives of the images built here are reproducible, well-formed
(every digest is the digest of its blob) and cached by content."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from tests.k8s import images

pytestmark = pytest.mark.skipif(
    not images.BUSYBOX.exists(), reason="busybox-static missing: run `make system`"
)


def _members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: m for m in tar.getmembers()}


def _read(data: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        f = tar.extractfile(name)
        assert f is not None
        return f.read()


def test_the_busybox_layer_is_reproducible_and_holds_the_applets() -> None:
    layer = images.busybox_layer()
    assert layer == images.busybox_layer()
    members = _members(layer)
    for applet in ("sh", "httpd", "wget", "sleep"):
        assert members[f"bin/{applet}"].issym() and members[f"bin/{applet}"].linkname == "busybox"
    assert members["bin/busybox"].mode == 0o755 and members["tmp"].mode == 0o1777
    assert {m.mtime for m in members.values()} == {0} and {m.uid for m in members.values()} == {0}
    assert b"nobody:x:65534" in _read(layer, "etc/passwd")


def test_every_digest_in_the_archive_is_that_of_its_blob() -> None:
    layer = images.busybox_layer()
    archive = images.oci_archive("bento-rollout.test/x:1", [layer], ["sleep", "infinity"])

    def blob(digest: str) -> bytes:
        data = _read(archive, f"blobs/sha256/{digest.removeprefix('sha256:')}")
        assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
        return data

    index = json.loads(_read(archive, "index.json"))
    (entry,) = index["manifests"]
    assert entry["annotations"]["io.containerd.image.name"] == "bento-rollout.test/x:1"
    manifest = json.loads(blob(entry["digest"]))
    config = json.loads(blob(manifest["config"]["digest"]))
    assert [blob(layer_["digest"]) for layer_ in manifest["layers"]] == [layer]
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer).hexdigest()]
    assert config["config"]["Entrypoint"] == ["sleep", "infinity"]
    assert json.loads(_read(archive, "oci-layout")) == {"imageLayoutVersion": "1.0.0"}


def test_archives_are_cached_by_content(tmp_path: Path) -> None:
    first = images.busybox_images(cache_dir=tmp_path)
    mtimes = {name: image.archive.stat().st_mtime_ns for name, image in first.items()}
    again = images.busybox_images(cache_dir=tmp_path)
    assert again == first and {n: i.archive.stat().st_mtime_ns for n, i in again.items()} == mtimes
    tag = first["busybox"].ref.rsplit(":", 1)[1]
    assert first["pause"].ref == f"{images.REGISTRY}/pause:{tag}" and len(tag) == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"busybox-{tag}.oci.tar", f"pause-{tag}.oci.tar"]
