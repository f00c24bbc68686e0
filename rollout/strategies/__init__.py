"""Strategy registry: a strategy's name (as in ``Strategy.name`` of the spec) -> its planner.

One module per strategy (canary.py, bluegreen.py, shadow.py, abtest.py), each a pure planner
implementing ``rollout.strategies.base.StrategyPlanner``. An unknown name is an error, never a
fallback. Who calls it: ``rollout.engine``; status displays use ``step_names``.
"""

from __future__ import annotations

from collections.abc import Callable

from rollout.errors import UnknownProviderError
from rollout.strategies.base import StrategyPlanner

# Each planner's module is imported on first use, by a plain import statement that the import
# linter sees (pyproject.toml's contracts), not a string.


def _canary() -> StrategyPlanner:
    from rollout.strategies.canary import CanaryPlanner

    return CanaryPlanner()


def _blue_green() -> StrategyPlanner:
    from rollout.strategies.bluegreen import BlueGreenPlanner

    return BlueGreenPlanner()


def _shadow() -> StrategyPlanner:
    from rollout.strategies.shadow import ShadowPlanner

    return ShadowPlanner()


def _ab_test() -> StrategyPlanner:
    from rollout.strategies.abtest import ABTestPlanner

    return ABTestPlanner()


# name -> its planner's factory; the names are those of rollout.spec.Strategy's fields
STRATEGIES: dict[str, Callable[[], StrategyPlanner]] = {
    "canary": _canary,
    "blue_green": _blue_green,
    "shadow": _shadow,
    "ab_test": _ab_test,
}

_planners: dict[str, StrategyPlanner] = {}


def get_planner(name: str) -> StrategyPlanner:
    """The planner registered under ``name``. Raises UnknownProviderError for any other name."""
    planner = _planners.get(name)
    if planner is not None:
        return planner
    make = STRATEGIES.get(name)
    if make is None:
        known = ", ".join(sorted(STRATEGIES))
        raise UnknownProviderError(f"unknown rollout strategy {name!r}: use one of {known}")
    planner = _planners[name] = make()
    return planner


__all__ = ["STRATEGIES", "StrategyPlanner", "get_planner"]
