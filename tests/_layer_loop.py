"""Shared check for both model families: lax.scan over stacked layers vs a Python loop."""

import equinox as eqx
import jax
import numpy as np

from nanodna.models.layers import layer_at, n_stacked


def assert_scan_equals_python_loop(model, h_BLD, **tol):
    """model.trunk (layers under lax.scan) must equal applying each layer in turn, then norm_f."""

    @jax.jit
    def looped(h):
        for i in range(n_stacked(model.blocks)):
            h = layer_at(model.blocks, i)(h)
        return model.norm_f(h)

    scanned = eqx.filter_jit(lambda m, h: m.trunk(h))(model, h_BLD)
    np.testing.assert_allclose(scanned, looped(h_BLD), **tol)
