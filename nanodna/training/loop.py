"""The training loop: resume or initialise, step, log, evaluate, checkpoint, stop cleanly.

    for step in start+1 .. total (train.steps, or fewer to fit train.max_minutes: StepBudget):
        batch -> device (split over "data") -> jitted step(state, batch, lr) (old state donated)
        pull the PREVIOUS step's metrics (the device is already busy with this one)
        every log_every: metrics.jsonl / TensorBoard / progress bar
        every checkpoint_every, and at WSD-S hot/cold steps: async checkpoint
        every eval.every: validation loss + conservation ROC AUC
    stop early on SIGTERM / Ctrl-C (checkpoint, exit 0), on train.max_minutes (final eval +
    checkpoint), or with an error naming the step when the loss is NaN or infinite.

The model, data and evaluation modules are imported inside functions: the loop is tested with
stand-ins (tests/_fakes.py) passed through `train(..., build=, train_iter=, eval_iter=)`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import equinox as eqx
import jax
import numpy as np
from tqdm.auto import tqdm

from nanodna.config import Config, ConfigError, to_dict
from nanodna.training import mesh as mesh_lib
from nanodna.training import step as step_lib
from nanodna.training.checkpoint import Checkpointer
from nanodna.training.logging import MetricsLogger, mfu, peak_flops_per_device
from nanodna.training.optim import make_optimizer
from nanodna.training.schedules import decay_steps, hot_cold_steps, make_schedule


class StopRequested:
    """Set by SIGTERM / SIGINT; the loop checks it once per step. A second signal aborts."""

    def __init__(self):
        self.signum = None

    def __call__(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __bool__(self) -> bool:
        return self.signum is not None


@contextlib.contextmanager
def stop_on_signals(flag: StopRequested):
    """Route SIGTERM and SIGINT to `flag` while inside (main thread only, as Python requires)."""
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {s: signal.signal(s, flag) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# ---------------------------------------------------------------------------------------------
# The pieces the loop needs from the other packages (imported lazily)


def default_build(cfg: Config) -> Callable:
    from nanodna.models import build_model  # noqa: PLC0415

    return lambda key: build_model(cfg.model, key)


def default_train_iter(cfg: Config) -> Iterator:
    from nanodna.data.stream import make_train_iterator  # noqa: PLC0415

    return make_train_iterator(
        cfg.data, process_index=jax.process_index(), process_count=jax.process_count()
    )


def default_eval_iter(cfg: Config) -> Iterator:
    from nanodna.data.stream import make_eval_iterator  # noqa: PLC0415

    return make_eval_iterator(
        cfg.data, process_index=jax.process_index(), process_count=jax.process_count()
    )


def resolve_paths(cfg: Config) -> Config:
    """Fill in the paths a config leaves to the simulated set: with simulate.preset set, an
    empty data.store_dirs means simulate.dir/store and an unset eval.table means its small
    conservation table. The resolved config is the one saved in the workdir."""
    sim = cfg.simulate
    if not sim.preset:
        return cfg
    data, ev = cfg.data, cfg.eval
    if not data.store_dirs:
        data = dataclasses.replace(data, store_dirs=(os.path.join(sim.dir, "store"),))
    if not ev.table:
        ev = dataclasses.replace(ev, table=os.path.join(sim.dir, "eval", "conservation_small.tsv"))
    return dataclasses.replace(cfg, data=data, eval=ev)


def ensure_simulated_data(cfg: Config) -> None:
    """Generate the embedded simulated genome set if the config uses it and it is missing."""
    sim = cfg.simulate
    if not sim.preset:
        return
    missing = not os.path.exists(os.path.join(sim.dir, "store", "manifest.json"))
    if missing and jax.process_index() == 0:
        from nanodna.data.simulate import simulate  # noqa: PLC0415

        print(f"simulated genome set '{sim.preset}' not found in {sim.dir}: generating it")
        simulate(sim.dir, seed=sim.seed, preset=sim.preset)
    if jax.process_count() > 1:  # the other hosts wait for it (on a shared file system)
        from jax.experimental import multihost_utils  # noqa: PLC0415

        multihost_utils.sync_global_devices("nanodna: simulated data ready")


def model_flops_per_token(cfg: Config, seq_len: int) -> float | None:
    """Training FLOPs per token for MFU (None for a model that is not a ModelConfig one)."""
    try:
        from nanodna.models import ModelConfig, flops_per_token  # noqa: PLC0415
    except ImportError:
        return None
    if not isinstance(cfg.model, ModelConfig):
        return None
    return float(flops_per_token(cfg.model, seq_len))


# ---------------------------------------------------------------------------------------------
# Evaluation during training


def evaluate(cfg: Config, params, static, eval_step, mesh, eval_iter_fn: Callable,
             evaluate_table: Callable | None) -> dict:
    """Validation loss over eval.val_batches held-out batches, and conservation AUC."""
    out = {}
    if cfg.eval.val_batches > 0:
        total = weight = 0.0
        for batch in itertools.islice(eval_iter_fn(cfg), cfg.eval.val_batches):
            s, w = eval_step(params, mesh_lib.put_batch(batch, mesh_lib.batch_sharding(mesh)))
            total, weight = total + float(s), weight + float(w)
        out["eval/val_loss"] = total / max(weight, step_lib.EPS)
    table = cfg.eval.table
    if evaluate_table is not None and table and os.path.exists(table):
        model = eqx.combine(params, static)
        result = evaluate_table(model, cfg.model, table, batch_size=cfg.eval.batch_size,
                                max_rows=cfg.eval.max_rows)
        out.update({f"eval/{k}": v for k, v in result.items() if k in ("roc_auc", "auprc", "n")})
    return out


def _default_evaluate_table():
    try:
        from nanodna.evaluation.conservation import evaluate_table  # noqa: PLC0415
    except ImportError:
        return None
    return evaluate_table


# ---------------------------------------------------------------------------------------------
# The loop


def save_config(cfg: Config, workdir: str) -> None:
    """Write workdir/config.json; when resuming with a changed config, say what changed."""
    if jax.process_index() != 0:
        return
    path, new = os.path.join(workdir, "config.json"), to_dict(cfg)
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        flat_old, flat_new = _flat(old), _flat(json.loads(json.dumps(new)))  # tuples -> lists
        changed = sorted(k for k in flat_old.keys() | flat_new.keys()
                         if flat_old.get(k) != flat_new.get(k))
        if changed:
            print(f"note: config changed since the last run in this workdir: {', '.join(changed)}")
    with open(path, "w") as f:
        json.dump(new, f, indent=1)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def budget_fits(cfg: Config) -> bool:
    """Whether the run length is fitted to train.max_minutes (see StepBudget)."""
    return (cfg.train.max_minutes is not None and cfg.train.fit_schedule_to_budget
            and cfg.optim.schedule == "wsd")


class StepBudget:
    """The run's length in steps, refitted to train.max_minutes while a WSD run is stable.

    A time-budgeted run that simply stopped would end at the peak learning rate, without the
    decay that makes WSD's final model good. So, until the decay starts, the number of steps is
    re-estimated from the measured speed (compilation excluded) and the time the final
    evaluation needs; once the decay has started the length is fixed.
    """

    def __init__(self, cfg: Config, total: int):
        self.cfg, self.total, self.active = cfg, total, budget_fits(cfg)
        self.t0 = self.step0 = None  # when timing started (after the first, compiling, step)
        self.eval_s = 0.1 * 60 * (cfg.train.max_minutes or 0)  # until an eval has been timed

    def fit(self, step: int, now: float, t_start: float) -> bool:
        """Re-estimate the length at `step`; True if it changed."""
        if not self.active:
            return False
        if self.t0 is None:
            self.t0, self.step0 = now, step
            return False
        T_d = decay_steps(self.cfg.optim, self.total)
        if step >= self.total - T_d or step == self.step0:  # decaying: the length is fixed
            return False
        per_step = (now - self.t0) / (step - self.step0)
        left = 60 * self.cfg.train.max_minutes - (now - t_start) - self.eval_s
        total = min(self.cfg.train.steps, max(step + 1, step + int(left / per_step)))
        # Never shorter than warmup + decay (W + int(d * T) <= T): the hard time limit ends
        # a run whose budget cannot hold even that.
        optim = self.cfg.optim
        total = max(total, math.ceil(optim.warmup_steps / (1 - optim.decay_fraction)) + 1)
        changed, self.total = total != self.total, total
        return changed


def train(cfg: Config, workdir: str, *, build: Callable | None = None,
          train_iter: Callable | None = None, eval_iter: Callable | None = None,
          evaluate_table: Callable | None | str = "default") -> dict:
    """Train `cfg` in `workdir` (resuming from its latest checkpoint); returns a summary dict.

    build(key) -> model, train_iter(cfg) / eval_iter(cfg) -> batch iterators and
    evaluate_table default to the real modules (nanodna.models / data.stream / evaluation).
    """
    t_start = time.monotonic()
    cfg = resolve_paths(cfg)
    tc = cfg.train
    mesh_lib.maybe_initialize_distributed(tc.distributed)
    os.makedirs(workdir, exist_ok=True)
    save_config(cfg, workdir)
    ensure_simulated_data(cfg)
    build = build or default_build(cfg)
    train_iter, eval_iter = train_iter or default_train_iter, eval_iter or default_eval_iter
    if evaluate_table == "default":
        evaluate_table = _default_evaluate_table()

    mesh = mesh_lib.make_mesh(tc.num_devices)
    optimizer = make_optimizer(cfg.optim)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=tc.keep_checkpoints)
    logger = MetricsLogger(workdir, tensorboard=tc.tensorboard)
    data_it = train_iter(cfg)
    state, static, shardings, key, start, total = _restore_or_init(
        cfg, workdir, build, optimizer, mesh, ckpt, data_it, logger)
    from nanodna.models import count_params  # lazy, like the other model imports here

    n_params = count_params(state.params)
    if jax.process_index() == 0:
        print(f"model: {n_params:,} parameters; mesh: {mesh.devices.size} x "
              f"{jax.devices()[0].device_kind}; fsdp={tc.fsdp}")
    train_step = step_lib.make_train_step(static, optimizer, shardings, mesh)
    eval_step = step_lib.make_eval_step(static, shardings.params, mesh)
    budget = StepBudget(cfg, total)
    peak = peak_flops_per_device(override=tc.peak_flops_per_device)
    batch_sharding = mesh_lib.batch_sharding(mesh)

    def set_length(total: int):
        """The schedule and the hot/cold checkpoint labels for a run of `total` steps."""
        pairs = hot_cold_steps(cfg, total)
        labels = {**{hot: "hot" for hot, _ in pairs}, **{cold: "cold" for _, cold in pairs}}
        ckpt.labels = labels
        bar.total = total
        return make_schedule(cfg.optim, total), labels

    def run_eval(step: int, params) -> dict:
        t0 = time.monotonic()
        result = evaluate(cfg, params, static, eval_step, mesh, eval_iter, evaluate_table)
        budget.eval_s = time.monotonic() - t0
        if result:
            logger.log(step, result)
            tqdm.write(f"step {step}: " + "  ".join(f"{k} {v:.4g}" for k, v in result.items()))
        return result

    def save(step: int) -> None:
        nonlocal saved_at
        ckpt.save(step, state, data_it.get_state(), key, total_steps=total)
        saved_at = step

    def pull(pending, force_log: bool = False) -> dict:
        """Bring a dispatched step's metrics to the host; stop on a non-finite loss."""
        s, metrics, n_tokens, lr = pending
        row = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not math.isfinite(row["loss"]):
            raise FloatingPointError(f"loss is {row['loss']} at step {s}: stopping")
        row["lr"] = lr
        window["tokens"] += n_tokens
        if s % tc.log_every == 0 or s == total or force_log:
            row["tokens_per_s"] = window["tokens"] / max(time.monotonic() - window["t"], 1e-9)
            if flops_tok is not None and peak is not None:
                row["mfu"] = mfu(flops_tok, row["tokens_per_s"], mesh.devices.size, peak)
            logger.log(s, row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{lr:.2e}")
            window.update(t=time.monotonic(), tokens=0)
        return row

    bar = tqdm(total=total, initial=start, desc="train", dynamic_ncols=True,
               disable=not tc.progress or jax.process_index() != 0)
    schedule, labels = set_length(total)
    stop = StopRequested()
    window = {"t": time.monotonic(), "tokens": 0}
    flops_tok, saved_at = None, start
    last, pending, step, reason, last_eval = {}, None, start, "done", {}
    with stop_on_signals(stop):
        try:
            while step < total:
                if stop:
                    reason = "signal"
                    break
                if tc.max_minutes is not None and time.monotonic() - t_start > 60 * tc.max_minutes:
                    reason = "time"
                    break
                batch = next(data_it)
                if step == start:
                    _check_batch(batch, mesh)
                    flops_tok = model_flops_per_token(cfg, batch["tokens"].shape[1])
                lr = schedule(step)  # the rate of the update that makes step + 1
                batch_dev = mesh_lib.put_batch(batch, batch_sharding)
                state, metrics = train_step(state, batch_dev, np.float32(lr))
                step += 1
                if pending is not None:  # the previous step's numbers, while this one runs
                    last = pull(pending)
                    if budget.fit(step - 1, time.monotonic(), t_start):
                        total = budget.total
                        schedule, labels = set_length(total)
                pending = (step, metrics, batch["tokens"].size * jax.process_count(), lr)
                bar.update(1)
                if step % tc.checkpoint_every == 0 or step in labels:
                    save(step)
                if cfg.eval.every and step % cfg.eval.every == 0 and step < total:
                    last, pending = pull(pending), None
                    last_eval = run_eval(step, state.params)
            if pending is not None:
                last = pull(pending, force_log=True)  # the last step is always logged
            bar.close()
            if reason != "signal" and cfg.eval.at_end and step > start:
                last_eval = run_eval(step, state.params)
            if step > start and saved_at != step:
                save(step)
        finally:  # also on errors: finish background writes, flush logs
            bar.close()
            ckpt.close()
            logger.close()
    if reason == "signal":
        print(f"stopped by signal {stop.signum} at step {step}; checkpoint saved in {workdir}")
    elif reason == "time":
        print(f"train.max_minutes={tc.max_minutes} reached at step {step}; checkpoint saved")
    return {"step": step, "total_steps": total, "stopped": reason, "n_params": n_params,
            **last, **last_eval}


def _restore_or_init(cfg, workdir, build, optimizer, mesh, ckpt, data_it, logger):
    """Resume from the workdir's latest checkpoint (state, data position, RNG, run length),
    or initialise straight into the shardings.

    Returns (state, static, shardings, key, start step, total steps).
    """
    tc = cfg.train
    key = jax.random.key(tc.seed)
    start = ckpt.latest_step() or 0
    if not start:
        state, static, shardings = step_lib.init_train_state(
            build, optimizer, key, mesh, tc.fsdp, tc.fsdp_min_size)
        return state, static, shardings, key, 0, tc.steps
    shapes = step_lib.state_shapes(build, optimizer, key)
    shardings = mesh_lib.state_shardings(shapes, mesh, tc.fsdp, tc.fsdp_min_size)
    state, data_state, key, meta = ckpt.restore(start, step_lib.restore_target(shapes, shardings))
    data_it.set_state(data_state)
    logger.truncate_after(start)  # entries past the checkpoint will be written again
    print(f"resumed from {workdir} at step {start}")
    # Keep the run length the checkpoint was made with (it may have been fitted to a budget),
    # unless that run had already ended: then go on to train.steps.
    saved_total = meta.get("total_steps")
    total = saved_total if saved_total and start < saved_total <= tc.steps else tc.steps
    return state, step_lib.model_static(build, key), shardings, key, start, total


def _check_batch(batch: dict, mesh) -> None:
    """One-line errors for batches the mesh cannot split (instead of a deep sharding error)."""
    for name in ("tokens", "targets", "weights"):
        if name not in batch:
            raise KeyError(f"data stream batch has no '{name}' array (has {sorted(batch)})")
    n = mesh.devices.size // jax.process_count()
    if batch["tokens"].shape[0] % n:
        raise ConfigError(f"batch size {batch['tokens'].shape[0]} per process is not divisible by "
                         f"its {n} local device(s): change data.batch_size or train.num_devices")
    if not np.issubdtype(batch["tokens"].dtype, np.integer):
        raise TypeError(f"batch tokens must be integers, got {batch['tokens'].dtype}")
