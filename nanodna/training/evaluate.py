"""Evaluation at a training step: validation loss and the conservation table's ROC AUC."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterator

import equinox as eqx

from nanodna.config import Config
from nanodna.data.batch import Batch
from nanodna.training import mesh as mesh_lib

BatchIterator = Iterator[Batch]  # with get_state() -> dict and set_state(dict), for resuming
EvaluateTable = Callable[..., dict]  # (model, model_cfg, table, batch_size=, max_rows=) -> metrics


def evaluate(cfg: Config, params, static, eval_step, mesh,
             eval_iter: Callable[[Config], BatchIterator],
             evaluate_table: EvaluateTable | None) -> dict:
    """Validation loss over eval.val_batches held-out batches, and conservation AUC.

    Returns {"eval/val_loss", "eval/roc_auc", "eval/auprc", "eval/n"} (each where measured);
    val_loss is left out, with a warning, when the validation batches carry no loss weight.
    """
    out = {}
    if cfg.eval.val_batches > 0:
        total = weight = 0.0
        for batch in itertools.islice(eval_iter(cfg), cfg.eval.val_batches):
            s, w = eval_step(params, mesh_lib.put_batch(batch, mesh_lib.batch_sharding(mesh)))
            total, weight = total + float(s), weight + float(w)
        if weight > 0:
            out["eval/val_loss"] = total / weight
        else:  # nothing scored: missing, not a perfect 0.0
            warnings.warn(
                f"eval/val_loss not reported: its {cfg.eval.val_batches} validation batches carry "
                "no loss weight (every target soft-masked with data.repeat_weight_eval=0, or "
                "padding)", stacklevel=2)
    if evaluate_table is not None and cfg.eval.table:
        result = evaluate_table(eqx.combine(params, static), cfg.model, cfg.eval.table,
                                batch_size=cfg.eval.batch_size, max_rows=cfg.eval.max_rows)
        out.update({f"eval/{k}": v for k, v in result.items() if k in ("roc_auc", "auprc", "n")})
    return out
