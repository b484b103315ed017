"""The experiment config: one nested dataclass, written as plain Python in configs/*.py.

    Config
      model  ModelConfig   (nanodna.models)       architecture and sizes
      data   DataConfig    (nanodna.data.stream)  genomes, windows, masking, batch size
      optim  OptimConfig   (here)                 AdamW and the learning-rate schedule
      train  TrainConfig   (here)                 steps, devices, checkpoints, logging
      eval   EvalConfig    (here)                 validation loss and conservation AUC
      simulate SimulateConfig (here)              generate the embedded simulated set if missing

A config file defines `get_config() -> Config`. The command line changes fields with dotted
`key=value` overrides (`optim.lr=3e-4 model.n_layers=4`); values are Python literals, checked
against the field's type so that a typo fails at once with a one-line message instead of deep
inside a jitted step. The resolved config is saved as JSON in the workdir (`to_dict`) and
rebuilt from there for evaluation (`from_dict`).
"""

from __future__ import annotations

import ast
import collections.abc
import dataclasses
import difflib
import importlib.util
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional
from nanodna.errors import UserError


class ConfigError(UserError):
    """A bad config file, override or saved config; the message names the key."""


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


@dataclass
class EvalConfig:
    every: int = 2000  # steps between evaluations (0: only at the end)
    val_batches: int = 20  # batches of the held-out stream for the validation loss
    table: Optional[str] = None  # conservation table (None: the simulated set's small table)
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
    # model and data are typed Any so that this module imports neither the models nor the data
    # stream (see _section_types); tests may also pass small stand-in dataclasses.
    model: Any  # nanodna.models.ModelConfig
    data: Any  # nanodna.data.stream.DataConfig
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    simulate: SimulateConfig = field(default_factory=SimulateConfig)


def _section_types() -> dict[str, type]:
    """The dataclass of each top-level section. Imported here, not at module level, so that the
    config system (and the training code under test) does not depend on a half-written model."""
    from nanodna.data.stream import DataConfig
    from nanodna.models import ModelConfig

    return {
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
    """Execute a config file and return its `get_config()`."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    name = "nanodna_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} defines no get_config()")
    cfg = module.get_config()
    if not isinstance(cfg, Config):
        raise ConfigError(f"{path}: get_config() returned {type(cfg).__name__}, not Config")
    return cfg


# ---------------------------------------------------------------------------------------------
# Overrides


def all_keys(cfg: Any, prefix: str = "") -> list[str]:
    """Every dotted leaf key of a (nested) dataclass, e.g. ["model.d_model", "optim.lr", ...]."""
    keys = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            keys += all_keys(value, prefix + f.name + ".")
        else:
            keys.append(prefix + f.name)
    return keys


def _unknown_key(key: str, cfg: Config) -> ConfigError:
    close = difflib.get_close_matches(key, all_keys(cfg), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint}")


def _field_type(obj: Any, name: str) -> Any:
    """The resolved type annotation of a dataclass field (annotations may be strings)."""
    try:
        return typing.get_type_hints(type(obj))[name]
    except Exception:  # an annotation we cannot resolve: trust the current value's type
        value = getattr(obj, name)
        return Any if value is None else type(value)


def _parse(text: str) -> Any:
    """A Python literal; anything else (e.g. `arch=caduceus`) is taken as a bare string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def check_type(value: Any, tp: Any, key: str) -> Any:
    """Return `value` converted to type `tp` (int -> float, list <-> tuple) or raise ConfigError."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    bad = ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in args:
            if option is type(None):
                continue
            try:
                return check_type(value, option, key)
            except ConfigError:
                pass
        raise bad
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: expected one of {list(args)}, got {value!r}")
        return value
    if origin in (tuple, list, collections.abc.Sequence) or tp in (tuple, list):
        if not isinstance(value, (tuple, list)):
            raise bad
        container = origin or tp
        if container is collections.abc.Sequence:  # keep configs hashable: a tuple
            container, args = tuple, (args[0] if args else Any, Ellipsis)
        if container is tuple and len(args) == 2 and args[1] is Ellipsis:
            items = [check_type(v, args[0], key) for v in value]
        elif container is tuple and args:
            if len(args) != len(value):
                raise bad
            items = [check_type(v, a, key) for v, a in zip(value, args)]
        elif args:
            items = [check_type(v, args[0], key) for v in value]
        else:
            items = list(value)
        return container(items)
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise bad
    return value


def _type_name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Return a copy of `cfg` with `section.field=value` overrides applied (values type-checked).

    Each changed dataclass is rebuilt with dataclasses.replace, so its __post_init__ checks and
    normalisations run on the new value too.
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, text = (part.strip() for part in item.split("=", 1))
        cfg = _set(cfg, key.split("."), text, key, cfg)
    return cfg


def _set(obj: Any, path: list[str], text: str, key: str, root: Config) -> Any:
    """A copy of dataclass `obj` with the field at `path` set to the parsed `text`."""
    name = path[0]
    if not (dataclasses.is_dataclass(obj) and name in {f.name for f in dataclasses.fields(obj)}):
        raise _unknown_key(key, root)
    current = getattr(obj, name)
    if len(path) > 1:
        value = _set(current, path[1:], text, key, root)
    elif dataclasses.is_dataclass(current):
        raise ConfigError(f"'{key}' is a section: set its fields, e.g. {key}.<field>=...")
    else:
        value = check_type(_parse(text), _field_type(obj, name), key)
    try:
        return dataclasses.replace(obj, **{name: value})
    except (ValueError, TypeError) as e:  # the dataclass's own checks (__post_init__)
        raise ConfigError(f"{key}={text}: {e}") from None


def format_config(cfg: Any) -> str:
    """The resolved config, one `section.field = value` per line, for the top of a run's log."""
    return "\n".join(f"  {k} = {_get(cfg, k)!r}" for k in all_keys(cfg))


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


# ---------------------------------------------------------------------------------------------
# JSON round trip (config.json in the workdir)


def to_dict(cfg: Any) -> dict:
    """Plain nested dict of a config (tuples become lists), for json.dump."""
    return dataclasses.asdict(cfg)


def _build(cls: type, d: dict, prefix: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}' in saved config")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in d.items():
        tp = hints.get(name, Any)
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            kwargs[name] = _build(tp, value, prefix + name + ".")
        else:
            kwargs[name] = check_type(value, tp, prefix + name)
    return cls(**kwargs)


def from_dict(d: dict) -> Config:
    """Rebuild a Config from `to_dict` output (e.g. a workdir's config.json)."""
    sections = _section_types()
    unknown = sorted(set(d) - set(sections))
    if unknown:
        raise ConfigError(f"unknown config section '{unknown[0]}' in saved config")
    parts = {name: _build(cls, d.get(name, {}), name + ".") for name, cls in sections.items()}
    return Config(**parts)
