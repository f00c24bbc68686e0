"""The Bento of *your* models: the root bentofile.yaml with its ``models:`` list replaced.

The root bentofile.yaml packs the iris variants. The image build takes the models to include
instead from ``BENTO_MODELS`` (tags separated by spaces or commas, e.g. ``wine:v1,wine:v2``, each
registered in the model store with ``rollout import`` or ``rollout train``):

    BENTO_MODELS="wine:v1 wine:v2" IMAGE=my/wine-service:1 k8s/build/build-bento-image.sh
    python -m rollout.k8s.bentofile --models "wine:v1 wine:v2" --out .cache/bentofile-wine.yaml

The image serves any of the packed models, picked at run time by BENTO_MODEL_TAG (the chart's
``models.stable`` / ``models.candidate``). Used by k8s/build/build-bento-image.sh (skaffold) and
the test harness's image build (tests/k8s/buildah_images.py).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from rollout.errors import ModelError, RolloutError, UsageError
from rollout.registry import get_record, parse_tag

MODELS_ENV = "BENTO_MODELS"
ROOT_BENTOFILE = Path(__file__).resolve().parents[2] / "bentofile.yaml"


def parse_models(value: str) -> list[str]:
    """``"wine:v1, wine:v2"`` -> ``["wine:v1", "wine:v2"]``: NAME:VERSION tags, each once."""
    tags = [t for t in re.split(r"[\s,]+", value.strip()) if t]
    if not tags:
        raise UsageError(f"{MODELS_ENV} names no model: give NAME:VERSION tags, e.g. wine:v1,wine:v2")
    for tag in tags:
        parse_tag(tag)
    return list(dict.fromkeys(tags))


def derived(bentofile: dict[str, Any], models: Sequence[str]) -> dict[str, Any]:
    """A copy of ``bentofile`` that packs ``models`` (and only them)."""
    return {**bentofile, "models": list(models)}


def check_registered(models: Sequence[str]) -> None:
    """Every tag is in the store with the metadata the server needs; ModelError naming the first
    one that is not and how to register it."""
    for tag in models:
        try:
            get_record(tag)
        except ModelError as exc:
            raise ModelError(f"{MODELS_ENV}: {exc}") from None


def write(models: Sequence[str], out: Path, source: Path = ROOT_BENTOFILE) -> Path:
    """Write the derived bentofile of ``models`` to ``out`` (checked against the store first)."""
    check_registered(models)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(derived(yaml.safe_load(source.read_text()), models), sort_keys=False))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rollout.k8s.bentofile", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--models", default=os.environ.get(MODELS_ENV, ""), help="tags, e.g. 'wine:v1 wine:v2'"
    )
    parser.add_argument("--out", type=Path, required=True, help="where to write the bentofile")
    args = parser.parse_args(argv)
    os.environ.setdefault(
        "BENTOML_HOME", str(ROOT_BENTOFILE.parent / ".cache" / "bentoml")
    )  # as the Makefile
    try:
        print(write(parse_models(args.models), args.out))
    except RolloutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
