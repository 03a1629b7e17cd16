"""Statistics shared by the benchmarks: rliable's interquartile mean with a bootstrap CI."""

from __future__ import annotations

import numpy as np


def iqm_ci(scores: np.ndarray, reps: int = 2000) -> tuple[float, float, float]:
    """(IQM, CI low, CI high) of one score per run (seed), 95 % stratified bootstrap (rliable)."""
    from rliable import library as rly
    from rliable import metrics

    point, ci = rly.get_interval_estimates({"x": np.asarray(scores, float)[:, None]},
                                           lambda s: np.array([metrics.aggregate_iqm(s)]), reps=reps)
    return float(point["x"][0]), float(ci["x"][0, 0]), float(ci["x"][1, 0])
