"""Learning-rate schedules: constant-with-warmup, cosine, WSD and WSD-S.

A schedule maps the step t (the number of updates already made, 0-based) to a learning rate.
It runs on the host, in plain Python, and the train step takes the rate as an input: so the
loop can refit a schedule to a wall-clock budget (train.max_minutes) without recompiling.

WSD-S (Wen et al. 2024) follows Levanter's per-cycle recipe. Training is cut into cycles of C
steps. Cycle 0 starts with a linear warmup 0 -> eta; every cycle holds eta, then decays over its
last T_d = int(d * C) steps towards eta_min = min_lr_ratio * eta; the next cycle restarts at eta
with no rewarmup. The state just before a decay ("hot") continues the main branch; the state at
the end of a decay ("cold") is the one worth evaluating. WSD is WSD-S with a single cycle spanning
the whole run.

Decay shapes, with s in [0, T_d) counted from the start of the decay:
    linear  eta + (eta_min - eta) * s / T_d
    cosine  eta_min + (eta - eta_min) * (1 + cos(pi * s / T_d)) / 2
    inv     max(eta / (1 + (eta / eta_min - 1) * s / T_d), eta_min)

`StepBudget` fits a WSD run's length to a wall-clock budget (train.max_minutes).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from nanodna.config import Config, ConfigError, OptimConfig

Schedule = Callable[[int], float]


def _decay(s: int | float, T_d: int, eta: float, eta_min: float, shape: str) -> float:
    frac = min(max(s / max(T_d, 1), 0.0), 1.0)
    if shape == "linear":
        return eta + (eta_min - eta) * frac
    if shape == "cosine":
        return eta_min + (eta - eta_min) * 0.5 * (1.0 + math.cos(math.pi * frac))
    if shape == "inv":
        return max(eta / (1.0 + (eta / eta_min - 1.0) * frac), eta_min)
    raise ConfigError(f"optim.decay_shape: unknown decay shape '{shape}'")


def _cycle(cfg: OptimConfig, total_steps: int) -> int:
    """Cycle length: the whole run for WSD, cycle_steps for WSD-S."""
    if cfg.schedule == "wsd":
        return total_steps
    if cfg.cycle_steps <= 0:
        raise ConfigError("optim.cycle_steps must be > 0 for the 'wsds' schedule")
    return cfg.cycle_steps


def decay_steps(cfg: OptimConfig, total_steps: int) -> int:
    """T_d: the number of decaying steps at the end of each (WSD / WSD-S) cycle."""
    return int(cfg.decay_fraction * _cycle(cfg, total_steps))


def make_schedule(cfg: OptimConfig, total_steps: int) -> Schedule:
    """The learning rate as a function of the step, for the schedule named in `cfg.schedule`."""
    eta, eta_min, W = cfg.lr, cfg.lr * cfg.min_lr_ratio, cfg.warmup_steps
    if cfg.schedule not in ("constant", "cosine", "wsd", "wsds"):
        raise ConfigError(f"optim.schedule: unknown schedule '{cfg.schedule}'")
    if cfg.schedule in ("wsd", "wsds"):
        C, T_d = _cycle(cfg, total_steps), decay_steps(cfg, total_steps)
        if W + T_d > C:
            cycle = "train.steps" if cfg.schedule == "wsd" else "optim.cycle_steps"
            raise ConfigError(
                f"optim: warmup ({W}) + decay ({T_d}) steps exceed the cycle length ({C}, "
                f"{cycle}): lower optim.warmup_steps or optim.decay_fraction, or raise {cycle}"
            )
    _decay(0, 1, eta, eta_min, cfg.decay_shape)  # fail now on a bad shape, not at the decay

    def schedule(t: int) -> float:
        if t < W:  # linear warmup from 0; WSD-S warms up in its first cycle only
            return eta * t / W
        if cfg.schedule == "constant":
            return eta
        if cfg.schedule == "cosine":
            return _decay(t - W, max(total_steps - W, 1), eta, eta_min, "cosine")
        # WSD / WSD-S. After the last WSD step the rate stays at its floor; WSD-S cycles repeat.
        tau = t % C if cfg.schedule == "wsds" else t
        if tau < C - T_d:
            return eta
        return _decay(tau - (C - T_d), T_d, eta, eta_min, cfg.decay_shape)

    return schedule


def hot_cold_steps(cfg: Config, total_steps: int | None = None) -> list[tuple[int, int]]:
    """(hot, cold) step pairs within the run: the state before each decay and at its end.

    Step s here means "after s updates", i.e. the checkpoint saved when s steps are done.
    Empty for schedules without decays. `total_steps` defaults to train.steps.
    """
    optim, total = cfg.optim, total_steps or cfg.train.steps
    if optim.schedule not in ("wsd", "wsds"):
        return []
    C, T_d = _cycle(optim, total), decay_steps(optim, total)
    return [(end - T_d, end) for end in range(C, total + 1, C)]


class StepBudget:
    """The run's length in steps, fitted once to train.max_minutes from the measured speed.

    A time-budgeted run that simply stopped would end at the peak learning rate, without the
    decay that makes WSD's final model good. So, after `timed_steps` steps timed past the first
    (compiling) one, the number of steps is estimated from the measured speed and the time the
    final evaluation needs (`eval_s`, seconds; the loop sets it after each evaluation), once:
    the loop stores it (workdir/schedule.json) and a resumed run continues that schedule
    instead of refitting to its own speed, so kill-and-resume gives the same losses. The fitted
    decay always starts after the step at which it is fitted: the learning rates already used
    (warmup, stable) are those of the fitted schedule too. Active only with train.max_minutes,
    train.fit_schedule_to_budget and the "wsd" schedule.
    """

    timed_steps = 20

    def __init__(self, cfg: Config, total: int):
        self.cfg, self.total = cfg, total
        self.active = (cfg.train.max_minutes is not None and cfg.train.fit_schedule_to_budget
                       and cfg.optim.schedule == "wsd")
        self.t0 = self.step0 = None  # when timing started (after the first, compiling, step)
        self.eval_s = 0.1 * 60 * (cfg.train.max_minutes or 0)  # until an eval has been timed

    def fit(self, step: int, now: float, t_start: float) -> bool:
        """Fit the length at `step` (times in seconds) once; True when it was fitted now
        (the loop then records `total`, changed or not, for resumed runs)."""
        if not self.active:
            return False
        if self.t0 is None:
            self.t0, self.step0 = now, step
            return False
        if step - self.step0 < self.timed_steps:
            return False
        self.active = False  # fitted once, for good
        optim = self.cfg.optim
        if step >= self.total - decay_steps(optim, self.total):  # already decaying: keep it
            return True
        per_step = (now - self.t0) / (step - self.step0)
        left = 60 * self.cfg.train.max_minutes - (now - t_start) - self.eval_s
        total = min(self.cfg.train.steps, max(step + 1, step + int(left / per_step)))
        # Never shorter than warmup + decay (W + int(d * T) <= T), and the decay starts after
        # `step` (T - int(d * T) > step). The hard time limit ends a run whose budget cannot
        # hold even that.
        floor = max(optim.warmup_steps, step + 1) / (1 - optim.decay_fraction)
        total = max(total, math.ceil(floor) + 1)
        while total - decay_steps(optim, total) <= step:  # int() round-off
            total += 1
        self.total = min(total, self.cfg.train.steps)
        return True
