"""Text from outside enters a message only as ``rollout.errors.excerpt``: one short line of
printable ASCII, terminal escapes dropped. The controller's own bounded descriptions of unexpected
errors (defence.describe, which go into .status and Events) pass through it too."""

from __future__ import annotations

import pytest

from rollout.controller.defence import MAX_MESSAGE, describe
from rollout.errors import EXCERPT, excerpt

HOSTILE = (
    "\x1b[2J\x1b[31mERROR\x1b[0m line one\r\nline two\tTAB\x00NUL\x07BEL\x1b]0;title\x07"
    "\u202eRTL\u2028LS caf\u00e9 \U0001f600" + "x" * 10_000 + "TAIL-SECRET"
)


def clean(text: str) -> bool:
    return all(" " <= c <= "~" for c in text)


def test_an_excerpt_is_one_short_printable_line() -> None:
    got = excerpt(HOSTILE)
    assert len(got) <= EXCERPT == 120
    assert clean(got) and "TAIL-SECRET" not in got
    assert got.startswith("ERROR line one line two TAB NUL BEL RTL LS caf")  # escapes gone, words kept
    assert got.endswith("...")


@pytest.mark.parametrize("text", ["", "   ", "\n\n", "\x1b[31m"])
def test_nothing_printable_is_empty(text: str) -> None:
    assert excerpt(text) == ""


def test_short_text_is_kept_and_other_values_are_quoted() -> None:
    assert excerpt("query queue full") == "query queue full"
    assert excerpt({"error": "x\ny"}) == "{'error': 'x\\ny'}"
    assert excerpt("a" * 200, 10) == "aaaaaaa..."


def test_an_unexpected_errors_description_is_bounded_and_clean() -> None:
    got = describe(ValueError(HOSTILE))
    assert got.startswith("ValueError: ERROR line one")
    assert len(got) <= MAX_MESSAGE and clean(got) and "TAIL-SECRET" not in got
