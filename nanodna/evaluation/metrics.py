"""Ranking metrics for zero-shot scores: ROC AUC, AUPRC, bootstrap confidence intervals.

ROC AUC is the headline number (PlantCAD2's leaderboard); AUPRC is reported beside it because
conserved sites are often the minority class. scikit-learn computes both: its implementations
handle ties the standard way, which matters when many windows get the same score.

Glossary: R rows (sites).
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float, Int
from sklearn.metrics import average_precision_score, roc_auc_score

from nanodna.errors import UserError

METRICS = {"roc_auc": roc_auc_score, "auprc": average_precision_score}


class MetricsError(UserError):
    """Labels or scores that no ranking metric can be computed from; one-line message."""


def check_labels(label_R: Int[np.ndarray, " R"]) -> np.ndarray:
    """Labels a ranking metric can use: 1-D, 0/1, both classes present. Cheap: call it before
    scoring, so a table that cannot give an AUC fails before any work. Raises MetricsError."""
    label_R = np.asarray(label_R)
    if label_R.ndim != 1:
        raise MetricsError(f"labels must be 1-D, got shape {label_R.shape}")
    if len(label_R) == 0:
        raise MetricsError("no rows to score")
    if not np.isin(label_R, (0, 1)).all():
        raise MetricsError("labels must be 0 or 1")
    if label_R.min() == label_R.max():
        raise MetricsError(
            f"ROC AUC needs both classes, but all {len(label_R)} labels are {int(label_R[0])}"
        )
    return label_R.astype(np.int64)


def _check(label_R, score_R) -> tuple[np.ndarray, np.ndarray]:
    label_R, score_R = np.asarray(label_R), np.asarray(score_R, dtype=np.float64)
    if label_R.shape != score_R.shape or label_R.ndim != 1:
        raise MetricsError(
            f"labels {label_R.shape} and scores {score_R.shape} must be 1-D and the same length"
        )
    label_R = check_labels(label_R)
    if not np.isfinite(score_R).all():
        raise MetricsError(
            f"{int((~np.isfinite(score_R)).sum())} of {len(score_R)} scores are NaN or infinite"
        )
    return label_R, score_R


def roc_auc(label_R: Int[np.ndarray, " R"], score_R: Float[np.ndarray, " R"]) -> float:
    """Area under the ROC curve; higher scores should mean label 1."""
    return float(roc_auc_score(*_check(label_R, score_R)))


def auprc(label_R: Int[np.ndarray, " R"], score_R: Float[np.ndarray, " R"]) -> float:
    """Area under the precision-recall curve (average precision), label 1 positive."""
    return float(average_precision_score(*_check(label_R, score_R)))


def bootstrap_ci(
    label_R: Int[np.ndarray, " R"],
    score_R: Float[np.ndarray, " R"],
    metric: str = "roc_auc",
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval: resample rows with replacement, recompute the metric.

    Resamples that happen to hold a single class have no AUC and are drawn again, so the
    interval always rests on n_resamples values.
    """
    label_R, score_R = _check(label_R, score_R)
    if n_resamples < 1:
        raise MetricsError(f"n_resamples must be >= 1, got {n_resamples}")
    fn = METRICS[metric]
    rng = np.random.default_rng(seed)
    R = len(label_R)
    resampled = []
    while len(resampled) < n_resamples:
        idx_R = rng.integers(0, R, size=R)
        y_R = label_R[idx_R]
        if 0 < y_R.sum() < R:
            resampled.append(fn(y_R, score_R[idx_R]))
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(resampled, [tail, 100 - tail])
    return float(lo), float(hi)


def summarize(
    label_R: Int[np.ndarray, " R"],
    score_R: Float[np.ndarray, " R"],
    bootstrap: int = 0,
    seed: int = 0,
) -> dict:
    """roc_auc, auprc, n, n_pos (and <metric>_ci = [lo, hi] when bootstrap > 0)."""
    label_R, score_R = _check(label_R, score_R)
    out = {name: float(fn(label_R, score_R)) for name, fn in METRICS.items()}
    out.update(n=int(len(label_R)), n_pos=int(label_R.sum()))
    if bootstrap > 0:
        for name in METRICS:
            out[f"{name}_ci"] = list(bootstrap_ci(label_R, score_R, name, bootstrap, seed))
        out["bootstrap"] = int(bootstrap)
    return out
