"""eval.py and what it runs: outputs written, the training loop's fast path, one-line errors."""

import json
import os
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nanodna import tokenizer
from nanodna.checkpoint import load_model
from nanodna.config import Config, to_dict
from nanodna.data.config import DataConfig
from nanodna.evaluation import conservation, metrics, report
from nanodna.evaluation.tables import read_table
from nanodna.models import ModelConfig, build_model
from nanodna.training.checkpoint import Checkpointer
from nanodna.training.step import TrainState

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Neighbours(eqx.Module):
    """Stand-in masked LM: logits at l from the tokens at l-1 and l+1."""

    left_VV: jax.Array
    right_VV: jax.Array

    def __call__(self, tokens_BL):
        return (
            self.left_VV[jnp.roll(tokens_BL, 1, axis=1)]
            + self.right_VV[jnp.roll(tokens_BL, -1, axis=1)]
        )


def write_table(path, rng, n=40, length=20, variant=False):
    seqs = ["".join(rng.choice(list("ACGT"), size=length)) for _ in range(n)]
    labels = np.resize([0, 1], n)
    rng.shuffle(labels)
    with open(path, "w") as f:
        if variant:
            f.write("sequence\tpos\tref\talt\n")
            for s in seqs:
                p = int(rng.integers(length))
                f.write(f"{s}\t{p}\t{s[p]}\t{'C' if s[p] != 'C' else 'G'}\n")
        else:
            f.write("sequence\tlabel\n")
            for s, y in zip(seqs, labels):
                f.write(f"{s}\t{y}\n")
    return path


@pytest.fixture
def rng():
    return np.random.default_rng()


@pytest.fixture
def model(rng):
    k1, k2 = jax.random.split(jax.random.key(int(rng.integers(2**31))))
    V = tokenizer.VOCAB_SIZE
    return Neighbours(jax.random.normal(k1, (V, V)), jax.random.normal(k2, (V, V)))


def test_evaluate_model_writes_outputs(tmp_path, rng, model):
    cfg = ModelConfig(arch="caduceus", rcps=True, max_len=32)
    table = read_table(write_table(tmp_path / "t.tsv", rng))
    out = tmp_path / "res" / "results.json"
    res = report.evaluate_model(
        model, cfg, table, str(out), batch_size=16, bootstrap=50, info={"step": 3}
    )
    on_disk = json.loads(out.read_text())
    assert (
        on_disk["n"] == 40
        and on_disk["step"] == 3
        and on_disk["arch"] == "caduceus"
        and on_disk["task"] == "conservation"
    )
    assert on_disk["roc_auc_ci"][0] <= on_disk["roc_auc"] <= on_disk["roc_auc_ci"][1]
    assert (
        on_disk["windows_per_s"] > 0
        and on_disk["rule"] == "masked"
        and not on_disk["strand_average"]
        and on_disk["strand_mode"] == "equivariant"  # Caduceus-PS: one pass, both strands
    )
    lines = (tmp_path / "res" / "scores.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    assert header[:4] == ["row", "pos", "ref", "label"] and len(lines) == 41
    rows = [dict(zip(header, line.split("\t"))) for line in lines[1:]]
    score = np.array([float(r["score"]) for r in rows])
    label = np.array([int(r["label"]) for r in rows])
    assert res["roc_auc"] == pytest.approx(metrics.roc_auc(label, score), abs=1e-4)
    for name in ("roc.png", "hist.png"):
        assert (tmp_path / "res" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_table_fast_path(tmp_path, rng, model):
    cfg = ModelConfig(arch="transformer", causal=False, max_len=16)  # crops the 20-bp rows
    path = write_table(tmp_path / "t.tsv", rng)
    res = conservation.evaluate_table(model, cfg, path, batch_size=8, max_rows=30)
    assert res["n"] == 30 and 0.0 <= res["roc_auc"] <= 1.0 and "roc_auc_ci" not in res
    again = conservation.evaluate_table(model, cfg, path, batch_size=8, max_rows=30)
    assert again["roc_auc"] == res["roc_auc"] and again["auprc"] == res["auprc"]
    assert conservation.load_table(path, max_rows=30) is conservation.load_table(
        path, max_rows=30
    )  # cached
    unlabelled = conservation.evaluate_table(
        model, cfg, write_table(tmp_path / "v.tsv", rng, variant=True), task="variant"
    )
    assert unlabelled["n"] == 40 and "roc_auc" not in unlabelled


def run_cli(*args):
    # the child shares the suite's persistent compilation cache (set up in conftest.py)
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir or "")
    cmd = [sys.executable, os.path.join(ROOT, "eval.py"), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)


def test_cli_bad_table_is_one_line_exit_2(tmp_path):
    (tmp_path / "bad.tsv").write_text("sequence\tlabel\nACGTACGT\t1\nACGTACGT\t7\n")
    r = run_cli(
        "--checkpoint", tmp_path, "--data", tmp_path / "bad.tsv", "--out", tmp_path / "r.json"
    )
    assert r.returncode == 2
    assert (
        r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: ") and "row 1" in r.stderr
    )
    assert not (tmp_path / "r.json").exists()


def test_cli_single_class_fails_before_any_work(tmp_path):
    # The label check runs before the checkpoint loads (the checkpoint here does not even
    # exist: the error names the labels, not the checkpoint), and writes nothing.
    (tmp_path / "one.tsv").write_text("sequence\tlabel\nACGTACGT\t1\nACGTTCGT\t1\n")
    out = tmp_path / "eval" / "r.json"
    r = run_cli("--checkpoint", tmp_path / "nope", "--data", tmp_path / "one.tsv", "--out", out)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "both classes" in r.stderr
    assert not (tmp_path / "eval").exists()


class Spy(eqx.Module):
    calls: list

    def __call__(self, tokens_BL):
        self.calls.append(tokens_BL.shape)
        return jnp.zeros(tokens_BL.shape + (tokenizer.VOCAB_SIZE,))


def test_evaluate_model_single_class_scores_nothing_writes_nothing(tmp_path):
    (tmp_path / "one.tsv").write_text("sequence\tlabel\nACGTACGT\t0\nACGTTCGT\t0\n")
    spy = Spy([])
    cfg = ModelConfig(arch="transformer", causal=False, max_len=16)
    with pytest.raises(metrics.MetricsError, match="both classes"):
        report.evaluate_model(spy, cfg, read_table(tmp_path / "one.tsv"),
                              str(tmp_path / "eval" / "r.json"))
    assert spy.calls == [] and not (tmp_path / "eval").exists()


def test_summary_line_without_bootstrap_has_no_interval():
    base = {"roc_auc": 0.7, "auprc": 0.6, "n": 10, "step": 3, "windows_per_s": 5.0,
            "strand_mode": "average"}
    line = report.summary_line(base)
    assert "nan" not in line and "[" not in line and "roc_auc 0.7000" in line
    assert "[0.6000, 0.8000]" in report.summary_line({**base, "roc_auc_ci": [0.6, 0.8]})
    assert "roc_auc" not in report.summary_line({k: v for k, v in base.items()
                                                if k not in ("roc_auc", "auprc")})


def test_no_bootstrap_no_interval_in_results(tmp_path, rng, model):
    cfg = ModelConfig(arch="caduceus", rcps=True, max_len=32)
    table = read_table(write_table(tmp_path / "t.tsv", rng, n=12))
    res = report.evaluate_model(model, cfg, table, str(tmp_path / "r.json"), bootstrap=0)
    on_disk = json.loads((tmp_path / "r.json").read_text())
    assert not any("_ci" in k for k in on_disk) and "bootstrap" not in on_disk
    assert "roc_auc" in res and "nan" not in json.dumps(on_disk).lower()


def test_cli_bad_checkpoint_is_one_line_exit_2(tmp_path, rng):
    data = write_table(tmp_path / "t.tsv", rng, n=4, length=8)
    r = run_cli("--checkpoint", tmp_path, "--data", data, "--out", tmp_path / "r.json")
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "not a training workdir" in r.stderr


def tiny_caduceus_checkpoint(tmp_path, step=7):
    """A real tiny Caduceus saved by the training code's Checkpointer: its workdir."""
    cfg = Config(
        model=ModelConfig(arch="caduceus", d_model=8, n_layers=1, max_len=16), data=DataConfig()
    )
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps(to_dict(cfg)))
    key = jax.random.key(cfg.train.seed)

    # Random values of the right shapes: these tests are about plumbing, and skipping the real
    # initialiser saves seconds of small-op compilation on CPU.
    def is_float(x):
        return isinstance(x, jax.ShapeDtypeStruct) and jnp.issubdtype(x.dtype, jnp.inexact)

    shapes = eqx.filter(eqx.filter_eval_shape(build_model, cfg.model, key), is_float)
    leaves, treedef = jax.tree.flatten(shapes)
    keys = jax.random.split(key, len(leaves))
    params = jax.tree.unflatten(
        treedef, [0.1 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    )
    ckpt = Checkpointer(str(workdir / "checkpoints"))
    ckpt.save(
        step,
        TrainState(params, {"count": jnp.zeros((), jnp.int32)}, jnp.asarray(step, jnp.int32)),
        {},
        key,
    )
    ckpt.close()
    return workdir


def test_cli_end_to_end(tmp_path, rng):
    """A real tiny Caduceus saved by the training code's Checkpointer, scored by eval.py."""
    workdir = tiny_caduceus_checkpoint(tmp_path)
    data = write_table(tmp_path / "t.tsv", rng, n=24, length=24)  # longer than max_len: windowed
    out = tmp_path / "eval" / "results.json"
    r = run_cli(
        "--checkpoint", workdir, "--data", data, "--out", out, "--batch-size", 8, "--bootstrap", 20
    )
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert (
        res["step"] == 7
        and res["arch"] == "caduceus"
        and res["n"] == 24
        and 0 <= res["roc_auc"] <= 1
    )
    assert {"scores.tsv", "roc.png", "results.json"} <= set(os.listdir(tmp_path / "eval"))


def test_matmul_dtype_override(tmp_path, rng):
    """load_model / eval.py --matmul-dtype: the same float32 params, bfloat16 projections, the
    Config saying so, logits within bfloat16 rounding; a disallowed dtype is one line, exit 2."""
    workdir = tiny_caduceus_checkpoint(tmp_path)
    m32, cfg32, _ = load_model(str(workdir))
    mbf, cfgbf, _ = load_model(str(workdir), matmul_dtype="bfloat16")
    assert cfg32.model.matmul_dtype is None and cfgbf.model.matmul_dtype == "bfloat16"
    assert mbf.blocks.mixer.fwd.in_proj.dot_dtype == "bfloat16"
    p32, pbf = (jax.tree.leaves(eqx.filter(m, eqx.is_array)) for m in (m32, mbf))
    assert len(p32) == len(pbf) > 5
    for a, b in zip(p32, pbf):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    tokens = jax.random.randint(jax.random.key(3), (2, 16), 3, 7)
    l32, lbf = np.asarray(m32(tokens)), np.asarray(mbf(tokens))
    assert np.abs(l32 - lbf).max() > 0  # the option reached the model
    np.testing.assert_allclose(lbf, l32, rtol=0, atol=2e-2 * np.abs(l32).max())

    data = write_table(tmp_path / "t.tsv", rng, n=8, length=16)
    out = tmp_path / "eval" / "results.json"
    r = run_cli("--checkpoint", workdir, "--data", data, "--out", out, "--bootstrap", 0,
                "--matmul-dtype", "bfloat16")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(out.read_text())["model"]["matmul_dtype"] == "bfloat16"
    assert "matmuls bfloat16" in r.stdout  # the summary line says how it scored

    cfg = json.loads((workdir / "config.json").read_text())
    cfg["model"]["compute_dtype"] = "bfloat16"  # float32 matmuls in a bfloat16 model: refused
    (workdir / "config.json").write_text(json.dumps(cfg))
    r = run_cli("--checkpoint", workdir, "--data", data, "--out", out, "--matmul-dtype", "float32")
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "matmul_dtype" in r.stderr
