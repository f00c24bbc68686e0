"""Names of the Prometheus metrics the model service exports: one source for the service
(bentos/service.py), the built-in PromQL templates, the alert rules and the dashboards.

Every series carries ``model`` (the BentoML model name, e.g. ``iris``) and ``version`` (the model
version, e.g. ``v2``); rollouts tell stable from candidate by ``version``.
"""

from __future__ import annotations

LABEL_MODEL = "model"
LABEL_VERSION = "version"

# counter {model, version, endpoint, code}: code is the HTTP status as a string ("200", "422")
REQUESTS_TOTAL = "model_requests_total"
# histogram {model, version, endpoint}: server-side handling time
REQUEST_DURATION_SECONDS = "model_request_duration_seconds"
# counter {model, version, class}: one per predicted row
PREDICTIONS_TOTAL = "model_predictions_total"
# histogram {model, version}: max class probability of each predicted row, 0..1
PREDICTION_CONFIDENCE = "model_prediction_confidence_ratio"
# histogram {model, version, feature}: each input feature as a z-score against the training data
FEATURE_ZSCORE = "model_feature_zscore"
# counters {model, version}: feedback labels received for earlier request ids, and how many matched
FEEDBACK_TOTAL = "model_feedback_total"
FEEDBACK_CORRECT_TOTAL = "model_feedback_correct_total"
# regressors (a model registered with task "regression"): FEEDBACK_TOTAL counts labelled rows, and
# these counters {model, version} sum |prediction - label| and (prediction - label)^2 over them, so
# MAE = abs_sum / total and RMSE = sqrt(squared_sum / total) per version, and a judge gets the mean
# and variance of the absolute error from the two sums
FEEDBACK_ABSOLUTE_ERROR_SUM = "model_feedback_absolute_error_sum"
FEEDBACK_SQUARED_ERROR_SUM = "model_feedback_squared_error_sum"
# histogram {model, version}: each predicted value of a regressor; its buckets are the model's
# metadata's prediction_buckets (quantiles of the holdout target, so two versions registered on
# one holdout share them)
PREDICTION_VALUE = "model_prediction_value"
# counter {model, version}: shadow comparisons (same request id answered by stable and candidate)
# and how many agreed; counted in the shared join store (bentos/redis_join.py), exported by
# bentos/join_exporter.py, not by the model servers
SHADOW_COMPARISONS_TOTAL = "model_shadow_comparisons_total"
SHADOW_AGREEMENTS_TOTAL = "model_shadow_agreements_total"
# gauge {model, version, framework_version, dataset_sha256}: 1 while the model is loaded
MODEL_INFO = "model_info"

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
CONFIDENCE_BUCKETS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
ZSCORE_BUCKETS = (-3.0, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0)

# --- rollout progress (exported by the rollout controller / local runner; read by alerts and
# dashboards in rollout/k8s/, built by rollout/exporter.py). Labels: ``rollout`` (the ModelRollout
# name), ``service`` and ``namespace`` (the ModelRollout's; empty in local mode).
# gauge {rollout, service, phase}: 1 for the rollout's current phase (Progressing, Paused, Promoted,
# RolledBack, ...), 0 for the others
ROLLOUT_PHASE = "rollout_phase"
# gauge {rollout, service}: percent of user traffic the candidate receives
ROLLOUT_CANDIDATE_WEIGHT = "rollout_candidate_weight_percent"
# gauge {rollout, service}: unix time of the rollout's last step or phase change
ROLLOUT_LAST_TRANSITION = "rollout_last_transition_timestamp_seconds"
# counter {rollout, service, reason}: automatic or manual rollbacks; exported as 0 from the start of
# each rollout so that increase() sees the first rollback
ROLLOUT_ROLLBACKS_TOTAL = "rollout_rollbacks_total"
# gauge {rollout, service, model, version, role}: 1 per model version in a rollout, role "stable" or
# "candidate" (joins the model_* series to their rollout)
ROLLOUT_VERSION_INFO = "rollout_version_info"
