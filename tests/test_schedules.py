"""Learning-rate schedules against formulas written out here, and WSD-S hot/cold steps."""

import dataclasses
import math

import numpy as np
import pytest

from nanodna.config import Config, ConfigError, OptimConfig, TrainConfig
from nanodna.training.schedules import hot_cold_steps, make_schedule


def _levanter_wsds(t, eta, C, w, d, shape):
    """WSD-S per REFERENCE.md, as a plain loop-free Python function of the step t."""
    eta_min = 0.1 * eta
    W, T_d = int(w * C), int(d * C)
    cycle, tau = divmod(t, C)
    if cycle == 0 and tau < W:
        return eta * tau / W
    if tau < C - T_d:
        return eta
    s = tau - (C - T_d)
    if shape == "inv":
        return max(eta / (1 + (eta / eta_min - 1) * s / T_d), eta_min)
    if shape == "linear":
        return eta + (eta_min - eta) * s / T_d
    return eta_min + (eta - eta_min) * 0.5 * (1 + math.cos(math.pi * s / T_d))


@pytest.mark.parametrize("shape", ["inv", "linear", "cosine"])
def test_wsds_matches_levanter_formula(shape):
    rng = np.random.default_rng()
    eta = float(rng.uniform(1e-4, 1e-2))
    C, w, d = int(rng.integers(40, 80)), 0.1, 0.25
    cfg = OptimConfig(lr=eta, schedule="wsds", warmup_steps=int(w * C), cycle_steps=C,
                      decay_fraction=d, decay_shape=shape, min_lr_ratio=0.1)
    sched = make_schedule(cfg, total_steps=4 * C)
    got = [float(sched(t)) for t in range(4 * C)]
    want = [_levanter_wsds(t, eta, C, w, d, shape) for t in range(4 * C)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
    # No rewarmup: the first step of cycle 1 is back at the top lr.
    assert got[C] == pytest.approx(eta)


def test_constant_cosine_and_wsd():
    eta, T = 3e-3, 100
    const = make_schedule(OptimConfig(lr=eta, schedule="constant", warmup_steps=10), T)
    assert float(const(0)) == 0.0 and float(const(5)) == pytest.approx(eta / 2)
    assert float(const(10)) == pytest.approx(eta) and float(const(10_000)) == pytest.approx(eta)
    cos = make_schedule(OptimConfig(lr=eta, schedule="cosine", warmup_steps=10), T)
    assert float(cos(10)) == pytest.approx(eta)
    assert float(cos(55)) == pytest.approx(0.55 * eta, rel=1e-4)  # halfway: mean of eta, eta/10
    assert float(cos(T)) == pytest.approx(0.1 * eta)
    wsd = make_schedule(OptimConfig(lr=eta, schedule="wsd", warmup_steps=10,
                                    decay_fraction=0.2), T)
    lrs = np.array([float(wsd(t)) for t in range(T + 20)])
    assert np.all(lrs[10:80] == pytest.approx(eta))
    assert np.all(np.diff(lrs[80:100]) < 0)  # decaying over the last 20 steps
    assert lrs[100:] == pytest.approx(0.1 * eta)  # and staying at the floor after the run


def test_hot_cold_steps():
    base = Config(model=None, data=None,
                  optim=OptimConfig(schedule="wsds", cycle_steps=1000, decay_fraction=0.1,
                                    warmup_steps=10),
                  train=TrainConfig(steps=3500))
    assert hot_cold_steps(base) == [(900, 1000), (1900, 2000), (2900, 3000)]
    wsd = dataclasses.replace(base, optim=dataclasses.replace(base.optim, schedule="wsd"))
    assert hot_cold_steps(wsd) == [(3150, 3500)]
    const = dataclasses.replace(base, optim=OptimConfig(schedule="constant"))
    assert hot_cold_steps(const) == []


def test_bad_schedule_settings_are_config_errors():
    with pytest.raises(ConfigError, match="cycle_steps"):
        make_schedule(OptimConfig(schedule="wsds", cycle_steps=0), 100)
    with pytest.raises(ConfigError, match=r"exceed .* \(100, train.steps\): lower optim.warmup"):
        make_schedule(OptimConfig(schedule="wsd", warmup_steps=95, decay_fraction=0.1), 100)
    with pytest.raises(ConfigError, match=r"or raise optim.cycle_steps"):
        make_schedule(OptimConfig(schedule="wsds", warmup_steps=10, cycle_steps=10), 100)
