"""Run a sweep: train every (architecture, size) on WSD-S, score every hot and cold checkpoint,
append one row per checkpoint to OUT/results.tsv.

    OUT/
      sweep.json                  the sweep config as run (the plots read their settings here)
      results.tsv                 one row per scored checkpoint (COLUMNS)
      runs/<name>/                train.py's workdir: config.json, metrics.jsonl, checkpoints/
      runs/<name>/sweep_done.json written once train.py has finished the run
      runs/<name>/eval/<step>/    eval.py's results.json, scores.tsv, roc.png

Training and evaluation are reached through their command lines only (train.py, eval.py), so the
sweep does not depend on the loop's or the evaluator's internals. A killed sweep is restarted by
running the same command: finished runs (sweep_done.json) and scored checkpoints (rows already
in results.tsv) are skipped, an unfinished run resumes from its latest checkpoint (train.py does
that for a workdir), and an evaluation whose results.json exists is not repeated.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys

import equinox as eqx
import jax
from tqdm.auto import tqdm

from nanodna.config import from_dict
from nanodna.errors import UserError
from nanodna.models import build_model, count_params, flops_per_token
from nanodna.sweep.config import Run, SweepConfig

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# One row per scored checkpoint. tokens = step x batch x seq_len; flops = honest training FLOPs
# (nanodna.models.flops_per_token x tokens); flops_6nd = 6 x non-embedding params x tokens;
# wall_s = training seconds to this step, summed from metrics.jsonl's tokens_per_s (it includes
# compilation and the validation passes, not the checkpoint scoring).
COLUMNS = ("run", "arch", "params", "nonembed_params", "step", "label", "tokens", "flops",
           "flops_6nd", "wall_s", "val_loss", "roc_auc", "roc_auc_lo", "roc_auc_hi", "auprc",
           "auprc_lo", "auprc_hi", "n")


class SweepError(UserError):
    """A run or evaluation failed, or OUT holds a different sweep."""


# ---------------------------------------------------------------------------------------------
# Compute accounting (the one place that asks the models how much work a token costs)


def training_flops_per_token(model_cfg, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward) of `model_cfg` at `seq_len`.

    Delegates to nanodna.models.flops_per_token (see nanodna/models/flops.py for what it counts).
    """
    return float(flops_per_token(model_cfg, seq_len))


def param_counts(model_cfg) -> tuple[int, int]:
    """(all parameters, non-embedding parameters): the embedding table and an untied LM head
    (top-level `embed` / `head` arrays) are the embedding parameters."""
    model = eqx.filter_eval_shape(build_model, model_cfg, jax.random.key(0))
    total = count_params(model)
    embedding = sum(count_params(getattr(model, name)) for name in ("embed", "head")
                    if hasattr(model, name))
    return total, total - embedding


# ---------------------------------------------------------------------------------------------
# One run


def sweep_overrides(sweep: SweepConfig, run: Run) -> list[str]:
    """train.py overrides for `run`: the sweep-wide ones, the run's, then the schedule the sweep
    imposes (WSD-S, fixed length, no time budget, evaluation and logging on every hot and cold
    step, a checkpoint at every cold step; hot/cold checkpoints are always kept)."""
    every = sweep.eval_every
    return [
        *sweep.extra_overrides,
        *run.overrides,
        f"optim.cycle_steps={sweep.cycle_steps}",
        f"optim.decay_fraction={sweep.decay_fraction}",
        "optim.schedule=wsds",
        f"train.steps={sweep.steps}",
        "train.max_minutes=None",
        f"train.checkpoint_every={sweep.cycle_steps}",
        "train.keep_checkpoints=1",
        f"train.log_every={every}",
        f"eval.every={every}",
        "eval.at_end=True",
        "eval.score_table=False",  # the sweep scores every hot/cold checkpoint with eval.py
    ]


def subprocess_env(out: str) -> dict:
    """The children's environment: this checkout first on PYTHONPATH, and a persistent JAX
    compilation cache under OUT unless one is set (reruns and same-shape runs compile once)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
    env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.abspath(out), ".jax_cache"))
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    return env


def train_run(sweep: SweepConfig, run: Run, workdir: str, env: dict) -> bool:
    """Train `run` in `workdir` with train.py unless already done; True if it trained now."""
    marker = os.path.join(workdir, "sweep_done.json")
    overrides = sweep_overrides(sweep, run)
    if os.path.exists(marker):
        with open(marker) as f:
            done = json.load(f)
        if done.get("config") != run.config or done.get("overrides") != overrides:
            raise SweepError(f"{workdir} was trained with other settings than this sweep config "
                             "gives: use a fresh --out folder")
        return False
    config = run.config if os.path.isabs(run.config) else os.path.join(REPO_ROOT, run.config)
    cmd = [sys.executable, os.path.join(REPO_ROOT, "train.py"), "--config", config,
           "--workdir", os.path.abspath(workdir), *overrides]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO_ROOT)
    try:
        code = proc.wait()
    except KeyboardInterrupt:  # the child got the same Ctrl-C: let it save its checkpoint
        proc.wait()
        raise
    if code != 0:
        raise SweepError(f"run {run.name}: train.py exited with code {code} "
                         f"(command: {' '.join(cmd)})")
    labels = read_labels(workdir)
    expected = {s: lab for pair in sweep.hot_cold_steps() for s, lab in zip(pair, ("hot", "cold"))}
    if labels != expected:
        raise SweepError(f"run {run.name}: train.py labelled checkpoints {labels}, the sweep "
                         f"expected {expected}")
    with open(marker, "w") as f:
        json.dump({"config": run.config, "overrides": overrides, "labels": labels}, f, indent=1)
    return True


def read_labels(workdir: str) -> dict[int, str]:
    """{step: "hot" | "cold"} from train.py's checkpoints/labels.json."""
    path = os.path.join(workdir, "checkpoints", "labels.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return {int(k): v for k, v in json.load(f).items()}


def read_metrics(workdir: str) -> list[dict]:
    """train.py's metrics.jsonl as a list of dicts."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def checkpoint_facts(run: Run, workdir: str) -> list[dict]:
    """Everything results.tsv needs about each labelled checkpoint except its AUC."""
    with open(os.path.join(workdir, "config.json")) as f:
        cfg = from_dict(json.load(f))
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    flops_tok = training_flops_per_token(cfg.model, cfg.data.seq_len)
    params, nonembed = param_counts(cfg.model)
    rows = read_metrics(workdir)
    val = {r["step"]: r["eval/val_loss"] for r in rows if "eval/val_loss" in r}
    # Training seconds: each logged window's tokens over its measured tokens/s.
    wall, prev, seconds_at = 0.0, 0, {}
    for r in sorted((r for r in rows if "tokens_per_s" in r), key=lambda r: r["step"]):
        wall += (r["step"] - prev) * tokens_per_step / max(r["tokens_per_s"], 1e-9)
        prev, seconds_at[r["step"]] = r["step"], wall
    out = []
    for step, label in sorted(read_labels(workdir).items()):
        if step not in val:
            raise SweepError(f"run {run.name}: no eval/val_loss at step {step} in metrics.jsonl")
        tokens = step * tokens_per_step
        logged = [s for s in seconds_at if s <= step]
        out.append({
            "run": run.name, "arch": run.arch, "params": params, "nonembed_params": nonembed,
            "step": step, "label": label, "tokens": tokens, "flops": flops_tok * tokens,
            "flops_6nd": 6.0 * nonembed * tokens,
            "wall_s": seconds_at[max(logged)] if logged else float("nan"),
            "val_loss": val[step],
        })
    return out


# ---------------------------------------------------------------------------------------------
# Scoring a checkpoint with eval.py


_eval_module = None


def score_checkpoint(sweep: SweepConfig, step_dir: str, out_json: str, env: dict) -> dict:
    """eval.py's results.json for one checkpoint folder (reused if already written)."""
    if os.path.exists(out_json):  # scored before the sweep was stopped
        try:
            with open(out_json) as f:
                return json.load(f)
        except json.JSONDecodeError:  # killed while writing: score again
            pass
    # Paths as train.py sees them: relative ones are taken from the repository root.
    table = sweep.table if os.path.isabs(sweep.table) else os.path.join(REPO_ROOT, sweep.table)
    step_dir, out_json = os.path.abspath(step_dir), os.path.abspath(out_json)
    argv = ["--checkpoint", step_dir, "--data", table, "--out", out_json,
            "--bootstrap", str(sweep.bootstrap), "--batch-size", str(sweep.eval_batch_size)]
    if sweep.max_rows is not None:
        argv += ["--max-rows", str(sweep.max_rows)]
    if sweep.evaluator == "subprocess":
        code = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "eval.py"), *argv],
                              env=env, cwd=REPO_ROOT, check=False).returncode
    else:
        code = _load_eval_cli().main(argv)
    if code != 0:
        raise SweepError(f"eval.py exited with code {code} on {step_dir}")
    with open(out_json) as f:
        return json.load(f)


def _load_eval_cli():
    """eval.py as a module, to call its main(argv) in this process."""
    global _eval_module
    if _eval_module is None:
        spec = importlib.util.spec_from_file_location("nanodna_eval_cli",
                                                      os.path.join(REPO_ROOT, "eval.py"))
        _eval_module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_eval_module)
    return _eval_module


# ---------------------------------------------------------------------------------------------
# results.tsv


def read_results(out: str) -> list[dict]:
    """results.tsv rows (numbers parsed), [] if there is none yet."""
    path = os.path.join(out, "results.tsv")
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    for r in rows:
        for k in COLUMNS:
            if k not in ("run", "arch", "label"):
                r[k] = float(r[k]) if r[k] not in ("", "nan") else float("nan")
        for k in ("params", "nonembed_params", "step", "tokens", "n"):
            r[k] = r[k] if math.isnan(r[k]) else int(r[k])
    return rows


def append_result(out: str, row: dict) -> None:
    path = os.path.join(out, "results.tsv")
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, delimiter="\t", extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({k: _fmt(row.get(k)) for k in COLUMNS})


def _fmt(v) -> str:
    if v is None:
        return "nan"
    if isinstance(v, float):
        return f"{v:.6g}" if abs(v) < 1e6 or math.isnan(v) else f"{v:.6e}"
    return str(v)


# ---------------------------------------------------------------------------------------------
# The sweep


def run_sweep(sweep: SweepConfig, out: str) -> list[dict]:
    """Train and score the whole grid (skipping what is done); returns results.tsv's rows."""
    os.makedirs(out, exist_ok=True)
    _write_sweep_json(sweep, out)
    env = subprocess_env(out)
    if not jax.config.jax_compilation_cache_dir:  # the in-process evaluator shares the cache
        jax.config.update("jax_compilation_cache_dir", env["JAX_COMPILATION_CACHE_DIR"])
    done = {(r["run"], r["step"]) for r in read_results(out)}
    n = len(sweep.runs)
    bar = tqdm(total=n, desc="sweep", position=0, leave=True, dynamic_ncols=True)
    for i, run in enumerate(sweep.runs, 1):
        workdir = os.path.join(out, "runs", run.name)
        bar.set_description(f"run {i}/{n} {run.name}: training")
        trained = train_run(sweep, run, workdir, env)
        facts = checkpoint_facts(run, workdir)
        todo = [f for f in facts if (run.name, f["step"]) not in done]
        for j, fact in enumerate(todo, 1):
            bar.set_description(f"run {i}/{n} {run.name}: scoring {j}/{len(todo)} "
                                f"(step {fact['step']} {fact['label']})")
            step_dir = os.path.join(workdir, "checkpoints", str(fact["step"]))
            res = score_checkpoint(sweep, step_dir, os.path.join(
                workdir, "eval", str(fact["step"]), "results.json"), env)
            lo, hi = res.get("roc_auc_ci", (None, None))
            alo, ahi = res.get("auprc_ci", (None, None))
            append_result(out, {**fact, "roc_auc": res.get("roc_auc"), "roc_auc_lo": lo,
                                "roc_auc_hi": hi, "auprc": res.get("auprc"), "auprc_lo": alo,
                                "auprc_hi": ahi, "n": res.get("n")})
        tqdm.write(f"run {i}/{n} {run.name}: {'trained' if trained else 'already trained'}, "
                   f"{len(todo)} checkpoint(s) scored, {len(facts) - len(todo)} already scored")
        bar.update(1)
    bar.close()
    return read_results(out)


# Settings that change what a results.tsv row means: a rerun in the same OUT must keep them.
# (Runs may be added; a changed run is caught by its sweep_done.json.)
ROW_SETTINGS = ("table", "max_rows", "bootstrap", "cycle_steps", "cycles", "decay_fraction")


def _write_sweep_json(sweep: SweepConfig, out: str) -> None:
    path = os.path.join(out, "sweep.json")
    if os.path.exists(path) and read_results(out):
        with open(path) as f:
            old = json.load(f)
        new = dataclasses.asdict(sweep)
        changed = [k for k in ROW_SETTINGS if old.get(k) != new[k]]
        if changed:
            raise SweepError(f"{out} holds results made with other {', '.join(changed)}: use a "
                             "fresh --out folder")
    with open(path, "w") as f:
        json.dump(dataclasses.asdict(sweep), f, indent=1)
