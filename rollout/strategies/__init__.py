"""Strategy registry: a strategy's name (as in ``Strategy.name`` of the spec) -> its planner.

One module per strategy (canary.py, bluegreen.py, shadow.py, abtest.py), each a pure planner
implementing ``rollout.strategies.base.StrategyPlanner``. An unknown name is an error, never a
fallback. Who calls it: ``rollout.engine``; status displays use ``step_names``.
"""

from __future__ import annotations

import importlib

from rollout.errors import UnknownProviderError
from rollout.strategies.base import StrategyPlanner

# name -> "module:Class"; the names are those of rollout.spec.Strategy's fields
STRATEGIES: dict[str, str] = {
    "canary": "rollout.strategies.canary:CanaryPlanner",
    "blue_green": "rollout.strategies.bluegreen:BlueGreenPlanner",
    "shadow": "rollout.strategies.shadow:ShadowPlanner",
    "ab_test": "rollout.strategies.abtest:ABTestPlanner",
}

_planners: dict[str, StrategyPlanner] = {}


def get_planner(name: str) -> StrategyPlanner:
    """The planner registered under ``name``. Raises UnknownProviderError for any other name."""
    planner = _planners.get(name)
    if planner is not None:
        return planner
    target = STRATEGIES.get(name)
    if target is None:
        known = ", ".join(sorted(STRATEGIES))
        raise UnknownProviderError(f"unknown rollout strategy {name!r}: use one of {known}")
    module, cls = target.split(":")
    planner = _planners[name] = getattr(importlib.import_module(module), cls)()
    return planner


__all__ = ["STRATEGIES", "StrategyPlanner", "get_planner"]
