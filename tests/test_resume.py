"""train.py killed and restarted: SIGKILL at a random step, SIGKILL during an asynchronous
checkpoint write, SIGKILL under a wall-clock budget, SIGTERM, and config changes on resume.

Every run is a real `python train.py` subprocess (the real model, data stream and Orbax
checkpoints) on a tiny simulated set, so what is tested is what a user's kill -9 does.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from nanodna.checkpoint import load_model, saved_steps
from nanodna.sim.simulate import simulate

ROOT = os.path.join(os.path.dirname(__file__), "..")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "tiny"
    simulate(str(out), seed=1, preset="demo", progress=False, n_species=3, genome_length=20_000)
    return out


def _overrides(sim, steps, **extra):
    kv = {
        "simulate.dir": sim, "model.d_model": 16, "model.n_layers": 1, "model.max_len": 32,
        "data.seq_len": 32, "data.batch_size": 8, "data.holdout_assemblies": "['sim02']",
        "data.eval_windows": 16, "train.steps": steps, "optim.warmup_steps": 2,
        "train.checkpoint_every": 3, "train.keep_checkpoints": 2, "train.log_every": 1,
        "eval.every": 0, "eval.at_end": False, "eval.val_batches": 1, "train.progress": False,
        "train.tensorboard": False, "train.max_minutes": None,
    }
    kv.update(extra)
    return [f"{k}={v}" for k, v in kv.items()]


def _cmd(workdir, overrides, *flags):
    return [sys.executable, os.path.join(ROOT, "train.py"), "--config",
            os.path.join(ROOT, "configs", "demo.py"), "--workdir", str(workdir), *flags,
            *overrides]


def _env():
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "",
            "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir or ""}


def _run(workdir, overrides, *flags):
    return subprocess.run(_cmd(workdir, overrides, *flags), check=False, capture_output=True,
                          text=True, env=_env(), timeout=300, cwd=ROOT)


def _start(workdir, overrides):
    return subprocess.Popen(_cmd(workdir, overrides), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _last_logged(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        lines = [line for line in f.read().splitlines() if line.endswith("}")]
    return json.loads(lines[-1])["step"] if lines else 0


def _wait_for(proc, condition, timeout=240):
    t0 = time.monotonic()
    while not condition():
        assert proc.poll() is None, "the run ended before the kill: " + proc.stderr.read()[-2000:]
        assert time.monotonic() - t0 < timeout, "timed out waiting for the run"
        time.sleep(0.002)


def _assert_same_losses(workdir, reference, steps):
    got, want = _losses(workdir), _losses(reference)
    assert sorted(got) == sorted(want) == list(range(1, steps + 1))
    np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(want)],
                               rtol=1e-6, atol=0)


STEPS = 24


@pytest.fixture(scope="module")
def straight(tiny_sim, tmp_path_factory):
    """An uninterrupted run: the reference losses."""
    workdir = tmp_path_factory.mktemp("straight") / "run"
    proc = _run(workdir, _overrides(tiny_sim, STEPS))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


def test_sigkill_at_a_random_step_then_resume_gives_the_same_losses(tiny_sim, straight,
                                                                    tmp_path):
    workdir = tmp_path / "run"
    at = random.Random().randint(4, STEPS - 4)  # a random step, past the first checkpoint
    proc = _start(workdir, _overrides(tiny_sim, STEPS))
    _wait_for(proc, lambda: _last_logged(workdir) >= at)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _last_logged(workdir) < STEPS, "the run finished before the kill"
    complete = saved_steps(str(workdir))  # a write still in flight at the kill is not one
    proc = _run(workdir, _overrides(tiny_sim, STEPS))
    assert proc.returncode == 0, proc.stderr[-3000:]
    if complete:
        assert f"resumed from {workdir} at step {max(complete)}" in proc.stdout
    else:  # killed before the first write finished: starts over, the old log dropped
        assert "resumed" not in proc.stdout
    _assert_same_losses(workdir, straight, STEPS)


def test_sigkill_during_an_async_checkpoint_write_resumes_from_the_last_complete(
        tiny_sim, straight, tmp_path):
    workdir = tmp_path / "run"
    folder = workdir / "checkpoints"
    proc = _start(workdir, _overrides(tiny_sim, STEPS, **{"train.checkpoint_every": 1}))

    def writing():  # an Orbax temporary folder: a checkpoint being written in the background
        names = os.listdir(folder) if folder.is_dir() else []
        return any("tmp" in n for n in names) and any(n.isdigit() for n in names)

    _wait_for(proc, writing)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = sorted(os.listdir(folder))
    half = [n for n in left if "tmp" in n]
    complete = saved_steps(str(workdir))
    assert half, f"no half-written checkpoint left: {left}"
    # A killed write leaves its Orbax temporary folder (<step>.orbax-checkpoint-tmp...), never
    # a folder named by its step: only finished checkpoints have those.
    assert all(n.isdigit() or "tmp" in n or n.endswith(".json") for n in left), left
    proc = _run(workdir, _overrides(tiny_sim, STEPS))
    assert proc.returncode == 0, proc.stderr[-3000:]
    if complete:
        assert f"resumed from {workdir} at step {max(complete)}" in proc.stdout
    else:
        assert "resumed" not in proc.stdout
    assert not any("tmp" in n for n in os.listdir(folder))  # cleaned up by the resumed run
    _assert_same_losses(workdir, straight, STEPS)


def test_sigkill_under_a_time_budget_resumes_the_fitted_schedule(tiny_sim, tmp_path):
    budget = {"train.max_minutes": 0.4, "optim.schedule": "wsd", "train.checkpoint_every": 10}
    workdir = tmp_path / "budget"
    proc = _start(workdir, _overrides(tiny_sim, 5000, **budget))
    schedule = workdir / "schedule.json"
    _wait_for(proc, schedule.exists)
    fitted = json.loads(schedule.read_text())
    total = fitted["total_steps"]
    assert fitted["fitted_at_step"] < total < 5000, fitted  # the budget shortened the run
    at = random.Random().randint(fitted["fitted_at_step"] + 1,
                                 fitted["fitted_at_step"] + max(2, (total - fitted["fitted_at_step"]) // 2))
    _wait_for(proc, lambda: _last_logged(workdir) >= at)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _last_logged(workdir) < total, "the run finished before the kill"
    for _ in range(5):  # a slow machine may spend a resumed run's budget before the end
        proc = _run(workdir, _overrides(tiny_sim, 5000, **budget))
        assert proc.returncode == 0, proc.stderr[-3000:]
        if "stopped done" in proc.stdout:
            break
    assert json.loads(schedule.read_text()) == fitted  # continued, not refitted
    # The reference: one uninterrupted run of that same schedule (no budget to stop it).
    reference = tmp_path / "reference"
    reference.mkdir()
    shutil.copy(schedule, reference / "schedule.json")
    proc = _run(reference, _overrides(tiny_sim, 5000, **{**budget, "train.max_minutes": None}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_losses(workdir, reference, total)


def test_sigterm_saves_at_the_current_step_and_exits_quickly(tiny_sim, tmp_path):
    workdir = tmp_path / "run"
    proc = _start(workdir, _overrides(tiny_sim, 100_000, **{"train.checkpoint_every": 10_000}))
    _wait_for(proc, lambda: _last_logged(workdir) >= 1)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 30, "SIGTERM took more than 30 s to save and exit"
    assert proc.returncode == 0, err[-3000:]
    step = int(out.split("stopped by signal 15 at step ")[1].split(";")[0])
    assert saved_steps(str(workdir))[-1] == step
    assert "checkpoint saved in" in out


def test_config_change_on_resume_is_refused_before_touching_the_workdir(tiny_sim, tmp_path):
    workdir = tmp_path / "run"
    proc = _run(workdir, _overrides(tiny_sim, 4))
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = (workdir / "config.json").read_bytes()
    metrics = (workdir / "metrics.jsonl").read_bytes()

    bad = _run(workdir, _overrides(tiny_sim, 4, **{"model.d_model": 32, "data.seq_len": 16}))
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: ") and bad.stderr.strip().count("\n") == 0
    assert "model.d_model" in bad.stderr and "data.seq_len" in bad.stderr
    assert "--restart" in bad.stderr and "--workdir" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert (workdir / "config.json").read_bytes() == saved
    assert (workdir / "metrics.jsonl").read_bytes() == metrics
    _, cfg, step = load_model(str(workdir))  # what eval.py reads still loads
    assert step == 4 and cfg.model.d_model == 16

    # Safe changes are applied and listed.
    ok = _run(workdir, _overrides(tiny_sim, 6, **{"train.log_every": 2}))
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "config changes applied: train.log_every, train.steps" in ok.stdout
    assert max(_losses(workdir)) == 6

    # --restart starts over in the same workdir with the new shape.
    again = _run(workdir, _overrides(tiny_sim, 2, **{"model.d_model": 32}), "--restart")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed" not in again.stdout and sorted(_losses(workdir)) == [1, 2]
    assert saved_steps(str(workdir)) == [2]
    assert load_model(str(workdir))[1].model.d_model == 32
