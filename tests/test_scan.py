"""Selective scan: the reference against a float64 NumPy loop, every implementation against the
reference, reverse against flip-scan-flip, gradients against finite differences (float64). Tolerances: mamba-ssm's (fp32 rtol 6e-4 atol 2e-3; bf16 rtol 3e-2 atol 5e-2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from nanodna.ops import random_scan_inputs, selective_scan, selective_scan_ref
from nanodna.ops.scan import resolve_impl

FP32 = dict(rtol=6e-4, atol=2e-3)
BF16 = dict(rtol=3e-2, atol=5e-2)
XLA_IMPLS = ["chunked", "chunked_seq", "assoc"]
CHUNKED = ["chunked", "chunked_seq"]  # assoc shares chunked's math, so it is tested once


def make_inputs(seed, Bsz=2, L=37, Dch=6, N=4, dtype=jnp.float32):
    """The shared factory's inputs (all optional arguments present) at this file's shapes."""
    return random_scan_inputs(jax.random.key(seed), Bsz, L, Dch, N, dtype)


def numpy_loop(u, delta, A, B, C, D, z, delta_bias):
    """The recurrence written out with explicit loops in float64."""
    arrays = (u, delta, A, B, C, D, z, delta_bias)
    u, delta, A, B, C, D, z, bias = (np.asarray(a, np.float64) for a in arrays)
    dt = np.log1p(np.exp(delta + bias))  # softplus
    Bsz, L, Dch = u.shape
    y = np.zeros_like(u)
    for b in range(Bsz):
        h = np.zeros(A.shape)
        for t in range(L):
            h = np.exp(dt[b, t][:, None] * A) * h + (dt[b, t] * u[b, t])[:, None] * B[b, t][None, :]
            y[b, t] = h @ C[b, t] + D * u[b, t]
    return y * z / (1 + np.exp(-z))


def test_reference_matches_float64_numpy_loop():
    x = make_inputs(0, L=19)
    y = selective_scan_ref(**x, delta_softplus=True)
    np.testing.assert_allclose(np.asarray(y), numpy_loop(**x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", ["ref", "chunked_seq"])  # chunked shares the flip code path
def test_reverse_is_flip_scan_flip(impl):
    x = make_inputs(1)
    flipped = {k: (jnp.flip(v, 1) if v.ndim == 3 else v) for k, v in x.items()}
    y_rev = selective_scan(**x, delta_softplus=True, reverse=True, impl=impl, chunk=8)
    y_flip = jnp.flip(selective_scan(**flipped, delta_softplus=True, impl=impl, chunk=8), 1)
    np.testing.assert_allclose(y_rev, y_flip, **FP32)


@pytest.mark.parametrize(
    "impl,L,chunk,reverse",
    [(impl, 37, 8, False) for impl in XLA_IMPLS]  # 37 = 4 chunks of 8 + a partial one
    + [(impl, 5, 8, True) for impl in CHUNKED],  # shorter than one chunk
)
def test_impl_matches_reference(impl, L, chunk, reverse):
    x = make_inputs(2 + L, L=L)
    y_ref = selective_scan_ref(**x, delta_softplus=True, reverse=reverse)
    y = selective_scan(**x, delta_softplus=True, reverse=reverse, impl=impl, chunk=chunk)
    assert y.shape == y_ref.shape and y.dtype == jnp.float32
    np.testing.assert_allclose(y, y_ref, **FP32)


@pytest.mark.parametrize("impl", CHUNKED)
def test_impl_without_optional_arguments(impl):
    x = make_inputs(3)
    core = {k: x[k] for k in ("u", "delta", "A", "B", "C")}
    core["delta"] = jnp.abs(core["delta"])  # no softplus here: delta must be positive itself
    y_ref = selective_scan_ref(**core)
    np.testing.assert_allclose(selective_scan(**core, impl=impl, chunk=8), y_ref, **FP32)


@pytest.mark.parametrize("impl", ["ref", "chunked_seq"])  # the casts are shared by all impls
def test_bfloat16_inputs_keep_dtype_and_match_float32(impl):
    x16 = make_inputs(4, dtype=jnp.bfloat16)
    x32 = {k: v.astype(jnp.float32) for k, v in x16.items()}  # the same values, exactly
    y16 = selective_scan(**x16, delta_softplus=True, impl=impl, chunk=8)
    y32 = selective_scan_ref(**x32, delta_softplus=True)
    assert y16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y16, np.float32), y32, **BF16)


@pytest.mark.parametrize("impl", CHUNKED)
def test_gradients_match_finite_differences_float64(impl):
    with jax.enable_x64(True):
        x = make_inputs(6, Bsz=1, L=11, Dch=3, N=2, dtype=jnp.float64)
        names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")

        f = jax.jit(lambda *args: selective_scan(*args, delta_softplus=True, impl=impl, chunk=4))
        args = tuple(x[k] for k in names)
        assert f(*args).dtype == jnp.float64  # float64 in, float64 state and out
        check_grads(f, args, order=1, modes=["rev"], atol=1e-5, rtol=1e-5)


def test_bad_impl_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown selective-scan impl"):
        selective_scan(**make_inputs(7), impl="cuda")


def test_auto_never_needs_the_pallas_kernel_on_cpu():
    assert jax.default_backend() == "cpu"
    assert resolve_impl("auto") in ("cpu", "chunked_vjp")


def test_pallas_dispatch_matches_reference():
    """impl="pallas" routes to the kernel (interpret mode on CPU) with the same contract."""
    x = make_inputs(8, L=9)
    y = selective_scan(**x, delta_softplus=True, reverse=True, impl="pallas")
    np.testing.assert_allclose(y, selective_scan_ref(**x, delta_softplus=True, reverse=True), **FP32)
