"""bento-rollout: progressive rollout of BentoML-served models (canary, blue/green, shadow, A/B)."""

from rollout.errors import RolloutError, SpecError
from rollout.spec import ModelRollout, RolloutSpec, load_rollout

__all__ = ["ModelRollout", "RolloutError", "RolloutSpec", "SpecError", "load_rollout"]
__version__ = "0.1.0"
