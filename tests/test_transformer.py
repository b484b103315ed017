"""Transformer: causal masking and bidirectionality via gradients, rotary embeddings encode
relative position, scan over layers equals a loop, bf16 compute, parameter count."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nanodna.models import build_model, count_params, sizes
from nanodna.models.layers import Linear
from nanodna.models.transformer import INIT_STD, Attention, SwiGLU, TransformerBlock, out_std, rope
from tests._layer_loop import assert_scan_equals_python_loop

CFG = dataclasses.replace(sizes.get("transformer_1m"), d_model=32, n_layers=2, n_heads=4)
TOL = dict(rtol=2e-4, atol=2e-5)


@pytest.fixture(scope="module")
def mlm():
    return build_model(CFG, jax.random.key(0))


def position_grads(model, L=10, t=4):
    """|d logits_t / d embedding_s| summed over channels, for every position s."""
    h = jax.random.normal(jax.random.key(1), (1, L, CFG.d_model))
    g = jax.jit(jax.grad(lambda h: jnp.sum(model.trunk(h)[0, t] * jnp.arange(CFG.d_model))))(h)
    return jnp.abs(g[0]).sum(-1)


def test_mlm_transformer_is_bidirectional(mlm):
    g = position_grads(mlm)
    assert float(g.min()) > 0  # every position, before and after t = 4, reaches position 4


def test_causal_transformer_never_looks_ahead():
    clm = build_model(dataclasses.replace(CFG, causal=True), jax.random.key(0))
    g = position_grads(clm, t=4)
    assert float(g[5:].max()) == 0.0  # exactly zero: masked, not merely small
    assert float(g[:5].min()) > 0


def test_rope_scores_depend_only_on_relative_position():
    q = jax.random.normal(jax.random.key(2), (1, 1, 2, 8))
    k = jax.random.normal(jax.random.key(3), (1, 1, 2, 8))
    L = 12
    q_L, k_L = rope(jnp.tile(q, (1, L, 1, 1)), 10000.0), rope(jnp.tile(k, (1, L, 1, 1)), 10000.0)
    scores = jnp.einsum("bihk,bjhk->hij", q_L, k_L)
    np.testing.assert_allclose(scores[:, 3, 1], scores[:, 9, 7], rtol=1e-4, atol=1e-5)
    norms = jnp.linalg.norm(q_L, axis=-1)  # a rotation keeps lengths
    np.testing.assert_allclose(norms, jnp.broadcast_to(jnp.linalg.norm(q, axis=-1), norms.shape), rtol=1e-5)
    assert not np.allclose(scores[:, 3, 1], scores[:, 3, 2])


def test_scan_over_layers_equals_python_loop(mlm):
    h = jax.random.normal(jax.random.key(4), (2, 9, CFG.d_model))
    assert_scan_equals_python_loop(mlm, h, **TOL)


def test_logits_and_bfloat16_compute(mlm):
    x = jax.random.randint(jax.random.key(5), (2, 9), 0, 7)
    bf16 = build_model(dataclasses.replace(CFG, compute_dtype="bfloat16"), jax.random.key(0))
    call = eqx.filter_jit(lambda m, x: m(x))
    out32, out16 = call(mlm, x), call(bf16, x)
    assert out32.shape == (2, 9, 8) and out32.dtype == out16.dtype == jnp.float32
    np.testing.assert_allclose(out16, out32, rtol=5e-2, atol=5e-2)


def test_parameter_count_closed_form(mlm):
    D, F, V, n = CFG.d_model, CFG.ff_dim, CFG.vocab_size, CFG.n_layers
    per_layer = 4 * D * D + 3 * D * F + 2 * D  # q k v o, gate up down, two RMSNorms
    assert count_params(mlm) == n * per_layer + 2 * V * D + D  # embed, untied head, final norm
    assert F % 128 == 0 and F >= 8 * D / 3


def test_bad_heads_is_a_clear_error():
    with pytest.raises(ValueError, match="heads"):
        dataclasses.replace(CFG, n_heads=5)


def test_block_init_draws_each_projection_from_one_seven_way_split():
    """Saved runs and published figures were made with this key layout: q, k, v, o, gate, up,
    down take keys 0..6 of one split of the block's key (a different layout changes every
    transformer's starting weights for a given seed)."""
    key = jax.random.key(3)
    block = TransformerBlock(CFG, key=key)
    ks = jax.random.split(key, 7)
    D, F = CFG.d_model, CFG.ff_dim
    projections = [block.attn.wq, block.attn.wk, block.attn.wv, block.attn.wo,
                   block.mlp.w_gate, block.mlp.w_up, block.mlp.w_down]
    shapes = [(D, D)] * 4 + [(D, F), (D, F), (F, D)]
    stds = [INIT_STD] * 3 + [out_std(CFG)] + [INIT_STD] * 2 + [out_std(CFG)]
    for lin, k, (d_in, d_out), std in zip(projections, ks, shapes, stds):
        expected = Linear(d_in, d_out, key=k, std=std)
        np.testing.assert_array_equal(np.asarray(lin.weight), np.asarray(expected.weight))


def test_attention_and_mlp_accept_one_raw_or_typed_key():
    """A raw uint32[2] key (jax.random.PRNGKey) is one key, not a batch of two: both kinds build
    the same weights as splitting that key by hand."""
    for key in (jax.random.key(5), jax.random.PRNGKey(5)):
        attn, mlp = Attention(CFG, key=key), SwiGLU(CFG, key=key)
        kq = jax.random.split(key, 4)[0]
        k_gate = jax.random.split(key, 3)[0]
        np.testing.assert_array_equal(
            np.asarray(attn.wq.weight),
            np.asarray(Linear(CFG.d_model, CFG.d_model, key=kq, std=INIT_STD).weight))
        np.testing.assert_array_equal(
            np.asarray(mlp.w_gate.weight),
            np.asarray(Linear(CFG.d_model, CFG.ff_dim, key=k_gate, std=INIT_STD).weight))
