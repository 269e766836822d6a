"""Metrics: scalar functions of logits used by patching, attribution and discovery."""

from ._metrics import (
    Accuracy,
    CrossEntropy,
    KLDivergence,
    LogitDiff,
    MetricError,
    PositionMetric,
    ProbDiff,
    ThresholdProbDiff,
    as_scalar,
    metric_name,
    metric_value,
)

__all__ = [
    "Accuracy",
    "CrossEntropy",
    "KLDivergence",
    "LogitDiff",
    "MetricError",
    "PositionMetric",
    "ProbDiff",
    "ThresholdProbDiff",
    "as_scalar",
    "metric_name",
    "metric_value",
]
