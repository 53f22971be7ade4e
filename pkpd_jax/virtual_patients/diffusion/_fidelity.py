"""Fidelity metrics of generated against held-out real patients."""

from __future__ import annotations

import numpy as np

from ..schema import VARIABLES


# ------------------------------------------------------------------------------------------- metrics
def fidelity(real: np.ndarray, generated: np.ndarray, mean: np.ndarray, std: np.ndarray, *,
             seed: int = 0) -> dict:
    """Fidelity of `generated` to held-out `real` patients (both natural units), on standardised variables.

    - ``w1``: per-variable Wasserstein-1 distance (and its mean ``w1_mean``);
    - ``ks``: per-variable two-sample Kolmogorov-Smirnov statistic (and ``ks_mean``);
    - ``corr_error``: mean and max absolute difference of the off-diagonal correlation entries;
    - ``c2st_auc``: classifier two-sample test, ROC AUC of a gradient-boosted classifier (scikit-learn)
      telling real from generated on a held-out half (0.5 = indistinguishable).
    """
    from scipy.stats import ks_2samp, wasserstein_distance
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split

    a = (np.asarray(real) - mean) / std
    b = (np.asarray(generated) - mean) / std
    w1 = {v: float(wasserstein_distance(a[:, j], b[:, j])) for j, v in enumerate(VARIABLES)}
    ks = {v: float(ks_2samp(a[:, j], b[:, j]).statistic) for j, v in enumerate(VARIABLES)}
    off = ~np.eye(a.shape[1], dtype=bool)
    dc = np.abs(np.corrcoef(a, rowvar=False) - np.corrcoef(b, rowvar=False))[off]
    xs = np.concatenate([a, b])
    ys = np.concatenate([np.zeros(len(a)), np.ones(len(b))])
    x_tr, x_te, y_tr, y_te = train_test_split(xs, ys, test_size=0.5, random_state=seed, stratify=ys)
    clf = HistGradientBoostingClassifier(max_iter=200, random_state=seed).fit(x_tr, y_tr)
    auc = float(roc_auc_score(y_te, clf.predict_proba(x_te)[:, 1]))
    return {"w1_mean": float(np.mean(list(w1.values()))), "ks_mean": float(np.mean(list(ks.values()))),
            "corr_error_mean": float(dc.mean()), "corr_error_max": float(dc.max()), "c2st_auc": auc,
            "w1": w1, "ks": ks}
