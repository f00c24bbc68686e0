"""The Kubernetes operator for ModelRollout: status mapping (status.py), one reconcile (reconciler.py)
and the kopf wiring with finalizer and leader election (handlers.py). Started by ``rollout controller``."""
