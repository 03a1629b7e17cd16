"""Reward-quality metrics: how well a reward module's output tracks ground truth.

All functions take plain numpy arrays and return floats (or dicts of floats):

- :func:`voc`: Value-Order Correlation (GVL): Spearman correlation of predictions with
  the time index, in [-1, 1]; a constant prediction counts as 0.
- :func:`progress_correlation`: Pearson and Spearman correlation with true progress.
- :func:`success_detection`: precision / recall / accuracy at a threshold and the
  threshold-free AUROC of scores against binary success labels.

Correlations of a constant series are undefined; they are reported as 0 (no signal)
rather than NaN, so averages over episodes stay finite. AUROC with only one class in the
labels is undefined and reported as NaN.
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def _vector(values, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of numbers, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf; drop unlabeled frames before scoring")
    return arr


def _corr(a: np.ndarray, b: np.ndarray, kind: str) -> float:
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    fn = stats.spearmanr if kind == "spearman" else stats.pearsonr
    return float(fn(a, b)[0])


def voc(values) -> float:
    """Value-Order Correlation: Spearman rank correlation of ``values`` with 0..T-1.

    Ties get average ranks; a constant (or single-element) sequence returns 0.
    """
    v = _vector(values, "values")
    return _corr(v, np.arange(len(v), dtype=np.float64), "spearman")


def progress_correlation(predicted, true) -> dict[str, float]:
    """Pearson and Spearman correlation between predicted rewards/progress and true progress."""
    p, t = _vector(predicted, "predicted"), _vector(true, "true")
    if p.shape != t.shape:
        raise ValueError(f"predicted and true must have the same length, got {len(p)} and {len(t)}")
    return {"pearson": _corr(p, t, "pearson"), "spearman": _corr(p, t, "spearman")}


def auroc(scores, labels) -> float:
    """Area under the ROC curve: P(score of a random positive > score of a random negative),
    ties counted as one half (the Mann-Whitney U statistic). NaN if one class is absent."""
    s = _vector(scores, "scores")
    y = np.asarray(labels).astype(bool)
    if y.shape != s.shape:
        raise ValueError(f"scores and labels must have the same length, got {len(s)} and {len(y)}")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(s)  # average ranks for ties
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def success_detection(scores, labels, threshold: float = 0.5) -> dict[str, float]:
    """Detect success as ``score >= threshold``; compare with boolean ``labels``.

    Precision with no predicted positives and recall with no true positives are 0.
    """
    s = _vector(scores, "scores")
    y = np.asarray(labels).astype(bool)
    if y.shape != s.shape:
        raise ValueError(f"scores and labels must have the same length, got {len(s)} and {len(y)}")
    pred = s >= threshold
    tp = int(np.sum(pred & y))
    fp = int(np.sum(pred & ~y))
    fn = int(np.sum(~pred & y))
    return {
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "accuracy": float(np.mean(pred == y)) if len(y) else 0.0,
        "auroc": auroc(s, y),
        "threshold": float(threshold),
    }
