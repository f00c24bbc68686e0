"""The Bento of a user's models (rollout/k8s/bentofile.py, BENTO_MODELS of the image build)."""

from __future__ import annotations

import pytest
import yaml

from rollout.errors import UsageError
from rollout.k8s.bentofile import ROOT_BENTOFILE, derived, parse_models


def test_tags_are_split_on_spaces_and_commas_and_kept_once_in_order() -> None:
    assert parse_models(" wine:v1, wine:v2  wine:v1\n") == ["wine:v1", "wine:v2"]


@pytest.mark.parametrize("value", ["", " , ", "wine"])
def test_no_tag_or_a_tag_without_version_is_a_usage_error(value: str) -> None:
    with pytest.raises(UsageError, match="NAME:VERSION"):
        parse_models(value)


def test_the_derived_bentofile_packs_only_the_users_models_and_keeps_everything_else() -> None:
    root = yaml.safe_load(ROOT_BENTOFILE.read_text())
    mine = derived(root, ["wine:v1", "wine:v2"])
    assert mine["models"] == ["wine:v1", "wine:v2"]
    assert {k: v for k, v in mine.items() if k != "models"} == {
        k: v for k, v in root.items() if k != "models"
    }
    assert root["models"][0] == "iris:v1"  # the root bentofile is not changed
