"""Simulated rollouts with known truth (traffic), judged as the engine judges them (drive), and
presented (report). The entry point is ``rollout.simulate.simulate``."""
