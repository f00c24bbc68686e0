"""The model variants the rollout demos and tests need, each made for real at training time.

- ``v1``        stable: LogisticRegression
- ``v2``        a better-or-equal candidate: LogisticRegression with weaker regularisation
- ``poisoned``  LogisticRegression trained on 35% cyclically flipped labels (data poisoning); its
                holdout accuracy is far below v1's, so ``rollout gate`` rejects it
- ``slow``      a bagged ensemble of 60 LogisticRegressions: as accurate as v2, but every request
                runs 60 models, so it is several milliseconds slower per request

Called by ``bentos/train.py``. Tags are ``iris:<variant>``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sklearn.base import ClassifierMixin
from sklearn.ensemble import BaggingClassifier
from sklearn.linear_model import LogisticRegression

MODEL_NAME = "iris"
SEED = 0


@dataclass(frozen=True)
class Variant:
    version: str
    description: str
    build: Callable[[], ClassifierMixin]
    label_flip_fraction: float = 0.0
    flip_seed: int = 3
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tag(self) -> str:
        return f"{MODEL_NAME}:{self.version}"


def _stable() -> ClassifierMixin:
    return LogisticRegression(max_iter=1000, random_state=SEED)


def _candidate() -> ClassifierMixin:
    return LogisticRegression(C=10.0, max_iter=1000, random_state=SEED)


def _slow() -> ClassifierMixin:
    return BaggingClassifier(
        LogisticRegression(C=10.0, max_iter=1000, random_state=SEED),
        n_estimators=60,
        random_state=SEED,
        n_jobs=1,
    )


VARIANTS: dict[str, Variant] = {
    v.version: v
    for v in (
        Variant("v1", "stable: LogisticRegression (C=1)", _stable),
        Variant("v2", "candidate: LogisticRegression (C=10), better or equal holdout accuracy", _candidate),
        Variant(
            "poisoned",
            "poisoned candidate: LogisticRegression on 35% cyclically flipped training labels",
            _stable,
            label_flip_fraction=0.35,
        ),
        Variant("slow", "slow candidate: bagged ensemble of 60 LogisticRegressions", _slow),
    )
}


def get_variant(name: str) -> Variant:
    """``"v2"`` or ``"iris:v2"``; an unknown name lists the known ones."""
    from rollout.errors import UsageError

    version = name.split(":", 1)[1] if name.startswith(f"{MODEL_NAME}:") else name
    if version not in VARIANTS:
        known = ", ".join(v.tag for v in VARIANTS.values())
        raise UsageError(f"no model variant {name!r}; known variants: {known}")
    return VARIANTS[version]
