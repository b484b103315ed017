"""A full evaluation with its paper trail: what eval.py runs.

    results.json   roc_auc, auprc, n (+ bootstrap intervals), checkpoint step, arch, task, speed,
                   rule and strand_mode (scoring.strand_mode)
    scores.tsv     one line per row: pos, ref (alt), label, score, the four allele log-probs
    roc.png        ROC curve (tables with labels)
    hist.png       score distribution per label (tables with labels)

Glossary: R rows of the table, 4 the four alleles a/c/g/t.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os

import numpy as np

from nanodna import atomic, tokenizer
from nanodna.checkpoint import load_model
from nanodna.evaluation import metrics, plots, scoring
from nanodna.evaluation.tables import EvalTable
from nanodna.models.config import ModelConfig


def evaluate_checkpoint(
    checkpoint: str,
    table: EvalTable,
    out: str = "results.json",
    batch_size: int | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    progress: bool = True,
    inference_path: str = "fast",
    matmul_dtype: str | None = None,
) -> dict:
    """Load a workdir's latest checkpoint (or one step folder) and evaluate it on `table`.

    matmul_dtype: see nanodna.checkpoint.load_model. Raises nanodna.checkpoint.CheckpointError
    for a path that holds no checkpoint."""
    model, config, step = load_model(checkpoint, matmul_dtype)
    info = {"checkpoint": os.path.abspath(checkpoint), "step": step}
    return evaluate_model(
        model, config.model, table, out, batch_size, bootstrap, seed, progress, info,
        inference_path,
    )


def evaluate_model(
    model,
    model_cfg: ModelConfig,
    table: EvalTable,
    out: str = "results.json",
    batch_size: int | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    progress: bool = False,
    info: dict | None = None,
    inference_path: str = "fast",
) -> dict:
    """Score `table`, compute metrics, and write results.json, scores.tsv and the plots.

    A labelled table whose labels cannot give a ROC AUC (one class only) raises
    metrics.MetricsError before any row is scored; nothing is written unless the metrics are
    computed (the output folder is created only then). batch_size None and inference_path:
    see scoring.score_table."""
    if table.label_R is not None:
        metrics.check_labels(table.label_R)
    scores = scoring.score_table(model, model_cfg, table, batch_size=batch_size, progress=progress,
                                 inference_path=inference_path)
    results = dict(info or {})
    results.update(
        task=table.task,
        table=os.path.abspath(table.path),
        arch=model_cfg.arch,
        model=dataclasses.asdict(model_cfg),
        rule=scores.rule,
        strand_average=scores.strand_average,
        strand_mode=scores.strand_mode,
        n=len(table),
        mean_score=float(np.mean(scores.score_R)),
        batch_size=scores.batch_size,
        inference_path=scores.inference_path,
        seconds=round(scores.seconds, 3),
        windows_per_s=float(f"{scores.windows_per_s:.4g}"),  # 4 digits: l20 on CPU is < 1/s
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    if table.label_R is not None:  # may raise (NaN scores): before anything is written
        results.update(
            metrics.summarize(table.label_R, scores.score_R, bootstrap=bootstrap, seed=seed)
        )
    out_dir = os.path.dirname(os.path.abspath(out))
    os.makedirs(out_dir, exist_ok=True)
    if table.label_R is not None:
        score_name = "log p(ref)" if table.task == "conservation" else "log p(alt) / p(ref)"
        plots.plot_roc(
            table.label_R,
            scores.score_R,
            os.path.join(out_dir, "roc.png"),
            title=f"{table.task}: {os.path.basename(table.path)}",
        )
        plots.plot_score_histogram(
            table.label_R, scores.score_R, os.path.join(out_dir, "hist.png"), xlabel=score_name
        )
    write_scores_tsv(os.path.join(out_dir, "scores.tsv"), table, scores)
    atomic.write_text(out, json.dumps(results, indent=2))
    return results


def summary_line(results: dict) -> str:
    """The one-line summary eval.py prints: ROC AUC (with its 95% interval when bootstrapped),
    AUPRC, n, step, speed, strand mode, and the matmul dtype when the model sets one. No
    interval is printed when there is none (--bootstrap 0)."""
    parts = []
    if "roc_auc" in results:
        auc = f"roc_auc {results['roc_auc']:.4f}"
        if "roc_auc_ci" in results:
            lo, hi = results["roc_auc_ci"]
            auc += f" [{lo:.4f}, {hi:.4f}]"
        parts += [auc, f"auprc {results['auprc']:.4f}"]
    parts += [f"n {results['n']}", f"step {results.get('step')}",
              f"{results['windows_per_s']:.3g} windows/s", f"strands {results['strand_mode']}"]
    matmul_dtype = results.get("model", {}).get("matmul_dtype")
    if matmul_dtype:  # scored with matmuls other than the compute dtype's: say so
        parts.append(f"matmuls {matmul_dtype}")
    return "  ".join(parts)


def write_scores_tsv(path: str, table: EvalTable, scores: scoring.Scores) -> None:
    """One line per table row, in table order (row = 0-based row of the table)."""
    base = np.array(list(tokenizer.BASES))
    columns = {
        "row": np.arange(len(table)),
        "pos": table.pos_R,
        "ref": base[table.ref_R - tokenizer.A],
    }
    if table.alt_R is not None:
        columns["alt"] = base[table.alt_R - tokenizer.A]
    if table.label_R is not None:
        columns["label"] = table.label_R
    columns["score"] = [f"{s:.6g}" for s in scores.score_R]
    for k, b in enumerate(tokenizer.BASES.lower()):
        columns[f"logp_{b}"] = [f"{s:.6g}" for s in scores.log_probs_R4[:, k]]
    with open(path, "w") as f:
        f.write("\t".join(columns) + "\n")
        for values in zip(*columns.values()):
            f.write("\t".join(str(v) for v in values) + "\n")
