"""skaffold.yaml is valid for the pinned Skaffold: checked against the JSON schema shipped in
Skaffold's own Go module (github.com/GoogleContainerTools/skaffold/v2, version pinned in
tests/k8s/skaffold/go.mod), and, with the ``skaffold`` binary built from that module by
tests/k8s/build-tools.sh, by ``skaffold diagnose`` and an offline ``skaffold render`` of each profile
through the real helm binary. The image tag prefix is checked with a throw-away git repo whose
HEAD abbreviates to digits only: rendered, the tag is ``g<digits>``; without the prefix helm gets a
number and the chart's values schema refuses it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.e2e.helmkit import BIN, ROOT, helm_binary, helm_env

pytestmark = pytest.mark.k8s

SKAFFOLD_MODULE = "github.com/GoogleContainerTools/skaffold/v2"
SKAFFOLD_GOMOD = ROOT / "tests" / "k8s" / "skaffold" / "go.mod"
GOMODCACHE = ROOT / ".cache" / "go" / "mod"


def pinned_version() -> str:
    match = re.search(
        rf"^\s*(?:require\s+)?{re.escape(SKAFFOLD_MODULE)}\s+(v\S+)", SKAFFOLD_GOMOD.read_text(), re.M
    )
    assert match, f"{SKAFFOLD_MODULE} is not pinned in {SKAFFOLD_GOMOD}"
    return match.group(1)


def module_dir() -> Path:
    env = {**os.environ, "GOMODCACHE": str(GOMODCACHE), "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"}
    try:
        proc = subprocess.run(
            ["go", "mod", "download", "-json", f"{SKAFFOLD_MODULE}@{pinned_version()}"],
            cwd=SKAFFOLD_GOMOD.parent, env=env, capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
    except FileNotFoundError:
        pytest.fail("`go` is not on PATH: it fetches Skaffold's module (and its schema)", pytrace=False)
    info = json.loads(proc.stdout or "{}")
    assert proc.returncode == 0 and info.get("Dir"), (
        f"go mod download failed: {info.get('Error') or proc.stderr}"
    )
    return Path(info["Dir"])


@pytest.fixture(scope="module")
def skaffold_schema() -> dict[str, Any]:
    config = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    version = config["apiVersion"].split("/", 1)[1]
    path = module_dir() / "docs-v2" / "content" / "en" / "schemas" / f"{version}.json"
    assert path.exists(), f"Skaffold {pinned_version()} has no schema for {config['apiVersion']}"
    return json.loads(path.read_text())


def test_skaffold_yaml_uses_the_latest_schema_of_the_pinned_skaffold() -> None:
    config = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    latest = (module_dir() / "pkg" / "skaffold" / "schema" / "latest" / "config.go").read_text()
    assert f'const Version string = "{config["apiVersion"]}"' in latest


def test_skaffold_yaml_validates_against_skaffolds_schema(skaffold_schema: dict[str, Any]) -> None:
    config = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    errors = [
        f"{list(e.absolute_path)}: {e.message}"
        for e in jsonschema.Draft7Validator(skaffold_schema).iter_errors(config)
    ]
    assert errors == []
    custom = config["build"]["artifacts"][0]["custom"]["buildCommand"]
    assert os.access(ROOT / custom, os.X_OK), f"{custom} is not executable"
    assert {p["name"] for p in config["profiles"]} == {"local", "production"}


def test_the_schema_check_rejects_a_misspelt_field(skaffold_schema: dict[str, Any]) -> None:
    config = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    config["deploy"]["helm"]["releases"][0]["chartPth"] = config["deploy"]["helm"]["releases"][0].pop(
        "chartPath"
    )
    assert list(jsonschema.Draft7Validator(skaffold_schema).iter_errors(config))


def skaffold_binary() -> Path:
    path = BIN / "skaffold"
    if not os.access(path, os.X_OK):
        pytest.fail(f"skaffold is not built ({path} missing): run `make tools`", pytrace=False)
    return path


def run_skaffold(args: list[str], home: Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    helm_binary()
    env = helm_env(home)
    env.update(
        PATH=f"{BIN}:{env.get('PATH', '')}",
        HOME=str(home),
        SKAFFOLD_UPDATE_CHECK="false",
        SKAFFOLD_INTERACTIVE="false",
    )
    # no usage data leaves this machine: opt out in the temporary HOME's skaffold config first
    opt_out = [str(skaffold_binary()), "config", "set", "--global", "collect-metrics", "false"]
    subprocess.run(opt_out, env=env, capture_output=True, text=True, timeout=60, check=True)
    return subprocess.run(
        [str(skaffold_binary()), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.parametrize("profile", ["local", "production"])
def test_skaffold_diagnose_accepts_each_profile(tmp_path: Path, profile: str) -> None:
    result = run_skaffold(["diagnose", "--yaml-only", "-p", profile], tmp_path)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    set_values = resolved["deploy"]["helm"]["releases"][0]["setValues"]
    # skaffold hands setValues to helm as --set strings
    assert str(set_values["controller.replicas"]) == ("1" if profile == "local" else "2")
    assert str(set_values["monitoring.enabled"]).lower() == ("false" if profile == "local" else "true")


@pytest.mark.parametrize("profile", ["local", "production"])
def test_skaffold_render_offline_renders_the_chart(tmp_path: Path, profile: str) -> None:
    """``--digest-source=tag``: image names come from the tagger (git commit / input digest), no build."""
    out = tmp_path / "out.yaml"
    result = run_skaffold(
        ["render", "-p", profile, "--offline=true", "--digest-source=tag", "-o", str(out)], tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    docs = [d for d in yaml.safe_load_all(out.read_text()) if d]
    kinds = {d["kind"] for d in docs}
    assert {"InferenceService", "Deployment", "Role"} <= kinds
    (deploy,) = [
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-controller")
    ]
    assert deploy["spec"]["replicas"] == (1 if profile == "local" else 2)
    assert ("PodMonitor" in kinds) == (profile == "production")
    (isvc,) = [d for d in docs if d["kind"] == "InferenceService"]
    image = isvc["spec"]["predictor"]["containers"][0]["image"]
    assert image.startswith("bento-rollout/iris-service:"), "the chart deploys the image skaffold builds"
    (store,) = [
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-join-redis")
    ]
    assert store["spec"]["template"]["spec"]["containers"][0]["image"].startswith("bento-rollout/redis:")


# --- an all-digit short SHA ----------------------------------------------------------------------

# what skaffold's AbbrevCommitSha tagger runs (pkg/skaffold/tag/git_commit.go in the pinned module)
ABBREV_COMMIT = ["rev-list", "-1", "HEAD", "--abbrev-commit"]
GIT_ENV = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV, "HOME": str(repo.parent)}
    proc = subprocess.run(
        ["git", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return proc.stdout.strip()


@pytest.fixture(scope="module")
def digit_sha_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A throw-away repo with skaffold.yaml and the chart whose HEAD abbreviates to digits only.

    A 7-hex-digit SHA is all digits, the first not 0, with probability 9/16 * (10/16)**6, about 1 in 30, so empty commits
    are made until one is (at most 2000: missing all of them has probability below 1e-30). The
    copy of skaffold.yaml without ``prefix`` is git-ignored, so both configs see the same clean
    tree (a dirty one would get a ``-dirty`` suffix, which is never a number)."""
    repo = tmp_path_factory.mktemp("digits") / "repo"
    repo.mkdir()
    for part in ("helm/bento-rollout", "k8s/build"):
        shutil.copytree(ROOT / part, repo / part)
    for name in ("skaffold.yaml", "bentofile.yaml"):
        shutil.copy2(ROOT / name, repo / name)
    config = (ROOT / "skaffold.yaml").read_text()
    unprefixed = re.sub(r"^\s*prefix:.*\n", "", config, flags=re.M)
    assert unprefixed != config, "skaffold.yaml has no tag prefix line to take out"
    (repo / "skaffold-unprefixed.yaml").write_text(unprefixed)
    (repo / ".gitignore").write_text("skaffold-unprefixed.yaml\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "chart and skaffold.yaml")
    for attempt in range(2000):
        sha = git(repo, *ABBREV_COMMIT)
        # a leading 0 makes YAML read an octal number, or a string when an 8 or 9 follows (then no
        # refusal, and the next test failed once): only digits that are a decimal number
        if sha.isdigit() and not sha.startswith("0"):
            break
        git(repo, "commit", "-q", "--allow-empty", "-m", f"try {attempt}")
    else:
        pytest.fail("no all-digit abbreviated SHA in 2000 commits")
    assert git(repo, "status", "--porcelain") == ""
    return repo, sha


def render_in(repo: Path, config: str, home: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = home / "out.yaml"
    args = ["render", "-f", config, "-p", "local", "--offline=true", "--digest-source=tag", "-o", str(out)]
    return run_skaffold(args, home, cwd=repo), out


def test_an_all_digit_short_sha_reaches_helm_as_a_string_tag(
    digit_sha_repo: tuple[Path, str], tmp_path: Path
) -> None:
    """skaffold's own git tagger names the images (``--tag`` would bypass it, and the prefix with
    it); the real helm then renders the chart, checking the values schema (tags are strings)."""
    repo, sha = digit_sha_repo
    result, out = render_in(repo, "skaffold.yaml", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    docs = [d for d in yaml.safe_load_all(out.read_text()) if d]
    (isvc,) = [d for d in docs if d["kind"] == "InferenceService"]
    assert isvc["spec"]["predictor"]["containers"][0]["image"] == f"bento-rollout/iris-service:g{sha}"
    images = {
        c["image"]
        for d in docs
        if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    # the controller, the feedback join's exporter (the Bento image) and its Redis
    assert images == {
        f"bento-rollout/controller:g{sha}",
        f"bento-rollout/iris-service:g{sha}",
        f"bento-rollout/redis:g{sha}",
    }


def test_without_the_prefix_the_same_sha_is_refused_by_the_chart(
    digit_sha_repo: tuple[Path, str], tmp_path: Path
) -> None:
    """Why the prefix is there: helm reads the bare digits as a number and the schema says no."""
    repo, sha = digit_sha_repo
    result, _ = render_in(repo, "skaffold-unprefixed.yaml", tmp_path)
    assert result.returncode != 0
    assert "'/image/tag': got number, want string" in result.stderr, result.stderr
