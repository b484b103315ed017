"""The sweep: its trend / parity maths on synthetic curves with known answers, the WSD-S
cadence it imposes against the real schedule, and the smoke sweep end to end (train, score,
plot, rerun)."""

import dataclasses
import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from nanodna.sweep import fit
from nanodna.sweep.config import Run, SweepConfig, SweepConfigError, load_sweep
from nanodna.sweep.driver import COLUMNS, read_results
from nanodna.sweep.plot import analyse, hot_cold_gaps

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _curve(a, b, c, C):
    return a - b * C ** (-c)


# ---------------------------------------------------------------------------------------------
# The maths


def test_fit_recovers_a_known_saturating_curve_and_its_reach():
    rng = np.random.default_rng(0)
    a, b, c = 0.78, rng.uniform(5.0, 20.0), fit.C_GRID[70]  # c on the fit's grid: exact model
    C = np.logspace(9, 13, 9)
    t = fit.fit_trend(C, _curve(a, b, c, C))
    grid = np.logspace(8, 14, 50)
    np.testing.assert_allclose(t(grid), _curve(a, b, c, grid), rtol=0, atol=1e-9)
    target = 0.75
    assert t.flops_to_reach(target) == pytest.approx((b / (a - target)) ** (1 / c), rel=1e-6)
    assert t.flops_to_reach(a + 0.01) == math.inf  # above the ceiling: never
    # A c between grid points is still fitted closely.
    t2 = fit.fit_trend(C, _curve(a, b, 0.37, C))
    assert np.max(np.abs(t2(C) - _curve(a, b, 0.37, C))) < 2e-3


def test_fit_needs_three_compute_values_and_keeps_b_nonnegative():
    with pytest.raises(ValueError):
        fit.fit_trend([1e9, 1e10, 1e10], [0.6, 0.7, 0.71])
    falling = fit.fit_trend([1e9, 1e10, 1e11, 1e12], [0.7, 0.68, 0.66, 0.65])
    assert falling.b == 0.0 and falling.a == pytest.approx(np.mean([0.7, 0.68, 0.66, 0.65]))
    assert falling.flops_to_reach(0.9) == math.inf
    assert falling.flops_to_reach(0.5) == 0.0  # flat and above the target at any compute


def test_parity_ratio_of_a_curve_shifted_in_compute():
    """other(C) = ref(C / k) needs exactly k times the compute for any target."""
    rng = np.random.default_rng(1)
    k = rng.uniform(2.0, 20.0)
    a, b, c = 0.8, 12.0, fit.C_GRID[60]
    ref_C = np.logspace(9, 12, 8)
    oth_C = np.logspace(9.5, 13.5, 8)
    target = 0.76
    p = fit.parity_ratio(ref_C, _curve(a, b, c, ref_C), oth_C, _curve(a, b, c, oth_C / k),
                         target, n=200, seed=0)
    assert p.ratio == pytest.approx(k, rel=1e-6)
    assert p.ci[0] == pytest.approx(k, rel=1e-4) and p.ci[1] == pytest.approx(k, rel=1e-4)
    assert p.reached_fraction == 1.0
    # With noise the interval widens and still holds the true ratio.
    noisy = fit.parity_ratio(ref_C, _curve(a, b, c, ref_C) + rng.normal(0, 2e-3, 8), oth_C,
                             _curve(a, b, c, oth_C / k) + rng.normal(0, 2e-3, 8), target,
                             n=300, seed=0)
    assert noisy.ci[0] < k < noisy.ci[1] and noisy.ci[0] < noisy.ci[1]


def _rows(arch, C, auc, label="cold"):
    return [{"run": arch, "arch": arch, "label": label, "flops": float(x), "roc_auc": float(y),
             "step": i + 1} for i, (x, y) in enumerate(zip(C, auc))]


SETTINGS = {"reference_arch": "ref", "target_margin": 0.01, "target_auc": None,
            "fit_labels": ["cold"], "trend_bootstrap": 100, "seed": 0}


def test_analyse_target_rule_and_parity_not_reached():
    C = np.logspace(9, 12, 6)
    ref = _curve(0.8, 12.0, 0.3, C)
    low = _curve(0.7, 12.0, 0.3, C)  # saturates 0.1 below the reference
    results, _ = analyse(_rows("ref", C, ref) + _rows("low", C, low), SETTINGS)
    assert results["target_auc"] == pytest.approx(ref.max() - 0.01)
    p = results["parity"]["low"]
    assert p["reached"] is False and p["ratio"] is None and "not reached" in p["statement"]
    assert results["architectures"]["low"]["flops_to_target_observed"] is None
    assert results["architectures"]["ref"]["flops_to_target_observed"] == pytest.approx(
        C[ref >= results["target_auc"]].min())
    json.dumps(results)  # JSON-safe (no inf / NaN)
    # A reference that does not improve with compute gives no ratio, and says so.
    flat = np.full_like(C, 0.6) + np.linspace(0.002, -0.002, len(C))
    results, _ = analyse(_rows("ref", C, flat) + _rows("low", C, low), SETTINGS)
    assert results["parity"]["low"]["ratio"] is None
    assert results["parity"]["low"]["statement"].startswith("no ratio")


def test_analyse_says_when_a_flat_trend_sits_above_the_target():
    """A trend flat at or above the target at every compute gives ratio 0, and the statement
    says so rather than '0x the training FLOPs'."""
    C = np.logspace(9, 12, 6)
    ref = _curve(0.6, 0.05, 0.3, C)
    flat_high = np.full_like(C, ref.max() + 0.02)
    results, _ = analyse(_rows("ref", C, ref) + _rows("flat", C, flat_high), SETTINGS)
    p = results["parity"]["flat"]
    assert p["ratio"] == 0 and p["reached"] is True
    assert "needs no compute" in p["statement"] and "0x" not in p["statement"]
    json.dumps(results)


def test_analyse_flags_a_target_at_chance_level():
    C = np.logspace(9, 12, 6)
    ref, low = _curve(0.56, 0.05, 0.3, C), _curve(0.55, 0.05, 0.3, C / 3)

    def with_ci(rows, half):
        return [{**r, "roc_auc_lo": r["roc_auc"] - half, "roc_auc_hi": r["roc_auc"] + half}
                for r in rows]

    wide = with_ci(_rows("ref", C, ref), 0.08) + with_ci(_rows("low", C, low), 0.08)
    results, _ = analyse(wide, SETTINGS)
    assert results["target_above_chance"] is False
    assert results["parity"]["low"]["statement"].startswith("not meaningful")
    narrow = with_ci(_rows("ref", C, ref), 0.02) + with_ci(_rows("low", C, low), 0.02)
    results, _ = analyse(narrow, SETTINGS)
    assert results["target_above_chance"] is True
    assert not results["parity"]["low"]["statement"].startswith("not meaningful")
    json.dumps(results)


def test_first_reached():
    assert fit.first_reached([3e9, 1e9, 2e9], [0.7, 0.5, 0.71], 0.7) == 2e9
    assert fit.first_reached([1e9], [0.5], 0.7) == math.inf


def test_hot_cold_gap_on_a_synthetic_loss_curve(tmp_path):
    # C = 10, T_d = 2: main-branch evals at s % 10 in 1..8; hot 8 / 18, cold 10 / 20.
    losses = {2: 2.0, 4: 1.9, 6: 1.8, 8: 1.7, 10: 1.5, 12: 1.6, 14: 1.55, 16: 1.45, 18: 1.4,
              20: 1.3}
    os.makedirs(tmp_path / "runs" / "r")
    with open(tmp_path / "runs" / "r" / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps({"step": s, "eval/val_loss": v}) + "\n" for s, v in losses.items())
    gaps = hot_cold_gaps(str(tmp_path), "r", 10, 2, tokens_per_step=100.0)
    assert [(g["hot_step"], g["cold_step"]) for g in gaps] == [(8, 10), (18, 20)]
    assert gaps[0]["delta"] == pytest.approx(0.2)
    # Cold loss 1.5 is crossed between 14 (1.55) and 16 (1.45): at 15, 5 steps after 10.
    assert gaps[0]["gap_steps"] == pytest.approx(5.0)
    assert gaps[0]["gap_tokens"] == pytest.approx(500.0) and not gaps[0]["gap_is_upper_bound"]
    assert gaps[1]["gap_steps"] is None  # no main-branch evaluation after step 20
    # Matched at once (first evaluation after the cold one): the bound, flagged.
    with open(tmp_path / "runs" / "r" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 22, "eval/val_loss": 1.25}) + "\n")
    gaps = hot_cold_gaps(str(tmp_path), "r", 10, 2, tokens_per_step=100.0)
    assert gaps[1]["gap_steps"] == 2 and gaps[1]["gap_is_upper_bound"]


# ---------------------------------------------------------------------------------------------
# The schedule the sweep imposes, against nanodna's own WSD-S


@pytest.mark.parametrize("C,d,cycles", [(10, 0.2, 3), (50, 0.1, 2), (64, 0.25, 4), (30, 0.15, 2)])
def test_eval_cadence_lands_on_every_hot_and_cold_step(C, d, cycles):
    from nanodna.config import Config, OptimConfig, TrainConfig
    from nanodna.training.schedules import hot_cold_steps

    sweep = SweepConfig(runs=(Run("r", "a", "x.py"),), cycle_steps=C, cycles=cycles,
                        decay_fraction=d, table="t.tsv")
    cfg = Config(model=None, data=None, train=TrainConfig(steps=sweep.steps),
                 optim=OptimConfig(schedule="wsds", cycle_steps=C, decay_fraction=d,
                                   warmup_steps=1))
    assert sweep.hot_cold_steps() == hot_cold_steps(cfg)
    for hot, cold in sweep.hot_cold_steps():
        assert hot % sweep.eval_every == 0 and cold % sweep.eval_every == 0 and hot < cold


def test_sweep_config_rejects_cycles_without_cooldown():
    with pytest.raises(SweepConfigError):
        SweepConfig(runs=(Run("r", "a", "x.py"),), cycle_steps=4, cycles=2, decay_fraction=0.1,
                    table="t")
    with pytest.raises(SweepConfigError):
        SweepConfig(runs=(Run("r", "a", "x.py"), Run("r", "b", "y.py")), cycle_steps=10,
                    cycles=2, table="t")


@pytest.mark.parametrize("name", ["smoke", "cpu", "arabidopsis", "gpu_large"])
def test_sweep_configs_load_and_their_overrides_apply(name):
    from nanodna.config import apply_overrides, load_config
    from nanodna.sweep.driver import sweep_overrides

    sweep = load_sweep(os.path.join(ROOT, "configs", "sweeps", f"{name}.py"))
    for run in sweep.runs:
        cfg = apply_overrides(load_config(os.path.join(ROOT, run.config)),
                              sweep_overrides(sweep, run))
        assert cfg.optim.schedule == "wsds" and cfg.train.steps == sweep.steps
        assert cfg.optim.warmup_steps + sweep.decay_steps <= sweep.cycle_steps


# ---------------------------------------------------------------------------------------------
# The smoke sweep, end to end


def test_smoke_sweep_end_to_end_and_rerun_skips(tmp_path):
    out = tmp_path / "sweep"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "",
           "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir or ""}
    cmd = [sys.executable, "-m", "nanodna.sweep", "--config",
           os.path.join(ROOT, "configs", "sweeps", "smoke.py"), "--out", str(out)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=1200, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]

    sweep = load_sweep(os.path.join(ROOT, "configs", "sweeps", "smoke.py"))
    rows = read_results(str(out))
    expected = {(run.name, s, lab) for run in sweep.runs for pair in sweep.hot_cold_steps()
                for s, lab in zip(pair, ("hot", "cold"))}
    assert {(r["run"], r["step"], r["label"]) for r in rows} == expected
    assert len(rows) == len(expected)
    for r in rows:
        assert 0.0 <= r["roc_auc_lo"] <= r["roc_auc"] <= r["roc_auc_hi"] <= 1.0
        assert np.isfinite(r["val_loss"]) and r["flops"] > 0 and r["flops_6nd"] > 0
        assert r["tokens"] == r["step"] * 8 * 64 and r["n"] == sweep.max_rows
        assert 0 < r["nonembed_params"] < r["params"] and r["wall_s"] > 0
    with open(out / "results.tsv") as f:
        assert f.readline().rstrip("\n").split("\t") == list(COLUMNS)

    results = json.loads((out / "results.json").read_text())
    assert results["reference_arch"] == "caduceus-ps"
    ref_best = max(r["roc_auc"] for r in rows if r["arch"] == "caduceus-ps")
    assert results["target_auc"] == pytest.approx(ref_best - 0.01, abs=1e-5)
    parity = results["parity"]["transformer-clm"]
    assert set(parity) >= {"ratio", "ci", "reached", "statement"}
    assert len(results["hot_cold"]) == len(sweep.runs) * sweep.cycles
    for png in ("auc_vs_flops.png", "loss_vs_auc.png", "hot_cold.png"):
        assert (out / png).stat().st_size > 1000

    # Rerun after losing the last results row (as if killed after scoring it): nothing is
    # trained or scored again, the row comes back from eval.py's results.json.
    lines = (out / "results.tsv").read_text().splitlines(keepends=True)
    (out / "results.tsv").write_text("".join(lines[:-1]))
    watched = [out / "runs" / run.name / "metrics.jsonl" for run in sweep.runs]
    watched += list(out.glob("runs/*/eval/*/results.json"))
    mtimes = [p.stat().st_mtime_ns for p in watched]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p.stat().st_mtime_ns for p in watched] == mtimes
    assert (out / "results.tsv").read_text().splitlines(keepends=True) == lines
    assert "already trained" in proc.stdout + proc.stderr


def test_rerun_with_other_scoring_settings_is_refused(tmp_path):
    from nanodna.sweep import driver

    sweep = SweepConfig(runs=(Run("r", "a", "x.py"),), cycle_steps=10, cycles=2, table="t.tsv")
    driver._write_sweep_json(sweep, str(tmp_path))
    driver.append_result(str(tmp_path), {"run": "r", "arch": "a", "step": 8, "label": "hot"})
    driver._write_sweep_json(sweep, str(tmp_path))  # same settings: fine
    with pytest.raises(driver.SweepError, match="table"):
        driver._write_sweep_json(dataclasses.replace(sweep, table="other.tsv"), str(tmp_path))
