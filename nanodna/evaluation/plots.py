"""Plots of an evaluation: the ROC curve, and the score distribution of each class.

Figures are drawn on matplotlib's Agg canvas directly, never through pyplot: no display is
needed and no global backend state is touched (safe inside a training process).

Glossary: R rows (sites).
"""

from __future__ import annotations

import os

import numpy as np
from jaxtyping import Float, Int
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from nanodna.evaluation import metrics


def _save(fig: Figure, path: str | os.PathLike) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(os.fspath(path), dpi=120, bbox_inches="tight")


def plot_roc(
    label_R: Int[np.ndarray, " R"],
    score_R: Float[np.ndarray, " R"],
    path: str | os.PathLike,
    title: str = "ROC",
) -> None:
    """ROC curve with the AUC in the legend and the chance diagonal, written as a PNG."""
    auc = metrics.roc_auc(label_R, score_R)
    fpr, tpr, _ = roc_curve(label_R, score_R)
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.add_subplot()
    ax.plot(fpr, tpr, lw=1.5, label=f"AUC = {auc:.3f} (n = {len(label_R)})")
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey", label="chance")
    ax.set(
        xlabel="false positive rate",
        ylabel="true positive rate",
        title=title,
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.set_aspect("equal")
    ax.legend(loc="lower right")
    _save(fig, path)


def plot_score_histogram(
    label_R: Int[np.ndarray, " R"],
    score_R: Float[np.ndarray, " R"],
    path: str | os.PathLike,
    xlabel: str = "score",
    bins: int = 50,
) -> None:
    """Overlaid, density-normalised score histograms of label 0 and label 1."""
    label_R, score_R = np.asarray(label_R), np.asarray(score_R)
    edges = np.histogram_bin_edges(score_R, bins=bins)
    fig = Figure(figsize=(5.5, 3.5))
    ax = fig.add_subplot()
    for value, name in ((0, "label 0"), (1, "label 1")):
        sel = score_R[label_R == value]
        if len(sel):
            ax.hist(sel, bins=edges, density=True, alpha=0.5, label=f"{name} (n = {len(sel)})")
    ax.set(xlabel=xlabel, ylabel="density")
    ax.legend()
    _save(fig, path)
