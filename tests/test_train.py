"""The training loop end to end: metrics.jsonl, exact resume, SIGTERM, NaN, time budget, CLI."""

import dataclasses
import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nanodna.checkpoint import load_model
from nanodna.config import Config, EvalConfig, OptimConfig, TrainConfig
from nanodna.sim.simulate import simulate
from nanodna.training import loop
from nanodna.training.schedules import StepBudget
from tests._fakes import FakeIterator, TinyConfig, build_tiny

ROOT = os.path.join(os.path.dirname(__file__), "..")


@dataclasses.dataclass
class FakeDataConfig:
    batch_size: int = 8
    seq_len: int = 16


def _cfg(steps=6, **train) -> Config:
    return Config(
        model=TinyConfig(),
        data=FakeDataConfig(),
        optim=OptimConfig(lr=1e-2, schedule="wsds", warmup_steps=1, cycle_steps=3,
                          decay_fraction=0.34),
        train=TrainConfig(steps=steps, log_every=1, checkpoint_every=2, progress=False,
                          tensorboard=False, **train),
        eval=EvalConfig(every=0, val_batches=2, at_end=True),
    )


def _train(cfg, workdir, it_factory=None, **kw):
    return loop.train(
        cfg, str(workdir), build=build_tiny(),
        train_iter=it_factory or (lambda c: FakeIterator(seed=11)),
        eval_iter=lambda c: FakeIterator(seed=99), evaluate_table=None, **kw)


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_metrics_jsonl_and_checkpoints(tmp_path):
    summary = _train(_cfg(steps=6), tmp_path)
    rows = _rows(tmp_path)
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == list(range(1, 7))
    assert {"step", "loss", "lr", "grad_norm", "tokens_per_s"} <= set(train_rows[0])
    assert train_rows[0]["lr"] == 0.0  # warmup starts at 0
    eval_rows = [r for r in rows if "eval/val_loss" in r]
    assert len(eval_rows) == 1 and np.isfinite(eval_rows[0]["eval/val_loss"])
    assert summary["step"] == 6 and summary["stopped"] == "done"
    # WSD-S with C=3, T_d=1: hot/cold pairs (2, 3) and (5, 6), all kept and labelled.
    with open(tmp_path / "checkpoints" / "labels.json") as f:
        assert json.load(f) == {"2": "hot", "3": "cold", "5": "hot", "6": "cold"}
    assert json.load(open(tmp_path / "config.json"))["optim"]["schedule"] == "wsds"


def test_resume_is_exact(tmp_path):
    straight = _train(_cfg(steps=6), tmp_path / "a")
    _train(_cfg(steps=4), tmp_path / "b")  # stop at 4 (a checkpoint step) ...
    resumed = _train(_cfg(steps=6), tmp_path / "b")  # ... and continue to 6 in the same workdir
    losses = lambda d: [(r["step"], r["loss"]) for r in _rows(d) if "loss" in r]  # noqa: E731
    assert losses(tmp_path / "b") == losses(tmp_path / "a")
    assert resumed["loss"] == straight["loss"]


class _SignalAt(FakeIterator):
    """Sends SIGTERM to this process while producing batch `at` (like a scheduler would)."""

    def __init__(self, at, **kw):
        super().__init__(seed=11, **kw)
        self.at = at

    def __next__(self):
        if self.index == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().__next__()


def test_sigterm_saves_and_exits_cleanly(tmp_path):
    previous = signal.getsignal(signal.SIGTERM)
    summary = _train(_cfg(steps=50), tmp_path, it_factory=lambda c: _SignalAt(at=4))
    assert summary["stopped"] == "signal"
    assert summary["step"] == 5  # the step in flight when the signal came is finished
    assert os.path.isdir(tmp_path / "checkpoints" / "5")
    assert signal.getsignal(signal.SIGTERM) is previous  # handler restored


class _NanAt(FakeIterator):
    def __init__(self, at):
        super().__init__(seed=11)
        self.at = at

    def __next__(self):
        batch = super().__next__()
        if self.index == self.at:
            batch = batch._replace(weights_BL=batch.weights_BL * np.float32("nan"))
        return batch


def test_nan_loss_stops_with_step_number(tmp_path):
    with pytest.raises(loop.NonFiniteLoss, match="step 3"):
        _train(_cfg(steps=10), tmp_path, it_factory=lambda c: _NanAt(at=3))


def test_time_budget_stops_with_final_eval_and_checkpoint(tmp_path):
    summary = _train(_cfg(steps=10_000, max_minutes=0.0), tmp_path)
    assert summary["stopped"] == "time"
    # max_minutes=0 stops before the first step: nothing to save, nothing trained.
    assert summary["step"] == 0
    summary = _train(_cfg(steps=10_000, max_minutes=1e-9), tmp_path / "b")
    assert summary["stopped"] == "time"


# ---------------------------------------------------------------------------------------------
# The command line, with the real model, data stream and evaluation on a tiny simulated set


@pytest.fixture(scope="module")
def tiny_sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "tiny"
    simulate(str(out), seed=1, preset="demo", progress=False, n_species=3, genome_length=20_000)
    return out


def _run_train(*args):
    # One CPU device, and the tests' persistent compilation cache (faster reruns).
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "",
           "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir or ""}
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "train.py"), "--config",
         os.path.join(ROOT, "configs", "demo.py"), *map(str, args)],
        capture_output=True, text=True, env=env, timeout=240, cwd=ROOT)


def test_cli_end_to_end_and_load_model(tmp_path, tiny_sim):
    workdir = tmp_path / "run"
    overrides = [
        f"simulate.dir={tiny_sim}", "model.d_model=16", "model.n_layers=1", "model.max_len=32",
        "data.seq_len=32", "data.batch_size=8", "data.holdout_assemblies=['sim02']",
        "data.eval_windows=16", "train.steps=4", "optim.warmup_steps=1",
        "train.checkpoint_every=2", "train.log_every=1", "eval.every=0", "eval.val_batches=1",
        "eval.max_rows=32", "eval.batch_size=16", "train.progress=False",
    ]
    proc = _run_train("--workdir", workdir, *overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "parameters" in proc.stdout and "optim.lr = " in proc.stdout

    rows = _rows(workdir)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    final = [r for r in rows if "eval/roc_auc" in r]
    assert final and 0.0 <= final[-1]["eval/roc_auc"] <= 1.0 and final[-1]["eval/n"] == 32
    assert np.isfinite(final[-1]["eval/val_loss"])

    model, cfg, step = load_model(str(workdir))
    assert step == 4 and cfg.train.steps == 4 and cfg.model.d_model == 16
    tokens = jax.random.randint(jax.random.key(0), (2, 32), 3, 7)
    logits = model(tokens)
    assert logits.shape == (2, 32, 8) and bool(jnp.all(jnp.isfinite(logits)))
    # A step folder loads that step's weights, which differ from the latest ones.
    model2, _, step2 = load_model(str(workdir / "checkpoints" / "2"))
    assert step2 == 2
    assert not np.allclose(np.asarray(model2(tokens)), np.asarray(logits))

    # A bad override is one line on stderr, exit code 2, no traceback.
    bad = _run_train("optim.lrr=1")
    assert bad.returncode == 2 and "optim.lrr" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("table", ["missing.tsv", "bad.tsv"])
def test_cli_bad_eval_table_fails_before_the_first_step(tmp_path, tiny_sim, table):
    (tmp_path / "bad.tsv").write_text("sequence\tlabel\nACGTACGT\t1\nACGTACGT\t7\n")
    workdir = tmp_path / "run"
    proc = _run_train("--workdir", workdir, "simulate.preset=None",
                      f"data.store_dirs=['{tiny_sim / 'store'}']", f"eval.table={tmp_path / table}",
                      "train.steps=2", "train.progress=False")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: ") and proc.stderr.strip().count("\n") == 0
    assert table in proc.stderr and "Traceback" not in proc.stderr
    assert not (workdir / "metrics.jsonl").exists()  # no step was trained


def test_step_budget_fits_wsd_run_to_the_time_left():
    cfg = _cfg(steps=10_000, max_minutes=1.0)
    cfg = dataclasses.replace(cfg, optim=OptimConfig(schedule="wsd", warmup_steps=10,
                                                     decay_fraction=0.2))
    budget = StepBudget(cfg, total=10_000)
    budget.eval_s = 5.0
    t_start = 100.0
    assert not budget.fit(1, now=t_start + 10.0, t_start=t_start)  # starts the clock
    # 50 steps in 5 s: 0.1 s a step; 60 - 15 elapsed - 5 for the eval = 40 s left: 400 steps.
    assert budget.fit(51, now=t_start + 15.0, t_start=t_start)
    assert budget.total == 51 + 400
    # Once the decay has begun (last 20% of 451 steps), the length no longer moves.
    assert not budget.fit(400, now=t_start + 50.0, t_start=t_start)
    assert budget.total == 451
    # Not a WSD run, or no budget: never refitted.
    off = StepBudget(_cfg(steps=100, max_minutes=1.0), total=100)  # wsds
    assert not off.active
