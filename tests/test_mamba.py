"""Mamba mixer and BiMamba: conv directions, the initialisation mamba-ssm prescribes, and the
optimised BiMamba (shared projections, anti-causal conv, reverse scan) against the literal
flip -> mamba -> flip definition."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nanodna.models import sizes
from nanodna.models.mamba import DT_MAX, DT_MIN, BiMamba
from nanodna.ops.conv import depthwise_conv

CFG = dataclasses.replace(  # "ref" compiles fastest; test_scan.py covers the other impls
    sizes.get("caduceus_tiny"), d_model=16, d_state=4, n_layers=2, scan_impl="ref"
)
TOL = dict(rtol=1e-4, atol=1e-5)


def rand(seed, shape):
    return jax.random.normal(jax.random.key(seed), shape)


def test_causal_conv_matches_numpy_and_reverse_is_flipped():
    x, w, b = rand(0, (2, 13, 5)), rand(1, (5, 4)), rand(2, (5,))
    y = depthwise_conv(x, w, b)
    xn, wn = np.asarray(x), np.asarray(w)
    for e in range(5):  # np.convolve flips its kernel: y[t] = sum_k w[k] x[t + k - 3]
        full = np.stack([np.convolve(xn[i, :, e], wn[e, ::-1])[:13] for i in range(2)])
        np.testing.assert_allclose(y[..., e], full + float(b[e]), **TOL)
    y_rev = depthwise_conv(x, w, b, reverse=True)
    np.testing.assert_allclose(y_rev, jnp.flip(depthwise_conv(jnp.flip(x, 1), w, b), 1), **TOL)


def test_ssm_initialisation_follows_mamba():
    bi = BiMamba(CFG, key=jax.random.key(3))
    ssm = bi.fwd.ssm
    dt = jax.nn.softplus(ssm.dt_proj.bias)
    assert float(dt.min()) >= DT_MIN * 0.999 and float(dt.max()) <= DT_MAX * 1.001
    assert float(jnp.std(jnp.log(dt))) > 0.5  # log-uniform spread, not a constant
    A = -jnp.exp(ssm.A_log)
    np.testing.assert_allclose(A, -jnp.tile(jnp.arange(1, CFG.d_state + 1.0), (CFG.d_inner, 1)), **TOL)
    np.testing.assert_array_equal(ssm.D, 1.0)
    assert ssm.dt_proj.weight.shape == (CFG.d_inner, CFG.dt_rank)
    assert float(jnp.abs(ssm.dt_proj.weight).max()) <= CFG.dt_rank**-0.5
    # The two directions are initialised independently.
    assert not np.allclose(bi.fwd.ssm.conv_weight, bi.rev.conv_weight)


def literal_bimamba(bi, x, tied):
    """Caduceus' definition: mamba_fwd(x) + flip(mamba_rev(flip(x)))."""
    rev = eqx.tree_at(lambda m: m.ssm, bi.fwd, bi.rev) if tied else bi.rev  # fwd's projections
    return bi.fwd(x) + jnp.flip(rev(jnp.flip(x, 1)), 1)


@pytest.mark.parametrize("tied", [True, False])
def test_bimamba_equals_flip_mamba_flip(tied):
    cfg = dataclasses.replace(CFG, tie_in_out_proj=tied)
    bi = BiMamba(cfg, key=jax.random.key(4))
    x = rand(5, (2, 11, cfg.d_model))
    fast, literal = eqx.filter_jit(lambda m, x: (m(x), literal_bimamba(m, x, tied)))(bi, x)
    np.testing.assert_allclose(fast, literal, **TOL)


def test_tying_shares_projections_only():
    tied = BiMamba(dataclasses.replace(CFG, tie_in_out_proj=True), key=jax.random.key(6))
    untied = BiMamba(dataclasses.replace(CFG, tie_in_out_proj=False), key=jax.random.key(6))
    n = lambda m: sum(a.size for a in jax.tree.leaves(m))  # noqa: E731
    D, E = CFG.d_model, CFG.d_inner
    assert n(untied) - n(tied) == D * 2 * E + E * D  # one extra in_proj and out_proj


def test_unidirectional_mamba_is_causal():
    bi = BiMamba(dataclasses.replace(CFG, bidirectional=False), key=jax.random.key(7))
    x = rand(8, (1, 9, CFG.d_model))
    t = 4
    g = jax.jit(jax.grad(lambda x: jnp.sum(bi(x)[0, t])))(x)
    assert float(jnp.abs(g[0, t + 1 :]).max()) == 0.0
    assert float(jnp.abs(g[0, : t + 1]).min(axis=-1).max()) > 0.0


def test_bimamba_sees_both_sides():
    bi = BiMamba(CFG, key=jax.random.key(9))
    x = rand(10, (1, 9, CFG.d_model))
    g = jax.jit(jax.grad(lambda x: jnp.sum(bi(x)[0, 4])))(x)
    assert float(jnp.abs(g[0, 5:]).sum()) > 0 and float(jnp.abs(g[0, :4]).sum()) > 0


def test_bimamba_with_the_pallas_kernel_matches_reference():
    """scan_impl="pallas" sends both directions to the fused kernel (interpret mode on CPU)."""
    pytest.importorskip("kernels.pallas")
    bi_ref = BiMamba(CFG, key=jax.random.key(11))
    bi_pallas = BiMamba(dataclasses.replace(CFG, scan_impl="pallas"), key=jax.random.key(11))
    x = rand(12, (2, 9, CFG.d_model))
    np.testing.assert_allclose(bi_pallas(x), bi_ref(x), rtol=6e-4, atol=2e-3)
