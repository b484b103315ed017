"""The scoring fast path (issue 10): forward-only scan and head-at-target give the old path's
numbers.

Parity of ops/scan_fwd.py against the float64 lax.scan reference on fresh random inputs, and
of score_table's "fast" against its "old" path on small random-weight models of each scoring
kind, with weights scaled up so that the context changes the scores.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nanodna import tokenizer
from nanodna.evaluation import scoring
from nanodna.evaluation.tables import EvalTable
from nanodna.models import ModelConfig, build_model
from nanodna.models.build import with_scan_impl
from nanodna.ops import scan


@pytest.fixture
def rng():
    return np.random.default_rng()


@pytest.mark.parametrize("reverse", [False, True])
def test_forward_scan_matches_reference(rng, reverse):
    key = jax.random.key(int(rng.integers(2**31)))
    kw = scan.random_scan_inputs(key, 3, 37, 10, 5)  # odd sizes
    got = scan.selective_scan(**kw, delta_softplus=True, reverse=reverse, impl="fwd")
    kw64 = {k: None if v is None else jnp.asarray(np.asarray(v, np.float64)) for k, v in kw.items()}
    with jax.enable_x64():
        ref = scan.selective_scan_ref(**kw64, delta_softplus=True, reverse=reverse)
    np.testing.assert_allclose(got, np.asarray(ref), rtol=1e-4, atol=1e-5)


def test_forward_scan_bidirectional_matches_reference(rng):
    key = jax.random.key(int(rng.integers(2**31)))
    kw = scan.random_scan_inputs(key, 2, 29, 12, 4, S=2)
    got = scan.selective_scan_bidirectional(**kw, delta_softplus=True, impl="fwd")
    ref = scan.bidirectional_scan_ref(**kw, delta_softplus=True)
    assert float(jnp.max(jnp.abs(ref))) > 0.1
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_with_scan_impl_keeps_the_function(rng):
    cfg = ModelConfig(arch="caduceus", d_model=16, n_layers=2, max_len=33)
    model = build_model(cfg, jax.random.key(int(rng.integers(2**31))))
    fast = with_scan_impl(model, "fwd")
    assert fast.blocks.mixer.fwd.ssm.scan_impl == "fwd" and fast.blocks.mixer.rev.scan_impl == "fwd"
    assert model.blocks.mixer.fwd.ssm.scan_impl == "auto"  # the original is untouched
    tokens = jnp.asarray(tokenizer.ACGT[rng.integers(0, 4, (2, 33))].astype(np.int32))
    np.testing.assert_allclose(fast(tokens), model(tokens), rtol=1e-5, atol=1e-5)


def _scaled(model, factor):
    """Every float array times `factor` (except A_log, kept stable): large weights make the
    logits at the target depend strongly on the other positions."""
    def scale(path, x):
        if not (isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jnp.floating)):
            return x
        if any(getattr(p, "name", None) == "A_log" for p in path):
            return x
        return x * factor
    return jax.tree_util.tree_map_with_path(scale, model)


def _table(rng, rows, length, max_len):
    ids = [tokenizer.ACGT[rng.integers(0, 4, length)].astype(np.uint8) for _ in range(rows)]
    pos = rng.integers(0, length, rows)
    ref = np.array([x[p] for x, p in zip(ids, pos)], np.int64)
    return EvalTable("<test>", "conservation", ids, pos, ref, None, rng.integers(0, 2, rows))


CASES = {
    "caduceus_ps": {"arch": "caduceus", "rcps": True},
    "caduceus_ps_swap": {"arch": "caduceus", "rcps": True, "rcps_swap_strands": True},
    "caduceus_ph": {"arch": "caduceus", "rcps": False},
    "transformer_mlm": {"arch": "transformer", "causal": False, "n_heads": 2},
    "transformer_clm": {"arch": "transformer", "causal": True, "n_heads": 2},
}


@pytest.mark.parametrize("name", list(CASES))
def test_fast_path_scores_equal_old_path(rng, name):
    cfg = ModelConfig(d_model=16, n_layers=2, max_len=24, **CASES[name])
    model = build_model(cfg, jax.random.key(int(rng.integers(2**31))))
    model = _scaled(model, 3.0 if cfg.arch == "caduceus" else 8.0)
    table = _table(rng, 7, 30, cfg.max_len)  # rows longer than max_len: cropped windows
    old = scoring.score_table(model, cfg, table, batch_size=4, inference_path="old")
    fast = scoring.score_table(model, cfg, table, batch_size=None, inference_path="fast")
    assert fast.batch_size == scoring.CPU_BATCH_SIZE and fast.inference_path == "fast"
    # the scores carry context: not the same for every row, not uniform over a/c/g/t
    assert np.std(old.score_R) > 0.05 and np.abs(old.log_probs_R4 - np.log(0.25)).max() > 0.1
    # float32 round-off of two summation orders in the scan: 4e-5 absolute seen once at a
    # log-probability of -2.1 (weights scaled up 3-8x), far below the scores' spread (> 0.05)
    np.testing.assert_allclose(fast.log_probs_R4, old.log_probs_R4, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(fast.window_pos_R, old.window_pos_R)


def test_old_path_runs_the_pre_issue_10_scan():
    """eval.py --inference-path old is the baseline the issue measured: on CPU, where "auto"
    now picks kernels/cpu, the old path runs the chunked_vjp XLA scan it ran then; the fast
    path keeps the kernel."""
    from nanodna.ops.scan import resolve_impl

    cfg = ModelConfig(d_model=16, n_layers=1, max_len=24, arch="caduceus", rcps=True)
    model = build_model(cfg, jax.random.key(0))

    def impls(m):
        ssms = [x for x in jax.tree.leaves(m, is_leaf=lambda x: hasattr(x, "scan_impl"))
                if hasattr(x, "scan_impl")]
        return {x.scan_impl for x in ssms}

    assert impls(model) == {"auto"}  # both directions' SSMs are found
    if resolve_impl("auto") != "cpu":
        pytest.skip("no CPU kernel here: the old and fast paths share the XLA scan")
    assert impls(scoring.old_model(model)) == {"chunked_vjp"}
    assert impls(scoring.inference_model(model)) == {"auto"}


def test_logits_at_is_the_full_logits_at_pos(rng):
    for kw in CASES.values():
        cfg = ModelConfig(d_model=16, n_layers=1, max_len=20, **kw)
        model = build_model(cfg, jax.random.key(int(rng.integers(2**31))))
        tokens = jnp.asarray(tokenizer.ACGT[rng.integers(0, 4, (3, 20))].astype(np.int32))
        pos = jnp.asarray(rng.integers(0, 20, 3))
        full = model(tokens)[jnp.arange(3), pos]
        np.testing.assert_allclose(model.logits_at(tokens, pos), full, rtol=1e-5, atol=1e-6)


def test_unknown_inference_path_raises(rng):
    cfg = ModelConfig(d_model=16, n_layers=1, max_len=20)
    with pytest.raises(ValueError, match="inference_path"):
        scoring.score_table(None, cfg, _table(rng, 1, 10, 20), inference_path="turbo")


def test_old_path_defaults_to_the_pre_issue_10_batch(rng):
    """eval.py --inference-path old with no --batch-size runs what eval.py ran before issue 10:
    batch 64 (the fast path's CPU default is 8)."""
    cfg = ModelConfig(d_model=16, n_layers=1, max_len=24, arch="caduceus", rcps=True)
    model = build_model(cfg, jax.random.key(0))
    table = _table(rng, 3, 24, cfg.max_len)
    old = scoring.score_table(model, cfg, table, batch_size=None, inference_path="old")
    fast = scoring.score_table(model, cfg, table, batch_size=None, inference_path="fast")
    assert old.batch_size == scoring.OLD_BATCH_SIZE == 64
    assert fast.batch_size == scoring.CPU_BATCH_SIZE != old.batch_size
    np.testing.assert_allclose(fast.log_probs_R4, old.log_probs_R4, rtol=1e-4, atol=1e-4)
