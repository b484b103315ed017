"""A run's workdir: start it (resume from its latest checkpoint, or initialise), clear it for
--restart, and keep the run length fitted to train.max_minutes (workdir/schedule.json)."""

from __future__ import annotations

import json
import os
import shutil

import jax

from nanodna import atomic
from nanodna.checkpoint import CHECKPOINTS, CONFIG_FILE, model_static
from nanodna.training import mesh as mesh_lib
from nanodna.training import step as step_lib

SCHEDULE_FILE = "schedule.json"  # the run length fitted to train.max_minutes, kept for resumes


def restore_or_init(cfg, workdir, build, optimizer, mesh, ckpt, data_it, logger):
    """Resume from the workdir's latest checkpoint (state, data position, RNG, run length),
    or initialise straight into the shardings.

    Returns (state, static, shardings, key, start step, total steps).
    """
    tc = cfg.train
    key = jax.random.key(tc.seed)
    start = ckpt.latest_step() or 0
    if not start:  # a new run, or one killed before its first complete checkpoint
        logger.truncate_after(0)
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
    return state, model_static(build, key), shardings, key, start, total


def clear_run(workdir: str) -> None:
    """--restart: remove a run's checkpoints, metrics, TensorBoard, config and schedule."""
    if jax.process_index() != 0:
        return
    for name in (CHECKPOINTS, "tb"):
        shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)
    for name in ("metrics.jsonl", CONFIG_FILE, SCHEDULE_FILE):
        path = os.path.join(workdir, name)
        if os.path.exists(path):
            os.remove(path)


def write_schedule(workdir: str, total: int, at_step: int, max_minutes: float | None) -> None:
    """Record the run length fitted to the budget: a resumed run continues this schedule."""
    atomic.write_text(os.path.join(workdir, SCHEDULE_FILE), json.dumps(
        {"total_steps": int(total), "fitted_at_step": int(at_step), "max_minutes": max_minutes}))


def read_schedule(workdir: str) -> int | None:
    """The fitted run length of workdir/schedule.json (None when no budget fitted one)."""
    path = os.path.join(workdir, SCHEDULE_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return int(json.load(f)["total_steps"])
