"""nanodna.embed on imported official checkpoints (tests/data/caduceus_official, PROVENANCE.md).

The embedding must be PlantCaduceus' recipe on the published split view (first channel half
plus the second half flipped along channels, halved), whose head reproduces the model's logits;
e(rc(x)) = flip_L(e(x)); batching must not change it; the CLI writes .npy and parquet.
"""

import os

import jax.numpy as jnp
import numpy as np
import pyarrow.parquet as pq
import pytest

from nanodna import embed, tokenizer
from nanodna.checkpoint import save_model
from nanodna.config import Config
from nanodna.convert import from_hf
from nanodna.data.config import DataConfig
from nanodna.models import rcps

FIXTURES = os.path.join(os.path.dirname(__file__), "data", "caduceus_official")


@pytest.fixture(scope="module", params=["ps_fused_d32_l3", "ph_fused_d32_l2"])
def imported(request):
    model, cfg = from_hf(os.path.join(FIXTURES, request.param))
    return request.param, model, cfg


def random_tokens(seed, B, L):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.integers(tokenizer.A, tokenizer.T + 1, (B, L)), jnp.int32)


def test_matches_plantcaduceus_split_view_average():
    model, cfg = from_hf(os.path.join(FIXTURES, "ps_fused_d32_l3"))  # the split view: PS only
    x = random_tokens(0, 3, 40)
    H_BLC = np.asarray(rcps.to_channels(model.hidden(rcps.fold(jnp.asarray(x)))))
    # The split view is the official last hidden state: the published head on it gives the
    # model's logits (which the import matches to the official ones, test_convert.py).
    np.testing.assert_allclose(rcps.head_channels(model.embed, jnp.asarray(H_BLC)), model(x),
                               rtol=1e-5, atol=1e-5)
    D = H_BLC.shape[-1] // 2
    want = (H_BLC[..., :D] + H_BLC[..., D:][..., ::-1]) / 2  # PlantCaduceus src/fine_tune.py
    got = np.asarray(embed.strand_hidden(model, x))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert got.shape == (3, 40, cfg.d_model)


def test_strands_and_batching(imported):
    _, model, _ = imported
    x = random_tokens(1, 5, 33)
    e = np.asarray(embed.strand_hidden(model, x))
    e_rc = np.asarray(embed.strand_hidden(model, jnp.asarray(tokenizer.reverse_complement(x))))
    np.testing.assert_allclose(e_rc, e[:, ::-1], rtol=1e-5, atol=1e-5)
    assert np.abs(e[:, 1:] - e[:, :-1]).max() > 1e-3  # positions differ: not a constant

    windows = [(str(i), 0, row) for i, row in enumerate(np.asarray(x))]
    for per_position, want in ((False, e.mean(axis=1)), (True, e)):
        for bs in (2, 8):
            out = list(embed.embed_windows(model, windows, bs, per_position))
            keys = [k for ks, _ in out for k in ks]
            got = np.concatenate([a for _, a in out])
            assert keys == [(str(i), 0, 33) for i in range(5)]
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_cli_table_and_fasta(tmp_path):
    model, cfg = from_hf(os.path.join(FIXTURES, "ps_fused_d32_l2"))
    save_model(model, Config(model=cfg, data=DataConfig()), tmp_path / "ckpt")
    rng = np.random.default_rng(2)
    seqs = ["".join(rng.choice(list("ACGTacgt"), n)) for n in (20, 20, 20, 24, 20)]
    (tmp_path / "t.tsv").write_text("sequence\n" + "\n".join(seqs) + "\n")
    ckpt = str(tmp_path / "ckpt")
    assert embed.main(["--checkpoint", ckpt, "--data", str(tmp_path / "t.tsv"),
                       "--out", str(tmp_path / "e.npy"), "--batch-size", "2"]) == 0
    got = np.load(tmp_path / "e.npy")
    ids = [jnp.asarray(tokenizer.encode(s)[0], jnp.int32) for s in seqs]
    want = np.stack([np.asarray(embed.strand_hidden(model, i[None]))[0].mean(0) for i in ids])
    assert got.shape == (5, cfg.d_model)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    genome = "".join(rng.choice(list("ACGT"), 50))
    (tmp_path / "g.fa").write_text(f">c1 desc\n{genome[:30]}\n{genome[30:]}\n>c2\nACGTACG\n")
    assert embed.main(["--checkpoint", ckpt, "--data", str(tmp_path / "g.fa"), "--window", "16",
                       "--out", str(tmp_path / "e.parquet"), "--per-position"]) == 0
    t = pq.read_table(tmp_path / "e.parquet").to_pylist()
    assert [(r["name"], r["start"], r["length"]) for r in t] == [
        ("c1", 0, 16), ("c1", 16, 16), ("c1", 32, 16), ("c1", 48, 2), ("c2", 0, 7)]
    win = jnp.asarray(tokenizer.encode(genome[16:32])[0], jnp.int32)[None]
    np.testing.assert_allclose(np.array(t[1]["embedding"]),
                               np.asarray(embed.strand_hidden(model, win))[0], rtol=1e-5, atol=1e-5)

    assert embed.main(["--checkpoint", ckpt, "--data", str(tmp_path / "g.fa"),
                       "--out", str(tmp_path / "e.csv")]) == 2

