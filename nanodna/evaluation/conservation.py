"""The fast path the training loop calls every N steps: table in, ROC AUC out.

No bootstrap and no plots here (eval.py adds them). The parsed table is cached, keyed on the
file's path, size and modification time, so periodic evaluation does not re-read and re-validate
the same file every time; the jitted scorer is cached by JAX across calls, so only the first
evaluation of a run compiles.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from nanodna.evaluation import metrics, scoring
from nanodna.evaluation.tables import EvalTable, read_table
from nanodna.models.config import ModelConfig


def load_table(
    path: str | os.PathLike, task: str = "conservation", max_rows: int | None = None
) -> EvalTable:
    """`read_table`, cached until the file changes."""
    path = os.path.abspath(os.fspath(path))
    try:
        stat = os.stat(path)
    except OSError:
        return read_table(path, task, max_rows)  # let read_table word the error
    return _load_cached(path, stat.st_size, stat.st_mtime_ns, task, max_rows)


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, size: int, mtime_ns: int, task: str, max_rows: int | None) -> EvalTable:
    del size, mtime_ns  # part of the cache key only
    return read_table(path, task, max_rows)


def evaluate_table(
    model,
    model_cfg: ModelConfig,
    table_path: str | os.PathLike,
    batch_size: int = 64,
    max_rows: int | None = None,
    task: str = "conservation",
) -> dict:
    """Score a table and rank the scores against its labels.

    Returns roc_auc, auprc, n, n_pos, windows_per_s (and mean_score). A table without labels
    (a variant table may have none) gives n and mean_score only. Raises
    metrics.MetricsError before scoring when the labels hold one class only.
    """
    table = load_table(table_path, task, max_rows)
    if table.label_R is not None:  # one label class has no AUC: fail before scoring
        metrics.check_labels(table.label_R)
    scores = scoring.score_table(model, model_cfg, table, batch_size=batch_size)
    out = {
        "n": len(table),
        "mean_score": float(np.mean(scores.score_R)),
        "windows_per_s": scores.windows_per_s,
    }
    if table.label_R is not None:
        out.update(metrics.summarize(table.label_R, scores.score_R))
    return out
