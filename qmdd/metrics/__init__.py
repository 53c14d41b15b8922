"""Detection metrics as the field reports them (CNNDetection, UniversalFakeDetect).

Scores are ``sigmoid(logit)``, the probability of *fake* (label 1). Accuracies threshold
the score at ``> 0.5``; AP is the step-wise average precision that
``sklearn.metrics.average_precision_score`` computes (tests check they agree).
"""

from qmdd.metrics._binary import DEFAULT_THRESHOLD, BinaryMetrics, accuracy_at, average_precision, best_threshold_accuracy, binary_metrics, mean_metrics

__all__ = ["BinaryMetrics", "average_precision", "accuracy_at", "best_threshold_accuracy", "binary_metrics", "mean_metrics", "DEFAULT_THRESHOLD"]
