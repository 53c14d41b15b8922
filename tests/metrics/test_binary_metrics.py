import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, average_precision_score

from qmdd.metrics import accuracy_at, average_precision, binary_metrics, mean_metrics


@pytest.mark.parametrize("seed", range(25))
def test_average_precision_equals_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 300))
    labels = rng.integers(0, 2, n)
    labels[0] = 1
    # Rounded scores create ties, the case where AP definitions disagree.
    scores = np.round(rng.random(n), int(rng.integers(1, 4)))
    assert average_precision(labels, scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)


def test_accuracies_equal_sklearn_at_half():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 500)
    scores = rng.random(500)
    scores[:10] = 0.5  # exactly 0.5 is *real* under the "> 0.5" rule
    m = binary_metrics(labels, scores)
    predicted = (scores > 0.5).astype(int)
    assert m.acc == pytest.approx(accuracy_score(labels, predicted))
    assert m.real_acc == pytest.approx(accuracy_score(labels[labels == 0], predicted[labels == 0]))
    assert m.fake_acc == pytest.approx(accuracy_score(labels[labels == 1], predicted[labels == 1]))
    assert (m.n_real, m.n_fake) == (int((labels == 0).sum()), int((labels == 1).sum()))


def test_perfect_and_inverted_detectors():
    labels = np.array([0, 0, 1, 1])
    assert average_precision(labels, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert average_precision(labels, [0.9, 0.8, 0.2, 0.1]) == pytest.approx(average_precision_score(labels, [0.9, 0.8, 0.2, 0.1]))
    assert accuracy_at(labels, [0.9, 0.8, 0.2, 0.1]) == 0.0


def test_undefined_cases_and_bad_input():
    assert math.isnan(average_precision([0, 0], [0.1, 0.2]))
    assert math.isnan(binary_metrics([1, 1], [0.7, 0.2]).real_acc)
    with pytest.raises(ValueError, match="differ in length"):
        binary_metrics([0, 1], [0.5])
    with pytest.raises(ValueError, match="0 \\(real\\) or 1 \\(fake\\)"):
        binary_metrics([0, 2], [0.5, 0.5])


def test_mean_is_unweighted_over_sets():
    small = binary_metrics([0, 1], [0.1, 0.9])  # perfect, 2 images
    large = binary_metrics([0] * 50 + [1] * 50, [0.9] * 50 + [0.1] * 50)  # all wrong, 100 images
    mean = mean_metrics([small, large])
    assert mean.acc == pytest.approx(0.5)
    assert mean.ap == pytest.approx((small.ap + large.ap) / 2)
    assert mean.n_real == 51 and mean.n_fake == 51
