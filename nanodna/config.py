"""The experiment config: one nested dataclass, written as plain Python in configs/*.py.

    Config
      model  ModelConfig   (nanodna.models.config) architecture and sizes
      data   DataConfig    (nanodna.data.config)   genomes, windows, masking, batch size
      optim  OptimConfig   (here)                 AdamW and the learning-rate schedule
      train  TrainConfig   (here)                 steps, devices, checkpoints, logging
      eval   EvalConfig    (here)                 validation loss and conservation AUC
      simulate SimulateConfig (here)              generate the embedded simulated set if missing

A config file defines `get_config() -> Config`. The command line changes fields with dotted
`key=value` overrides (`optim.lr=3e-4 model.n_layers=4`); values are Python literals, checked
against the field's type so that a typo fails at once with a one-line message instead of deep
inside a jitted step. The resolved config is saved as JSON in the workdir (`to_dict`) and
rebuilt from there for evaluation (`from_dict`). Importing this module loads neither JAX nor
Grain: the two section types come from their light modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from nanodna.data.config import DataConfig
from nanodna.models.config import ModelConfig
from nanodna.overrides import (  # noqa: F401 (re-exported: the config's grammar)
    ConfigError,
    all_keys,
    apply_overrides,
    build,
    check_type,
    format_config,
    load_python_config,
    to_dict,
)


@dataclass
class OptimConfig:
    lr: float = 2e-4  # peak learning rate (PlantCAD1: 2e-4)
    b1: float = 0.9  # AdamW first-moment decay (PlantCAD1 used the HF default 0.9)
    b2: float = 0.999  # AdamW second-moment decay (HF default 0.999; Caduceus / marin: 0.95)
    eps: float = 1e-8  # AdamW denominator epsilon
    weight_decay: float = 0.01  # decoupled; never applied to norms, biases or 1-D params
    grad_clip: Optional[float] = 1.0  # clip the global gradient norm to this; None: no clipping
    # "constant": warmup then constant (PlantCAD1); "cosine": warmup then cosine to min_lr
    # (Caduceus); "wsd": warmup, stable, decay over the last decay_fraction of train.steps;
    # "wsds": WSD-S, cycles of cycle_steps each ending in a decay, no rewarmup.
    schedule: Literal["constant", "cosine", "wsd", "wsds"] = "constant"
    warmup_steps: int = 1000  # linear warmup from 0; for WSD-S only in the first cycle
    decay_fraction: float = 0.1  # wsd: fraction of train.steps; wsds: fraction of each cycle
    decay_shape: Literal["linear", "cosine", "inv"] = "linear"  # shape of the WSD / WSD-S decay
    min_lr_ratio: float = 0.1  # lr floor at the end of a decay (or of cosine), relative to lr
    cycle_steps: int = 0  # WSD-S cycle length in steps (required > 0 for "wsds")


@dataclass
class TrainConfig:
    steps: int = 120_000  # optimizer steps in all (PlantCAD1: 120k)
    seed: int = 0  # model initialisation and the RNG key saved with checkpoints
    max_minutes: Optional[float] = None  # wall-clock budget: stop cleanly (eval + save) when spent
    # With max_minutes and the "wsd" schedule: shorten the run to the number of steps the
    # measured speed allows, so that the decay still happens before the budget is spent.
    fit_schedule_to_budget: bool = True
    log_every: int = 50  # steps between metrics.jsonl / TensorBoard entries
    checkpoint_every: int = 2000  # steps between periodic (asynchronous) checkpoints
    keep_checkpoints: int = 3  # periodic checkpoints kept; WSD-S hot/cold ones are always kept
    num_devices: Optional[int] = None  # devices in the "data" mesh axis; None: all of them
    fsdp: bool = False  # shard params + optimizer state over "data" (else replicated)
    fsdp_min_size: int = 2**16  # arrays with fewer elements than this stay replicated under FSDP
    distributed: bool = False  # multi-host: jax.distributed.initialize() (reads the cluster env)
    peak_flops_per_device: Optional[float] = None  # for MFU; None: look the device kind up
    tensorboard: bool = True  # also write TensorBoard scalars under workdir/tb
    progress: bool = True  # tqdm progress bar
    # Gradient accumulation: the batch is split into this many sequential microbatches inside
    # the jitted step (one optimizer update, same result as the whole batch): less memory.
    microbatches: int = 1
    # A non-finite loss or gradient: False stops the run naming the step (the last checkpoint
    # is the last good state); True skips that update (params and optimizer state unchanged).
    skip_nonfinite: bool = False
    # Stop with an error after this many consecutive training batches with no loss weight
    # (e.g. every target soft-masked with a repeat weight of 0).
    max_empty_steps: int = 50
    # Check the compiled train step's memory against the device's before the first step.
    check_memory: bool = True


@dataclass
class EvalConfig:
    every: int = 2000  # steps between evaluations (0: only at the end)
    val_batches: int = 20  # batches of the held-out stream for the validation loss
    table: Optional[str] = None  # conservation table (None: the simulated set's small table)
    score_table: bool = True  # score `table` during training (the sweep scores checkpoints itself)
    max_rows: Optional[int] = None  # score at most this many rows of the table (None: all)
    batch_size: int = 64  # windows per forward pass when scoring the table
    at_end: bool = True  # evaluate once more after the last step


@dataclass
class SimulateConfig:
    # Generate the embedded simulated genome set ("demo": seconds on a CPU; "large": for GPU
    # runs) into `dir` before training if it is not there yet. None: train on data.store_dirs
    # as given (e.g. real genomes from `python -m nanodna.data prepare`).
    preset: Optional[str] = None
    dir: str = "data/sim_demo"  # the simulated set: dir/store (genome store), dir/eval (tables)
    seed: int = 0  # simulator seed: a different seed is a different set of genomes


@dataclass
class Config:
    # SECTIONS gives the real types (from_dict builds them); typed Any because the training
    # tests pass small stand-in dataclasses for model and data.
    model: Any  # ModelConfig
    data: Any  # DataConfig
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    simulate: SimulateConfig = field(default_factory=SimulateConfig)


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "simulate": SimulateConfig,
}


# ---------------------------------------------------------------------------------------------
# Loading a config file


def load_config(path: str) -> Config:
    """Execute a config file and return its `get_config()` (a Config; else ConfigError)."""
    return load_python_config(path, "get_config", Config)


def from_dict(d: dict) -> Config:
    """Rebuild a Config from `to_dict` output (e.g. a workdir's config.json)."""
    sections = SECTIONS
    unknown = sorted(set(d) - set(sections))
    if unknown:
        raise ConfigError(f"unknown config section '{unknown[0]}' in saved config")
    parts = {name: build(cls, d.get(name, {}), name + ".") for name, cls in sections.items()}
    return Config(**parts)
