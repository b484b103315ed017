"""What a sweep trains and how it is scored: a `SweepConfig`, written as plain Python in
configs/sweeps/*.py (a file defining `get_sweep() -> SweepConfig`).

Each `Run` is one (architecture, size) cell of the grid: a base training config (configs/*.py)
plus `key=value` overrides in train.py's grammar. The sweep adds the WSD-S schedule, the run
length and the evaluation cadence on top (see nanodna.sweep.driver.sweep_overrides), so every
run of a sweep shares one cycle length and is scored on one table.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field

from nanodna.errors import UserError
from nanodna.overrides import load_python_config


class SweepConfigError(UserError):
    """A sweep config file that cannot be used (missing, malformed or inconsistent)."""


@dataclass(frozen=True)
class Run:
    name: str  # the run's folder under OUT/runs/ and its label in results.tsv
    arch: str  # the architecture label plots group by, e.g. "caduceus-ps"
    config: str  # base training config, relative to the repository root or absolute
    overrides: tuple[str, ...] = ()  # train.py key=value overrides (the size, the recipe)


@dataclass(frozen=True)
class SweepConfig:
    runs: tuple[Run, ...]
    cycle_steps: int  # WSD-S cycle length C; every cycle ends in a decay (a hot/cold pair)
    cycles: int  # cycles per run: train.steps = cycles * cycle_steps
    table: str  # the conservation table every checkpoint is scored on (eval.py --data)
    decay_fraction: float = 0.2  # T_d = int(decay_fraction * C) decaying steps per cycle
    max_rows: int | None = None  # score only the table's first rows (None: all of them)
    bootstrap: int = 1000  # eval.py's bootstrap resamples for the 95% AUC / AUPRC intervals
    eval_batch_size: int = 64  # windows per forward pass in eval.py
    # "subprocess": each checkpoint is `python eval.py ...`; "inprocess": the same argv is
    # passed to eval.py's main() in this process (no interpreter start-up or re-compilation
    # per checkpoint; same contract).
    evaluator: str = "subprocess"
    reference_arch: str = "caduceus-ps"  # parity is measured against this architecture
    target_margin: float = 0.01  # target AUC = best reference AUC of the sweep - this
    target_auc: float | None = None  # a fixed target instead of the rule above
    fit_labels: tuple[str, ...] = ("cold",)  # which checkpoints the AUC-vs-FLOPs trend is fit to
    trend_bootstrap: int = 500  # resamples of the checkpoints for the trend band and the ratio
    seed: int = 0  # seed of the trend bootstrap
    extra_overrides: tuple[str, ...] = field(default=())  # appended to every run's overrides

    def __post_init__(self):
        if not self.runs:
            raise SweepConfigError("a sweep needs at least one run")
        names = [r.name for r in self.runs]
        if len(set(names)) != len(names):
            raise SweepConfigError(f"run names must be unique, got {names}")
        if self.cycle_steps <= 0 or self.cycles <= 0:
            raise SweepConfigError("cycle_steps and cycles must be > 0")
        if self.decay_steps < 1:
            raise SweepConfigError(
                f"decay_fraction {self.decay_fraction} x cycle_steps {self.cycle_steps} leaves "
                "no decaying step: every cycle must end in a cooldown")
        if self.evaluator not in ("subprocess", "inprocess"):
            raise SweepConfigError(f"evaluator must be 'subprocess' or 'inprocess', "
                                   f"got {self.evaluator!r}")

    @property
    def decay_steps(self) -> int:
        """T_d, as nanodna.training.schedules.decay_steps computes it for WSD-S."""
        return int(self.decay_fraction * self.cycle_steps)

    @property
    def steps(self) -> int:
        return self.cycles * self.cycle_steps

    @property
    def eval_every(self) -> int:
        """The evaluation cadence that lands on every hot (k*C - T_d) and cold (k*C) step."""
        return math.gcd(self.cycle_steps, self.decay_steps)

    def hot_cold_steps(self) -> list[tuple[int, int]]:
        """(hot, cold) pairs, as nanodna.training.schedules.hot_cold_steps places them."""
        C, T_d = self.cycle_steps, self.decay_steps
        return [(k * C - T_d, k * C) for k in range(1, self.cycles + 1)]


def load_sweep(path: str) -> SweepConfig:
    """Execute a sweep config file and return its `get_sweep()` (else SweepConfigError)."""
    return load_python_config(path, "get_sweep", SweepConfig, SweepConfigError)


def substitute(sweep: SweepConfig, out: str) -> SweepConfig:
    """Replace `{out}` in the table path and overrides by the sweep's output folder (so that a
    sweep can keep its own simulated data set inside OUT)."""
    out = os.path.abspath(out)
    runs = tuple(dataclasses.replace(r, overrides=tuple(o.replace("{out}", out)
                                                        for o in r.overrides))
                 for r in sweep.runs)
    return dataclasses.replace(
        sweep, runs=runs, table=sweep.table.replace("{out}", out),
        extra_overrides=tuple(o.replace("{out}", out) for o in sweep.extra_overrides))
