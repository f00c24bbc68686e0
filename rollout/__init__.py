"""bento-rollout: progressive rollout of BentoML-served models (canary, blue/green, shadow, A/B).

The public names are loaded on first use (PEP 562 ``__getattr__``): ``rollout.spec`` pulls in
pydantic, and every ``rollout.*`` import runs this file first, so ``rollout --help`` and other
light paths (rollout.cli.main, rollout.errors) stay fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rollout.errors import RolloutError, SpecError
    from rollout.spec import ModelRollout, RolloutSpec, load_rollout

__all__ = ["ModelRollout", "RolloutError", "RolloutSpec", "SpecError", "load_rollout"]
__version__ = "0.1.0"

_HOME = {
    "ModelRollout": "rollout.spec",
    "RolloutSpec": "rollout.spec",
    "load_rollout": "rollout.spec",
    "RolloutError": "rollout.errors",
    "SpecError": "rollout.errors",
}


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'rollout' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
