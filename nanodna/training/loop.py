"""The training loop: resume or initialise, step, log, evaluate, checkpoint, stop cleanly.

    refuse a config the workdir's run cannot continue under (before writing anything)
    resume from the workdir's latest checkpoint or initialise (training/workdir.py)
    compile the step ahead; stop if its memory cannot fit the device (training/memory.py)
    for step in start+1 .. total (train.steps, or fewer to fit train.max_minutes: StepBudget,
                                  fitted once and kept in workdir/schedule.json):
        batch -> device (split over "data") -> compiled step(state, batch, lr) (state donated)
        pull the PREVIOUS step's metrics (the device is already busy with this one) and check
            them (training/progress.py)
        every log_every: metrics.jsonl / TensorBoard / progress bar
        every checkpoint_every, and at WSD-S hot/cold steps: async checkpoint
        every eval.every: validation loss + conservation ROC AUC (training/evaluate.py)
    stop early on SIGTERM / Ctrl-C (checkpoint, return), on train.max_minutes (final eval +
    checkpoint), with NonFiniteLoss naming the step when the loss or gradient is NaN or
    infinite (unless train.skip_nonfinite), or with EmptyBatches after train.max_empty_steps
    batches in a row that carry no loss weight. A loss with no weight is never logged as 0.

The model, the data and the table evaluation come in as arguments (train.py passes the real
ones, the tests small stand-ins from tests/_fakes.py); the config here only sets the numbers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import equinox as eqx
import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from nanodna.checkpoint import CHECKPOINTS, check_resume, write_config
from nanodna.config import Config
from nanodna.models.build import count_params
from nanodna.models.config import ModelConfig
from nanodna.models.flops import flops_per_token
from nanodna.training import memory
from nanodna.training import mesh as mesh_lib
from nanodna.training import step as step_lib
from nanodna.training.checkpoint import Checkpointer
from nanodna.training.evaluate import BatchIterator, EvaluateTable, evaluate
from nanodna.training.logging import MetricsLogger, mfu, peak_flops_per_device
from nanodna.training.optim import make_optimizer
from nanodna.training.progress import Progress, check_step
from nanodna.training.schedules import StepBudget, hot_cold_steps, make_schedule
from nanodna.training.signals import StopRequested, stop_on_signals
from nanodna.training.workdir import (
    clear_run,
    read_schedule,
    restore_or_init,
    write_schedule,
)


def train(cfg: Config, workdir: str, *, build: Callable[[jax.Array], eqx.Module],
          train_iter: Callable[[Config], BatchIterator],
          eval_iter: Callable[[Config], BatchIterator],
          evaluate_table: EvaluateTable | None, restart: bool = False) -> dict:
    """Train `cfg` in `workdir` (resuming from its latest checkpoint); returns a summary dict.

    restart: delete the workdir's run (checkpoints, metrics, config, schedule) and start over.
    Raises ConfigError (before writing anything) when the schedule cannot fit train.steps
    (warmup + decay longer than a cycle), ResumeError (before writing anything) when the
    workdir's run cannot continue under `cfg`, StepTooLarge when the step cannot fit in
    memory, NonFiniteLoss, EmptyBatches.

    build(key) -> the model; train_iter(cfg) -> the training batches (resumable);
    eval_iter(cfg) -> a fresh pass over the validation batches; evaluate_table(model, model_cfg,
    path, batch_size=, max_rows=) -> {"roc_auc", ...} on cfg.eval.table (None: no table).
    """
    t_start = time.monotonic()
    tc = cfg.train
    make_schedule(cfg.optim, tc.steps)  # a schedule that cannot fit fails now, not after compiling
    if restart:
        clear_run(workdir)
    applied = check_resume(cfg, workdir)  # refuses before anything in the workdir changes
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        write_config(cfg, workdir)
        if applied:
            print(f"resume: config changes applied: {', '.join(applied)}")
    mesh = mesh_lib.make_mesh(tc.num_devices)
    optimizer = make_optimizer(cfg.optim)
    ckpt = Checkpointer(os.path.join(workdir, CHECKPOINTS), keep=tc.keep_checkpoints)
    logger = MetricsLogger(workdir, tensorboard=tc.tensorboard)
    data_it = train_iter(cfg)
    state, static, shardings, key, start, total = restore_or_init(
        cfg, workdir, build, optimizer, mesh, ckpt, data_it, logger)
    fitted = read_schedule(workdir)
    if fitted is not None and start < fitted:  # a budget fitted this run's length: keep it
        total = fitted
    n_params = count_params(state.params)
    if jax.process_index() == 0:
        print(f"model: {n_params:,} parameters; mesh: {mesh.devices.size} x "
              f"{jax.devices()[0].device_kind}; fsdp={tc.fsdp}")
    train_step = step_lib.make_train_step(
        static, optimizer, shardings, mesh, microbatches=tc.microbatches,
        skip_nonfinite=tc.skip_nonfinite,
        matmul_dtype=getattr(cfg.model, "dot_dtype", "float32"))
    eval_step = step_lib.make_eval_step(static, shardings.params, mesh)
    batch_sharding = mesh_lib.batch_sharding(mesh)
    budget = StepBudget(cfg, total)
    budget.active = budget.active and fitted is None
    first = None
    if start < total:  # compile ahead: the memory check comes before the first step
        first = next(data_it)
        mesh_lib.check_batch(first, mesh, tc.microbatches)
        train_step = train_step.lower(state, mesh_lib.put_batch(first, batch_sharding),
                                      np.float32(0.0)).compile()
        if tc.check_memory:
            local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
            line = memory.check_fits(train_step, local[0])
            if jax.process_index() == 0:
                print(line)
    peak = peak_flops_per_device(override=tc.peak_flops_per_device)
    run = Progress(step=start, total=total, saved_at=start, window_t=time.monotonic())
    bar = tqdm(total=total, initial=start, desc="train", dynamic_ncols=True,
               disable=not tc.progress or jax.process_index() != 0)

    def set_length(total: int):
        """The schedule and the hot/cold checkpoint labels for a run of `total` steps."""
        pairs = hot_cold_steps(cfg, total)
        ckpt.labels = {**{hot: "hot" for hot, _ in pairs}, **{cold: "cold" for _, cold in pairs}}
        bar.total = total
        return make_schedule(cfg.optim, total), ckpt.labels

    def pull(force_log: bool = False) -> dict:
        """Bring the dispatched step's metrics to the host; stop on a non-finite loss or
        gradient (or skip it, with train.skip_nonfinite) and on a long run of empty batches."""
        s, metrics, n_tokens, lr = run.pending
        run.pending = None
        row = {k: float(v) for k, v in jax.device_get(metrics).items()}
        row = check_step(run, s, row, tc.max_empty_steps)
        row["lr"] = lr
        run.window_tokens += n_tokens
        if s % tc.log_every == 0 or s == run.total or force_log:
            row["tokens_per_s"] = run.window_tokens / max(time.monotonic() - run.window_t, 1e-9)
            if run.flops_per_token is not None and peak is not None:
                row["mfu"] = mfu(run.flops_per_token, row["tokens_per_s"], mesh.devices.size, peak)
            logger.log(s, row)
            if "loss" in row:
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{lr:.2e}")
            run.window_t, run.window_tokens = time.monotonic(), 0
        return row

    def run_eval() -> None:
        t0 = time.monotonic()
        result = evaluate(cfg, state.params, static, eval_step, mesh, eval_iter, evaluate_table)
        budget.eval_s = time.monotonic() - t0
        if result:
            logger.log(run.step, result)
            tqdm.write(f"step {run.step}: " + "  ".join(f"{k} {v:.4g}" for k, v in result.items()))
        run.last_eval = result

    def save() -> None:
        if run.pending is not None:  # never checkpoint a state before its loss is checked
            run.last = pull()
        ckpt.save(run.step, state, data_it.get_state(), key, total_steps=run.total)
        run.saved_at = run.step

    schedule, labels = set_length(run.total)
    stop = StopRequested()
    with stop_on_signals(stop):
        try:
            while run.step < run.total:
                if stop:
                    run.stopped = "signal"
                    break
                if tc.max_minutes is not None and time.monotonic() - t_start > 60 * tc.max_minutes:
                    run.stopped = "time"
                    break
                batch, first = (first, None) if first is not None else (next(data_it), None)
                if run.step == start:
                    run.flops_per_token = _flops_per_token(cfg, batch.tokens_BL.shape[1])
                lr = schedule(run.step)  # the rate of the update that makes step + 1
                state, metrics = train_step(state, mesh_lib.put_batch(batch, batch_sharding),
                                            np.float32(lr))
                run.step += 1
                if run.pending is not None:  # the previous step's numbers, while this one runs
                    run.last = pull()
                    if budget.fit(run.step - 1, time.monotonic(), t_start):
                        run.total = budget.total
                        if jax.process_count() > 1:  # every process runs process 0's fit
                            run.total = int(multihost_utils.broadcast_one_to_all(
                                np.int32(run.total)))
                        schedule, labels = set_length(run.total)
                        if jax.process_index() == 0:  # before any checkpoint of the new length
                            write_schedule(workdir, run.total, run.step - 1, tc.max_minutes)
                run.pending = (run.step, metrics, batch.tokens_BL.size * jax.process_count(), lr)
                bar.update(1)
                if run.step % tc.checkpoint_every == 0 or run.step in labels:
                    save()
                if cfg.eval.every and run.step % cfg.eval.every == 0 and run.step < run.total:
                    if run.pending is not None:  # save() may have pulled it already
                        run.last = pull()
                    run_eval()
            if run.pending is not None:
                run.last = pull(force_log=True)  # the last step is always logged
            bar.close()
            if run.stopped != "signal" and cfg.eval.at_end and run.step > start:
                run_eval()
            if run.step > start and run.saved_at != run.step:
                save()
        finally:  # also on errors: finish background writes, flush logs
            bar.close()
            ckpt.close()
            logger.close()
    if run.stopped == "signal":
        print(f"stopped by signal {stop.signum} at step {run.step}; checkpoint saved in {workdir}")
    elif run.stopped == "time":
        print(f"train.max_minutes={tc.max_minutes} reached at step {run.step}; checkpoint saved")
    return {"step": run.step, "total_steps": run.total, "stopped": run.stopped,
            "n_params": n_params, **run.last, **run.last_eval}


def _flops_per_token(cfg: Config, seq_len: int) -> float | None:
    """Training FLOPs per token for MFU (None for a stand-in model config)."""
    if not isinstance(cfg.model, ModelConfig):
        return None
    return float(flops_per_token(cfg.model, seq_len))
