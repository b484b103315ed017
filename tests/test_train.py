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

from nanodna.checkpoint import load_model, saved_steps
from nanodna.config import Config, ConfigError, EvalConfig, OptimConfig, TrainConfig
from nanodna.models.rcps import rc_logits
from nanodna.sim.simulate import simulate
from nanodna.tokenizer import reverse_complement
from nanodna.training import loop, memory, progress
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


def test_a_schedule_longer_than_the_run_fails_before_building_anything(tmp_path):
    """WSD with 5 warmup + 3 decay steps cannot fit 6 steps: a ConfigError before the model is
    built or compiled and before the workdir exists (it used to come after compiling)."""
    cfg = _cfg(steps=6)
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(
        cfg.optim, schedule="wsd", warmup_steps=5, decay_fraction=0.5))
    built = []
    with pytest.raises(ConfigError, match=r"warmup \(5\) \+ decay \(3\)"):
        loop.train(cfg, str(tmp_path / "run"), build=lambda key: built.append(key),
                   train_iter=lambda c: FakeIterator(seed=11),
                   eval_iter=lambda c: FakeIterator(seed=99), evaluate_table=None)
    assert not built and not (tmp_path / "run").exists()


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


def test_eval_on_a_checkpoint_step_logs_every_step_once(tmp_path):
    """A hot/cold checkpoint step that is also an evaluation step (as the sweep sets them up):
    the checkpoint pulls the step's metrics first, and the evaluation must not pull again."""
    cfg = _cfg(steps=6)
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, every=1))
    summary = _train(cfg, tmp_path)
    rows = _rows(tmp_path)
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 7))
    assert [r["step"] for r in rows if "eval/val_loss" in r] == list(range(1, 7))
    assert summary["step"] == 6 and summary["stopped"] == "done"


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
    with pytest.raises(progress.NonFiniteLoss, match="step 3"):
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


def _run_train(*args, config="demo.py"):
    # One CPU device, and the tests' persistent compilation cache (faster reruns).
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "",
           "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir or ""}
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "train.py"), "--config",
         os.path.join(ROOT, "configs", config), *map(str, args)],
        capture_output=True, text=True, env=env, timeout=240, cwd=ROOT)


def _shrunk(sim_dir) -> list[str]:
    """Overrides that shrink a demo config to seconds on the tiny simulated set."""
    return [f"simulate.dir={sim_dir}", "model.d_model=16", "model.max_len=32", "data.seq_len=32",
            "data.batch_size=8", "data.holdout_assemblies=['sim02']", "data.eval_windows=16",
            "optim.warmup_steps=1", "train.log_every=1", "eval.every=0", "eval.val_batches=1",
            "eval.max_rows=32", "eval.batch_size=16", "train.progress=False"]


def test_cli_end_to_end_and_load_model(tmp_path, tiny_sim):
    workdir = tmp_path / "run"
    overrides = [*_shrunk(tiny_sim), "model.n_layers=1", "train.steps=4",
                 "train.checkpoint_every=2"]
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


def test_cli_caduceus_demo_trains_an_rc_equivariant_masked_model(tmp_path, tiny_sim):
    """The README's first command's config (Caduceus-PS, masked LM), shrunk: it trains, scores
    the table, and the checkpoint is PlantCAD's architecture with exact RC equivariance."""
    workdir = tmp_path / "run"
    proc = _run_train("--workdir", workdir, *_shrunk(tiny_sim), "train.steps=3",
                      config="demo_caduceus.py")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _rows(workdir)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    final = [r for r in rows if "eval/roc_auc" in r]
    assert final and final[-1]["eval/n"] == 32 and np.isfinite(final[-1]["eval/val_loss"])

    model, cfg, _ = load_model(str(workdir))
    assert (cfg.model.arch, cfg.model.rcps, cfg.model.bidirectional, cfg.data.mode) == (
        "caduceus", True, True, "mlm")
    tokens = jax.random.randint(jax.random.key(1), (2, 32), 3, 7)
    logits, logits_rc = np.asarray(model(tokens)), np.asarray(model(reverse_complement(tokens)))
    assert np.abs(logits - logits_rc).max() > 1e-2  # context matters: the check below can fail
    np.testing.assert_allclose(np.asarray(rc_logits(jnp.asarray(logits))), logits_rc,
                               rtol=1e-5, atol=1e-5)


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


def test_step_budget_fits_wsd_run_once_to_the_time_left():
    cfg = _cfg(steps=10_000, max_minutes=1.0)
    cfg = dataclasses.replace(cfg, optim=OptimConfig(schedule="wsd", warmup_steps=10,
                                                     decay_fraction=0.2))
    budget = StepBudget(cfg, total=10_000)
    budget.eval_s = 5.0
    t_start = 100.0
    assert not budget.fit(1, now=t_start + 10.0, t_start=t_start)  # starts the clock
    assert not budget.fit(11, now=t_start + 11.0, t_start=t_start)  # still timing
    # 20 steps in 2 s: 0.1 s a step; 60 - 12 elapsed - 5 for the eval = 43 s left: 430 steps.
    assert budget.fit(21, now=t_start + 12.0, t_start=t_start)
    assert budget.total == 21 + 430
    # Fitted once: later speeds change nothing (a resumed run reads it from schedule.json).
    assert not budget.fit(60, now=t_start + 50.0, t_start=t_start)
    assert budget.total == 451 and not budget.active
    # A budget too short for anything still leaves the decay after the fitting step.
    short = StepBudget(cfg, total=10_000)
    short.fit(1, now=t_start + 50.0, t_start=t_start)
    assert short.fit(21, now=t_start + 59.0, t_start=t_start)
    assert short.total - int(0.2 * short.total) > 21
    # Not a WSD run, or no budget: never refitted.
    off = StepBudget(_cfg(steps=100, max_minutes=1.0), total=100)  # wsds
    assert not off.active


# ---------------------------------------------------------------------------------------------
# No silent zeros, non-finite gradients, memory before the first step


class _WeightsTimes(FakeIterator):
    """Batches whose loss weights are scaled by `scale` (0: nothing is scored)."""

    def __init__(self, scale, seed=11):
        super().__init__(seed=seed)
        self.scale = scale

    def __next__(self):
        batch = super().__next__()
        return batch._replace(weights_BL=batch.weights_BL * np.float32(self.scale))


def test_zero_weight_validation_loss_is_missing_with_a_warning(tmp_path):
    with pytest.warns(UserWarning, match="repeat_weight_eval=0"):
        summary = loop.train(_cfg(steps=2), str(tmp_path), build=build_tiny(),
                             train_iter=lambda c: FakeIterator(seed=11),
                             eval_iter=lambda c: _WeightsTimes(0.0, seed=99),
                             evaluate_table=None)
    assert "eval/val_loss" not in summary
    assert not any("eval/val_loss" in r for r in _rows(tmp_path))


def test_zero_weight_training_batches_log_no_loss_then_stop(tmp_path, capsys):
    cfg = _cfg(steps=30, max_empty_steps=5)
    with pytest.raises(progress.EmptyBatches, match="5 training batches in a row"):
        _train(cfg, tmp_path, it_factory=lambda c: _WeightsTimes(0.0))
    rows = [r for r in _rows(tmp_path) if "loss_weight" in r]
    assert rows and all("loss" not in r and r["loss_weight"] == 0.0 for r in rows)
    assert "no loss weight" in capsys.readouterr().out


def test_nonfinite_gradient_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    # The NaN enters through step 4's batch; checkpoints every 2 steps: 4 must not be saved.
    # (WSD-S labels step 3 "cold": also saved.)
    with pytest.raises(progress.NonFiniteLoss, match="step 4.*last checkpoint, step 3"):
        _train(_cfg(steps=10), tmp_path, it_factory=lambda c: _NanAt(at=4))
    assert saved_steps(str(tmp_path)) == [2, 3]


def test_skip_nonfinite_skips_the_update_and_goes_on(tmp_path):
    summary = _train(_cfg(steps=6, skip_nonfinite=True), tmp_path,
                     it_factory=lambda c: _NanAt(at=3))
    assert summary["step"] == 6 and summary["stopped"] == "done"
    rows = {r["step"]: r for r in _rows(tmp_path) if "lr" in r}
    assert rows[3].get("skipped_nonfinite") == 1 and "loss" not in rows[3]
    assert all(np.isfinite(rows[s]["loss"]) for s in (1, 2, 4, 5, 6))


def test_a_step_too_large_for_the_device_stops_before_the_first_step(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "device_memory", lambda device, resident=0: (1000, "test"))
    with pytest.raises(memory.StepTooLarge) as e:
        _train(_cfg(steps=4), tmp_path)
    msg = str(e.value)
    assert "1,000 are available" in msg and "\n" not in msg
    for knob in ("model.remat", "data.batch_size", "train.microbatches", "train.fsdp"):
        assert knob in msg
    needed = int(msg.split("needs ")[1].split(" bytes")[0].replace(",", ""))
    assert needed > 1000
    assert not (tmp_path / "metrics.jsonl").exists() or not _rows(tmp_path)


def test_memory_analysis_of_a_compiled_step_counts_the_state():
    f = jax.jit(lambda x: jnp.tanh(x @ x.T))
    compiled = f.lower(jax.ShapeDtypeStruct((256, 64), jnp.float32)).compile()
    mem = memory.step_memory(compiled)
    assert mem is not None and mem.arguments == 256 * 64 * 4 and mem.outputs == 256 * 256 * 4
    assert "of" in memory.check_fits(compiled, jax.devices()[0], available=10**9)
