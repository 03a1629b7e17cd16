"""Reward-quality metrics on hand-computed cases."""

import math

import numpy as np
import pytest

from rewards.metrics import auroc, progress_correlation, success_detection, voc


def test_voc_monotone_reversed_and_constant():
    assert voc([0.0, 0.1, 0.5, 0.9]) == pytest.approx(1.0)
    assert voc([3, 2, 1, 0]) == pytest.approx(-1.0)
    assert voc([0.4, 0.4, 0.4]) == 0.0
    assert voc([0.7]) == 0.0


def test_voc_hand_computed_with_one_swap():
    # ranks of values: [1, 3, 2, 4] vs time ranks [1, 2, 3, 4]; d^2 sum = 0+1+1+0 = 2
    # Spearman = 1 - 6 * 2 / (4 * (16 - 1)) = 1 - 12/60 = 0.8
    assert voc([0.0, 0.6, 0.3, 1.0]) == pytest.approx(0.8)


def test_voc_ties_use_average_ranks():
    # values [0, 1, 1]: ranks [1, 2.5, 2.5]; time ranks [1, 2, 3]
    # Pearson of ranks: centred x = [-1, .5, .5], y = [-1, 0, 1] -> 1.5 / sqrt(1.5 * 2) = sqrt(3)/2
    assert voc([0, 1, 1]) == pytest.approx(math.sqrt(3) / 2)


def test_voc_rejects_nan_and_matrices():
    with pytest.raises(ValueError, match="NaN"):
        voc([0.0, float("nan"), 1.0])
    with pytest.raises(ValueError, match="1-D"):
        voc(np.zeros((2, 2)))


def test_progress_correlation_pearson_vs_spearman():
    true = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    # monotone but non-linear: Spearman 1, Pearson below 1
    pred = true**4
    out = progress_correlation(pred, true)
    assert out["spearman"] == pytest.approx(1.0)
    expected = np.corrcoef(pred, true)[0, 1]
    assert out["pearson"] == pytest.approx(expected)
    assert out["pearson"] < 0.97
    assert progress_correlation(2 * true + 1, true)["pearson"] == pytest.approx(1.0)
    assert progress_correlation(np.ones(5), true) == {"pearson": 0.0, "spearman": 0.0}
    with pytest.raises(ValueError, match="same length"):
        progress_correlation([1, 2], [1, 2, 3])


def test_auroc_hand_computed():
    # positives {0.8, 0.4}, negatives {0.5, 0.1}: pairs (0.8>0.5, 0.8>0.1, 0.4<0.5, 0.4>0.1) -> 3/4
    assert auroc([0.8, 0.4, 0.5, 0.1], [1, 1, 0, 0]) == pytest.approx(0.75)
    # a tie between a positive and a negative counts one half: (1 + 0.5) / 2
    assert auroc([0.9, 0.5, 0.5], [1, 1, 0]) == pytest.approx(0.75)
    assert auroc([0.1, 0.2, 0.9], [0, 0, 1]) == pytest.approx(1.0)
    assert auroc([0.9, 0.2, 0.1], [0, 0, 1]) == pytest.approx(0.0)
    assert math.isnan(auroc([0.3, 0.4], [1, 1]))


def test_success_detection_counts():
    scores = np.array([0.9, 0.7, 0.6, 0.2, 0.1])
    labels = np.array([True, False, True, True, False])
    out = success_detection(scores, labels, threshold=0.5)
    # predicted positive: 0.9 (tp), 0.7 (fp), 0.6 (tp); 0.2 is a missed positive
    assert out["precision"] == pytest.approx(2 / 3)
    assert out["recall"] == pytest.approx(2 / 3)
    assert out["accuracy"] == pytest.approx(3 / 5)
    # positives {0.9, 0.6, 0.2} vs negatives {0.7, 0.1}: wins 2 + 1 + 1 = 4 of 6
    assert out["auroc"] == pytest.approx(4 / 6)
    strict = success_detection(scores, labels, threshold=0.95)
    assert strict["precision"] == 0.0 and strict["recall"] == 0.0
    assert strict["auroc"] == out["auroc"]  # threshold-free
