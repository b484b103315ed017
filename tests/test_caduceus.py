"""Caduceus: RCPS as batch folding equals the published channel-split definition; RC
equivariance of each RCPS piece and of the whole Caduceus-PS; Caduceus-Ph's conjoined output;
bidirectionality; scan over layers equals a Python loop; remat and scan impls agree."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nanodna.models import build_model, conjoined_logits, rcps, sizes
from nanodna.models.layers import layer_at, scan_layers
from nanodna.tokenizer import reverse_complement
from tests._layer_loop import assert_scan_equals_python_loop

# scan_impl "ref" compiles fastest; the other impls are checked against it in test_scan.py.
CFG = dataclasses.replace(
    sizes.get("caduceus_tiny"), d_model=16, n_layers=2, d_state=4, scan_impl="ref"
)
TOL = dict(rtol=2e-4, atol=2e-5)  # float32, a few layers deep


def tokens(seed, Bsz=2, L=13):
    """Random DNA with a few specials (pad/mask/unk), which RC maps to themselves."""
    return jax.random.randint(jax.random.key(seed), (Bsz, L), 0, 7)


@eqx.filter_jit
def logits_of(model, t):
    return model(t)


def build(cfg, seed=0):
    # Eager on purpose: each init primitive compiles once per process and every model of the
    # same shapes after the first builds in milliseconds (one jit per config would not).
    return build_model(cfg, jax.random.key(seed))


@pytest.fixture(scope="module")
def model():
    return build(CFG)


# --- the three RCPS pieces ------------------------------------------------------------------


def test_folded_embedding_equals_channel_definition_and_is_equivariant():
    E = jax.random.normal(jax.random.key(1), (8, 5))
    x = tokens(2)
    folded = E[rcps.fold(x)]
    np.testing.assert_array_equal(rcps.to_channels(folded), rcps.embed_channels(E, x))
    np.testing.assert_array_equal(rcps.from_channels(rcps.to_channels(folded)), folded)
    # RC equivariance in the channel view: embedding rc(x) = flip_{L,C} of embedding x.
    np.testing.assert_array_equal(
        rcps.embed_channels(E, reverse_complement(x)), rcps.rc_channels(rcps.embed_channels(E, x))
    )


def test_block_on_folded_batch_equals_channel_definition_and_is_equivariant(model):
    block = layer_at(model.blocks, 1)
    h_2BLD = jax.random.normal(jax.random.key(4), (4, 11, CFG.d_model))  # folded batch of B = 2
    h_BLC = rcps.to_channels(h_2BLD)

    @jax.jit
    def views(h_2BLD, h_BLC):
        return (
            rcps.to_channels(block(h_2BLD)),  # folded batch, shown in the channel view
            rcps.block_channels(block, h_BLC),  # the published definition
            rcps.block_channels(block, rcps.rc_channels(h_BLC)),  # ... applied to rc(h)
        )

    folded, published, on_rc = views(h_2BLD, h_BLC)
    np.testing.assert_allclose(folded, published, **TOL)
    np.testing.assert_allclose(on_rc, rcps.rc_channels(published), **TOL)


def test_folded_head_equals_channel_definition_and_is_equivariant():
    W = jax.random.normal(jax.random.key(5), (8, 6))
    h_2BLD = jax.random.normal(jax.random.key(6), (4, 9, 6))
    h_BLC = rcps.to_channels(h_2BLD)
    np.testing.assert_allclose(rcps.head(h_2BLD, W), rcps.head_channels(W, h_BLC), **TOL)
    np.testing.assert_allclose(
        rcps.head_channels(W, rcps.rc_channels(h_BLC)), rcps.rc_logits(rcps.head_channels(W, h_BLC)), **TOL
    )


# --- whole models -----------------------------------------------------------------------------


def test_caduceus_ps_is_rc_equivariant(model):
    x = tokens(7)
    out = logits_of(model, x)
    assert out.shape == (2, 13, 8) and out.dtype == jnp.float32
    np.testing.assert_allclose(logits_of(model, reverse_complement(x)), rcps.rc_logits(out), **TOL)


def test_caduceus_ph_conjoined_is_rc_equivariant_and_plain_model_is_not():
    model = build(dataclasses.replace(CFG, rcps=False))
    x = tokens(8)
    rc = reverse_complement(x)
    conj = eqx.filter_jit(conjoined_logits)
    np.testing.assert_allclose(conj(model, rc), rcps.rc_logits(conj(model, x)), **TOL)
    gap = jnp.abs(logits_of(model, rc) - rcps.rc_logits(logits_of(model, x))).max()
    assert float(gap) > 1e-4  # so the check above is not vacuous


def test_caduceus_is_bidirectional(model):
    h = jax.random.normal(jax.random.key(9), (1, 10, CFG.d_model))
    t = 4
    g = jax.jit(jax.grad(lambda h: jnp.sum(model.trunk(h)[0, t])))(h)
    assert float(jnp.abs(g[0, t + 1 :]).sum(-1).min()) > 0  # every later position matters
    assert float(jnp.abs(g[0, :t]).sum(-1).min()) > 0


def test_scan_over_layers_equals_python_loop(model):
    h = jax.random.normal(jax.random.key(10), (2, 12, CFG.d_model))
    assert_scan_equals_python_loop(model, h, **TOL)


def test_remat_gives_the_same_gradients(model):
    """remat only changes what the backward pass stores: gradients through the stacked blocks
    must be the same. (The blocks alone: the embedding and head do not see the switch.)"""
    h = jax.random.normal(jax.random.key(11), (2, 10, CFG.d_model))
    w = jax.random.normal(jax.random.key(12), h.shape)

    @eqx.filter_jit
    def grads(blocks, remat):
        return eqx.filter_grad(lambda b: jnp.sum(w * scan_layers(b, h, remat=remat)))(blocks)

    with_remat, without = grads(model.blocks, True), grads(model.blocks, False)
    for a, b in zip(jax.tree.leaves(with_remat), jax.tree.leaves(without)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)
    assert build(dataclasses.replace(CFG, remat=True)).remat  # the config reaches the model


def test_bfloat16_compute_keeps_float32_params_and_logits(model):
    x = tokens(13)
    f32 = model
    bf16 = build(dataclasses.replace(CFG, compute_dtype="bfloat16"))
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(eqx.filter(bf16, eqx.is_array)))
    out = logits_of(bf16, x)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, logits_of(f32, x), rtol=5e-2, atol=5e-2)


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="arch"):
        dataclasses.replace(CFG, arch="mamba2")
    with pytest.raises(ValueError, match="compute_dtype"):
        dataclasses.replace(CFG, compute_dtype="fp8")
