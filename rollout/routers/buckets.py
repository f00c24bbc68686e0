"""Sticky splits as header matches: a user's version picked by the last character of the sticky key,
for routers whose data plane has no session affinity of its own.

Gateway API's ``sessionPersistence`` is experimental-channel only (the standard CRDs refuse it) and
implementations may ignore it (Traefik v3.6 does: every request split anew). What every
implementation has is a header match with a regular expression (RE2-compatible, anchored here so
full-match and partial-match engines agree). So a sticky split of ``weight`` % to the candidate is:

- one rule: the sticky key's value *ends* with one of ``bucket(weight)``'s characters -> candidate;
- the rest of the requests with the key, and those without it, -> stable.

The same key always gets the same version, and the share is ``weight`` % for keys whose last
character is a uniformly distributed decimal digit (``user-17``, numeric ids: weight/10 of the ten
digits) or hex digit (UUIDs, hashes: about weight x 16/100 of the sixteen; letters in both cases).
Weights are tens (10, 20 ... 90): a weight the buckets cannot express is refused, not rounded.
Keys ending in anything else (a letter beyond f) go to stable. A cookie key is matched inside the
``Cookie`` header as matching.py matches cookies. ``parse`` is the inverse, for read-back.
Who calls it: routers/gateway_api.py.
"""

from __future__ import annotations

import re

from rollout.errors import UnsupportedRouteError
from rollout.routers.matching import COOKIE_HEADER
from rollout.spec import StickyKey

DIGITS, LETTERS = "0123456789", "abcdef"
_PREFIX, _SUFFIX = r"^(.*;\s*)?", r"(;.*)?$"
_CLASS = r"\[(?P<chars>[0-9a-fA-F]+)\]"
_HEADER_RE = re.compile(rf"^\^\.\*{_CLASS}\$$")
_COOKIE_RE = re.compile(
    r"^\^\(\.\*;\\s\*\)\?(?P<name>(?:[A-Za-z0-9]|\\[-_.])+)=\[\^;\]\*" + _CLASS + r"\(;\.\*\)\?\$$"
)


def bucket(weight: int) -> str:
    """The last characters whose keys go to the candidate at ``weight`` % (a multiple of 10, 10-90)."""
    if weight % 10 or not 10 <= weight <= 90:
        raise UnsupportedRouteError(
            f"a sticky split through Gateway API header matches takes a weight of 10, 20 ... 90 "
            f"(the last character of the sticky key picks the version), not {weight}"
        )
    letters = LETTERS[: round(6 * weight / 100)]
    return DIGITS[: weight // 10] + letters + letters.upper()


def weight_of(chars: str) -> int | None:
    """The weight ``bucket`` made ``chars`` for; None if it made no such set."""
    digits = sum(c in DIGITS for c in chars)
    try:
        return digits * 10 if bucket(digits * 10) == chars else None
    except UnsupportedRouteError:
        return None


def condition(sticky: StickyKey, weight: int) -> tuple[str, str]:
    """(header name, RE2 expression) of the requests whose key is in the candidate's bucket."""
    cls = f"[{bucket(weight)}]"
    if sticky.cookie:
        return COOKIE_HEADER, f"{_PREFIX}{re.escape(sticky.cookie)}=[^;]*{cls}{_SUFFIX}"
    assert sticky.header is not None
    return sticky.header.lower(), f"^.*{cls}$"


def parse(name: str, regex: str) -> tuple[StickyKey, int] | None:
    """(sticky key, weight) if (``name``, ``regex``) was made by ``condition``, else None."""
    if name.lower() == COOKIE_HEADER:
        m = _COOKIE_RE.match(regex)
        key = StickyKey(cookie=re.sub(r"\\(.)", r"\1", m.group("name"))) if m else None
    else:
        m = _HEADER_RE.match(regex)
        key = StickyKey(header=name.lower()) if m else None
    if m is None or key is None:
        return None
    weight = weight_of(m.group("chars"))
    return None if weight is None else (key, weight)
