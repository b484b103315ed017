"""Data parallelism over 2 processes on this machine (jax.distributed on localhost, gloo CPU
collectives) gives the losses of 1 process with 2 devices; each process reads only its rows."""

import dataclasses
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from nanodna.data.config import DataConfig
from nanodna.data.stream import make_train_iterator
from nanodna.sim.simulate import simulate

ROOT = os.path.join(os.path.dirname(__file__), "..")
pytestmark = pytest.mark.slow
STEPS = 4


@pytest.fixture(scope="module")
def tiny_sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "tiny"
    simulate(str(out), seed=1, preset="demo", progress=False, n_species=3, genome_length=20_000)
    return out


def _cmd(workdir, sim, batch_size):
    overrides = {
        "simulate.dir": sim, "model.d_model": 16, "model.n_layers": 1, "model.max_len": 32,
        "data.seq_len": 32, "data.batch_size": batch_size, "data.holdout_assemblies": "['sim02']",
        "data.eval_windows": 16, "train.steps": STEPS, "optim.warmup_steps": 1,
        "train.checkpoint_every": 2, "train.log_every": 1, "eval.every": 0, "eval.at_end": False,
        "train.progress": False, "train.tensorboard": False,
    }
    return [sys.executable, os.path.join(ROOT, "train.py"), "--config",
            os.path.join(ROOT, "configs", "demo.py"), "--workdir", str(workdir),
            *(f"{k}={v}" for k, v in overrides.items())]


def _env(devices, **extra):
    return {**os.environ, "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
            "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir or "", **extra}


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process_with_two_devices(tiny_sim, tmp_path):
    one = subprocess.run(_cmd(tmp_path / "one", tiny_sim, 16), check=False, capture_output=True, text=True,
                         env=_env(2), timeout=300, cwd=ROOT)
    assert one.returncode == 0, one.stderr[-3000:]
    assert "mesh: 2 x cpu" in one.stdout

    port = _free_port()
    procs = [subprocess.Popen(
        _cmd(tmp_path / "two", tiny_sim, 8), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, cwd=ROOT,
        env=_env(1, NANODNA_COORDINATOR=f"localhost:{port}", NANODNA_NUM_PROCESSES="2",
                 NANODNA_PROCESS_ID=str(p))) for p in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert "mesh: 2 x cpu" in outs[0][0]
    # Each process was given its own share of every global batch of 16.
    for p, (out, _) in enumerate(outs):
        assert f"data: process {p} of 2 reads 8 of each global batch of 16 windows" in out

    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    # Cross-process all-reduce sums in another order: equal to float32 round-off.
    np.testing.assert_allclose([b[s] for s in sorted(b)], [a[s] for s in sorted(a)], rtol=1e-5)


def test_each_process_reads_only_its_rows(tiny_sim):
    """The two processes' batches are disjoint halves of the one-process global batch."""
    cfg = DataConfig(store_dirs=(str(tiny_sim / "store"),), seq_len=32, batch_size=8,
                     mode="clm", holdout_assemblies=("sim02",), prefetch=0)
    parts = [make_train_iterator(cfg, process_index=p, process_count=2) for p in range(2)]
    whole = make_train_iterator(dataclasses.replace(cfg, batch_size=16),
                                process_index=0, process_count=1)
    for _ in range(2):
        halves = [next(it) for it in parts]
        full = next(whole)
        for p, half in enumerate(halves):
            np.testing.assert_array_equal(half.tokens_BL, full.tokens_BL[8 * p: 8 * (p + 1)])
        assert not np.array_equal(halves[0].tokens_BL, halves[1].tokens_BL)
