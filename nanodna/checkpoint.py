"""A training workdir on disk, and loading a model from it: what train.py and eval.py share.

    workdir/
      config.json                 the resolved Config (nanodna.config.to_dict)
      checkpoints/<step>/         one Orbax checkpoint after <step> updates; its `params` item
                                  holds the model's float arrays (training/checkpoint.py writes
                                  the rest: optimizer state, data position, RNG, run length)

One home for "which checkpoint": `resolve(path) -> (workdir, step)`, where a workdir stands for
its latest step. One loader: `load_model(path) -> (model, Config, step)`. The params/static
split the checkpoints rely on (`is_param`, `model_static`) lives here too, so that the
training code and the loader agree on what a checkpoint's params are.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from nanodna import atomic
from nanodna.config import Config, from_dict, to_dict
from nanodna.errors import UserError
from nanodna.models import build_model

CONFIG_FILE = "config.json"
CHECKPOINTS = "checkpoints"


class CheckpointError(UserError):
    """A path that is not a training workdir, or a workdir without the asked-for checkpoint."""


# ---------------------------------------------------------------------------------------------
# Params and static


def is_param(x) -> bool:
    """A checkpointed parameter: a floating-point array (or its ShapeDtypeStruct)."""
    if isinstance(x, jax.ShapeDtypeStruct):
        return jnp.issubdtype(x.dtype, jnp.inexact)
    return eqx.is_inexact_array(x)


def model_static(build: Callable, key: jax.Array):
    """The non-parameter part of `build(key)`, without materialising the parameters."""
    abstract = eqx.filter_eval_shape(build, key)
    static = eqx.filter(abstract, is_param, inverse=True)
    if not any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(static)):
        return static
    # The model holds non-float arrays (e.g. an integer lookup table): these are small
    # constants, so build them for real.
    consts = eqx.filter_jit(lambda k: eqx.filter(eqx.filter(build(k), is_param, inverse=True),
                                                 eqx.is_array))(key)
    rest = eqx.filter(static, lambda x: not isinstance(x, jax.ShapeDtypeStruct))
    return eqx.combine(consts, rest)


# ---------------------------------------------------------------------------------------------
# The workdir


def write_config(cfg: Config, workdir: str) -> list[str]:
    """Write workdir/config.json (atomically); returns the keys that changed since the last
    run in this workdir ([] for a new workdir)."""
    path, new = os.path.join(workdir, CONFIG_FILE), json.loads(json.dumps(to_dict(cfg)))
    changed = []
    if os.path.exists(path):
        with open(path) as f:
            flat_old, flat_new = _flat(json.load(f)), _flat(new)
        changed = sorted(k for k in flat_old.keys() | flat_new.keys()
                         if flat_old.get(k) != flat_new.get(k))
    atomic.write_text(path, json.dumps(new, indent=1))
    return changed


# Keys a resumed run may change: they steer logging, evaluation, the run's length and how the
# same computation is laid out, not the state a checkpoint holds. Anything else (the model's
# shape, the data layout and stream, the seed, the optimizer's state structure) cannot resume.
RESUMABLE = (
    "train.steps", "train.max_minutes", "train.fit_schedule_to_budget", "train.log_every",
    "train.checkpoint_every", "train.keep_checkpoints", "train.num_devices", "train.fsdp",
    "train.fsdp_min_size", "train.distributed", "train.peak_flops_per_device",
    "train.tensorboard", "train.progress", "train.microbatches", "train.skip_nonfinite",
    "train.max_empty_steps", "train.check_memory", "eval.", "simulate.", "data.worker_count",
    "data.prefetch", "optim.lr", "optim.warmup_steps", "optim.schedule", "optim.decay_fraction",
    "optim.decay_shape", "optim.min_lr_ratio", "optim.cycle_steps",
)


class ResumeError(UserError):
    """A workdir's run cannot continue under the new config."""


def config_changes(cfg: Config, workdir: str) -> tuple[list[str], list[str]]:
    """(keys that can change on resume, keys that cannot) between cfg and workdir/config.json.

    Both empty for a workdir without config.json. Reads only; nothing is written.
    """
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return [], []
    with open(path) as f:
        flat_old = _flat(json.load(f))
    flat_new = _flat(json.loads(json.dumps(to_dict(cfg))))
    changed = sorted(k for k in flat_old.keys() | flat_new.keys()
                     if flat_old.get(k) != flat_new.get(k))
    safe = [k for k in changed if any(k == r or (r.endswith(".") and k.startswith(r))
                                      for r in RESUMABLE)]
    return safe, [k for k in changed if k not in safe]


def check_resume(cfg: Config, workdir: str) -> list[str]:
    """The resumable changes of `cfg` against the run saved in `workdir` (to apply and list).

    Raises ResumeError naming every key that cannot change while the workdir holds
    checkpoints, and the two ways out. A workdir with no checkpoint starts over: [] then.
    """
    if not saved_steps(workdir):
        return []
    safe, unsafe = config_changes(cfg, workdir)
    if unsafe:
        with open(os.path.join(workdir, CONFIG_FILE)) as f:
            flat_old = _flat(json.load(f))
        flat_new = _flat(json.loads(json.dumps(to_dict(cfg))))
        what = ", ".join(f"{k} ({flat_old.get(k)!r} -> {flat_new.get(k)!r})" for k in unsafe)
        raise ResumeError(f"{workdir} holds a run with a different config: {what} cannot "
                          "change on resume; use a new --workdir, or --restart to start over in "
                          "this one (deletes its checkpoints)")
    return safe


def read_config(workdir: str) -> Config:
    """The Config saved in a workdir's config.json."""
    with open(os.path.join(workdir, CONFIG_FILE)) as f:
        return from_dict(json.load(f))


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def saved_steps(workdir: str) -> list[int]:
    """The finished checkpoint steps of a workdir, ascending (Orbax names them by step; a
    checkpoint still being written has a temporary, non-numeric name)."""
    folder = os.path.join(workdir, CHECKPOINTS)
    if not os.path.isdir(folder):
        return []
    return sorted(int(d) for d in os.listdir(folder) if d.isdigit())


def resolve(path: str | os.PathLike) -> tuple[str, int]:
    """(workdir, step) of a workdir (its latest checkpoint) or of one checkpoints/<step> folder.

    Raises CheckpointError when `path` is neither, or the workdir has no such checkpoint.
    """
    path = os.path.abspath(os.fspath(path).rstrip("/"))
    if os.path.exists(os.path.join(path, CONFIG_FILE)):
        workdir, step = path, None
    else:
        workdir, name = os.path.dirname(os.path.dirname(path)), os.path.basename(path)
        if not (name.isdigit() and os.path.exists(os.path.join(workdir, CONFIG_FILE))):
            raise CheckpointError(f"{path}: not a training workdir (no {CONFIG_FILE}) nor a "
                                  f"{CHECKPOINTS}/<step> folder of one")
        step = int(name)
    steps = saved_steps(workdir)
    if step is None:
        if not steps:
            raise CheckpointError(f"{workdir}: no checkpoint saved yet")
        return workdir, steps[-1]
    if step not in steps:
        raise CheckpointError(f"{workdir}: no checkpoint at step {step}")
    return workdir, step


def load_model(path: str | os.PathLike,
               matmul_dtype: str | None = None) -> tuple[eqx.Module, Config, int]:
    """(model, Config, step) from a workdir (its latest checkpoint) or a checkpoints/<step>
    folder. Only the params are read; the model is rebuilt from config.json on one device.

    matmul_dtype: replaces the saved ModelConfig.matmul_dtype (e.g. "bfloat16" to score a
    float32 checkpoint with bfloat16 matmul inputs on a CPU with AMX; the returned Config says
    so). Raises CheckpointError for a path without a checkpoint, or a matmul_dtype the saved
    compute_dtype does not allow."""
    workdir, step = resolve(path)
    cfg = read_config(workdir)
    if matmul_dtype is not None:
        try:
            cfg = dataclasses.replace(
                cfg, model=dataclasses.replace(cfg.model, matmul_dtype=matmul_dtype))
        except ValueError as e:
            raise CheckpointError(f"{workdir}: {e}") from None

    def build(key):
        return build_model(cfg.model, key)

    key = jax.random.key(cfg.train.seed)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = eqx.filter(eqx.filter_eval_shape(build, key), is_param)
    target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                          abstract)
    manager = ocp.CheckpointManager(os.path.join(workdir, CHECKPOINTS),
                                    options=ocp.CheckpointManagerOptions(read_only=True))
    try:
        restored = manager.restore(
            step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))
    finally:
        manager.close()
    return eqx.combine(restored.params, model_static(build, key)), cfg, step


def save_model(model: eqx.Module, cfg: Config, workdir: str | os.PathLike, step: int = 0) -> None:
    """Write a new workdir holding one params-only checkpoint of `model` (what `load_model`
    reads), e.g. a model imported from another format. Raises CheckpointError if `workdir`
    already holds checkpoints."""
    workdir = os.path.abspath(workdir)
    if os.path.exists(os.path.join(workdir, CHECKPOINTS)):
        raise CheckpointError(f"{workdir}: already holds checkpoints; choose a new folder")
    os.makedirs(workdir, exist_ok=True)
    write_config(cfg, workdir)
    manager = ocp.CheckpointManager(os.path.join(workdir, CHECKPOINTS),
                                    options=ocp.CheckpointManagerOptions(create=True))
    try:
        manager.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(eqx.filter(model, is_param))), force=True)
        manager.wait_until_finished()
    finally:
        manager.close()

