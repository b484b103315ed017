"""kernels/cpu's one-pass BiMamba convolution pair (depthwise_conv.cc) through nanodna.ops.conv.

The kernel must give what the model defined before it existed: silu of a causal depthwise
conv for the forward mixer and of flip(causal(flip(x))) for the reverse one, with zeros past
both ends, reading only the first E channels of the in_proj output; its hand-written backward
must give float64 autodiff's gradients.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import cpu as cpu_kernel
from nanodna.ops.conv import _conv_silu_xla, conv_silu_bidirectional

pytestmark = pytest.mark.skipif(not cpu_kernel.available(), reason="no C++ compiler")

KERNEL = "nanodna_conv_silu_bidirectional_f32"


def inputs(seed, B, L, C, E, K, dtype=jnp.float32):
    k = jax.random.split(jax.random.key(seed), 3)
    x = 4.0 * jax.random.normal(k[0], (B, L, C), dtype)  # wide: both SiLU tails
    w = jax.random.normal(k[1], (2, E, K), dtype)
    b = jax.random.normal(k[2], (2, E), dtype)
    return x, w, b


def causal_ref(x_BLE, w_EK, b_E):
    """float64 numpy: y_t = b + sum_k w[k] x_{t-K+1+k}, x = 0 before the start."""
    B, L, E = x_BLE.shape
    K = w_EK.shape[1]
    y = np.broadcast_to(b_E, (B, L, E)).copy()
    for t in range(L):
        for k in range(K):
            s = t - K + 1 + k
            if s >= 0:
                y[:, t] += w_EK[:, k] * x_BLE[:, s]
    return y


def silu(v):
    return v / (1.0 + np.exp(-v))


@pytest.mark.parametrize("L,K", [(37, 4), (3, 4), (1, 4), (20, 1), (20, 2), (19, 8)])
def test_kernel_matches_the_float64_definition_and_xla(L, K):
    E = 48  # three vectors of 16 lanes, or six of 8
    x, w, b = inputs(L * 10 + K, 3, L, 2 * E + 16, E, K)  # C > E: the kernel reads E of C
    u0, u1 = (np.asarray(a) for a in cpu_kernel.conv_silu_bidirectional_cpu(x, w, b))
    x64, w64, b64 = (np.asarray(a, np.float64) for a in (x, w, b))
    x_E = x64[..., :E]
    ref0 = silu(causal_ref(x_E, w64[0], b64[0]))
    ref1 = silu(causal_ref(x_E[:, ::-1], w64[1], b64[1]))[:, ::-1]  # flip(causal(flip(x)))
    for got, ref in ((u0, ref0), (u1, ref1)):
        assert got.shape == (3, L, E) and np.isfinite(got).all() and (got != 0).mean() > 0.99
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    xla0, xla1 = _conv_silu_xla(x, w, b)
    np.testing.assert_allclose(u0, xla0, rtol=1e-5, atol=1e-6 * np.abs(ref0).max())
    np.testing.assert_allclose(u1, xla1, rtol=1e-5, atol=1e-6 * np.abs(ref1).max())


@pytest.mark.parametrize("L,K", [(23, 4), (70, 4), (3, 4), (40, 1), (37, 8)])
def test_backward_matches_float64_autodiff(L, K):
    """The kernel's hand-written backward against XLA autodiff of the definition in float64,
    across work-item boundaries (32 steps) and with L below K."""
    E = 32
    x, w, b = inputs(60 + L + K, 2, L, 3 * E, E, K)  # C = 3E: dx must be 0 past E
    r = jax.random.normal(jax.random.key(61), (2, 2, L, E))

    def loss(conv):
        return lambda *a: sum(jnp.sum(u * r[i].astype(u.dtype)) for i, u in enumerate(conv(*a)))

    g = jax.jit(jax.grad(loss(lambda *a: conv_silu_bidirectional(*a, impl="cpu")), (0, 1, 2)))(
        x, w, b)
    with jax.enable_x64(True):
        a64 = [jnp.asarray(np.asarray(a), jnp.float64) for a in (x, w, b)]
        g64 = [np.asarray(v) for v in jax.grad(loss(_conv_silu_xla), (0, 1, 2))(*a64)]
    for name, got, ref in zip(("x", "w", "b"), g, g64, strict=True):
        got = np.asarray(got)
        assert got.shape == ref.shape and np.isfinite(got).all(), name
        assert np.abs(ref).max() > 0, name
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max(),
                                   err_msg=name)
    assert (np.asarray(g[0])[..., :E] != 0).mean() > 0.99  # every dx element written
    assert not np.asarray(g[0])[..., E:].any()  # channels past E do not feed the conv


def test_the_kernel_runs_only_where_it_applies():
    def jaxpr(E, impl="cpu", dtype=jnp.float32):
        x, w, b = inputs(70, 1, 9, 2 * E, E, 4, dtype)
        return str(jax.make_jaxpr(lambda *a: conv_silu_bidirectional(*a, impl=impl))(x, w, b))

    assert KERNEL in jaxpr(48)
    assert KERNEL not in jaxpr(40)  # 40 channels: not whole vectors
    assert KERNEL not in jaxpr(48, impl="chunked_vjp")  # the XLA paths keep XLA's conv
    with jax.enable_x64(True):
        assert KERNEL not in jaxpr(48, dtype=jnp.float64)


def test_shapes_it_does_not_take_are_one_line_errors():
    x, w, b = inputs(80, 1, 5, 24, 12, 4)  # 12 channels: not a multiple of the lanes
    with pytest.raises(Exception, match="E must divide by"):
        jax.block_until_ready(cpu_kernel.conv_silu_bidirectional_cpu(x, w, b))
    x, w, b = inputs(81, 1, 5, 32, 16, 9)  # wider than kMaxK
    with pytest.raises(Exception, match="width K must be 1 .. 8"):
        jax.block_until_ready(cpu_kernel.conv_silu_bidirectional_cpu(x, w, b))
    with pytest.raises(ValueError, match="the conv has 16 channels but x has only 8"):
        conv_silu_bidirectional(x[..., :8], w[..., :4], b)
