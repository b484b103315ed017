"""Shared check for both model families: lax.scan over stacked layers vs a Python loop."""

import copy

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from nanodna.models.layers import layer_at, n_stacked


def assert_scan_equals_python_loop(model, h_BLD, **tol):
    """model.trunk (layers under lax.scan) must equal applying each layer in turn, then norm_f;
    and the same model with unroll_layers (ModelConfig) must give the same outputs and
    parameter gradients."""
    assert not model.unroll_layers

    @jax.jit
    def looped(h):
        for i in range(n_stacked(model.blocks)):
            h = layer_at(model.blocks, i)(h)
        return model.norm_f(h)

    scanned = eqx.filter_jit(lambda m, h: m.trunk(h))(model, h_BLD)
    np.testing.assert_allclose(scanned, looped(h_BLD), **tol)

    unrolled = copy.copy(model)
    object.__setattr__(unrolled, "unroll_layers", True)  # a static field: not in tree_at's reach
    np.testing.assert_allclose(eqx.filter_jit(lambda m, h: m.trunk(h))(unrolled, h_BLD), scanned,
                               **tol)
    grad = eqx.filter_jit(eqx.filter_grad(lambda m: jnp.sum(jnp.sin(m.trunk(h_BLD)))))
    g_scan, g_loop = (jax.tree.leaves(eqx.filter(grad(m), eqx.is_array)) for m in (model, unrolled))
    assert sum(np.abs(np.asarray(a)).max() > 0 for a in g_scan) > 3  # embed / head get none
    for a, b in zip(g_scan, g_loop, strict=True):
        np.testing.assert_allclose(b, a, rtol=tol.get("rtol", 1e-5),
                                   atol=10 * tol.get("atol", 1e-6) * np.abs(np.asarray(a)).max())
