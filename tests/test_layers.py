"""layers.Linear's float32 path: x W^T + b over any leading shape (it flattens the leading axes
into rows, so that the weight gradient is a 2-D dot over rows), and its gradients, against
float64 numpy on fresh random inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nanodna.models.layers import Linear


@pytest.mark.parametrize("lead", [(), (7,), (3, 5), (2, 3, 4)])
def test_float32_linear_and_its_gradients_match_float64(lead):
    I, O = 37, 29
    kx, kl, kg = jax.random.split(jax.random.key(len(lead) + 11), 3)
    lin = Linear(I, O, key=kl, bias=True)
    x = jax.random.normal(kx, (*lead, I))
    g = jax.random.normal(kg, (*lead, O))  # the output's cotangent
    y, vjp = jax.vjp(lambda m, x: m(x), lin, x)
    d_lin, dx = vjp(g)
    x64, g64 = np.asarray(x, np.float64), np.asarray(g, np.float64)
    w64, b64 = np.asarray(lin.weight, np.float64), np.asarray(lin.bias, np.float64)
    assert y.shape == (*lead, O) and y.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y), x64 @ w64.T + b64, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dx), g64 @ w64, rtol=1e-5, atol=1e-5)
    rows_x, rows_g = x64.reshape(-1, I), g64.reshape(-1, O)
    np.testing.assert_allclose(np.asarray(d_lin.weight), rows_g.T @ rows_x, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(d_lin.bias), rows_g.sum(0), rtol=1e-5, atol=1e-4)
