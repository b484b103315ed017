"""The fused bidirectional launch vs two reference scans: outputs and every gradient."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxtyping import TypeCheckError

from kernels.pallas import Backend, bidirectional_scan_pallas
from kernels.pallas.bidirectional import check_stacked
from kernels.pallas.plan import is_hopper_or_newer
from nanodna.ops.scan import ARG_NAMES as ARGS
from nanodna.ops.scan import bidirectional_scan_ref, random_scan_inputs

TOL = {jnp.float32: dict(rtol=6e-4, atol=2e-3), jnp.bfloat16: dict(rtol=3e-2, atol=5e-2)}


def make_inputs(seed, Bz, L, Dc, N, dtype):
    """Per-direction inputs stacked on a leading axis of 2; the gate z is shared."""
    return random_scan_inputs(jax.random.key(seed), Bz, L, Dc, N, dtype, S=2)


@functools.partial(jax.jit, static_argnums=0)
def value_and_vjp(fn, x, ct):
    y, vjp = jax.vjp(lambda x: fn(**x, delta_softplus=True), x)
    return y, vjp(ct)[0]


@pytest.mark.parametrize(
    "dtype, backend",
    [(jnp.float32, "interpreter"), (jnp.bfloat16, "triton_interpret"),
     pytest.param(jnp.bfloat16, "mosaic_gpu_interpret", marks=pytest.mark.slow)],
)
def test_fused_matches_two_reference_scans(dtype, backend):
    # Batch 4 = 2 sequences x 2 RC strands folded in; odd L, D and N force padding.
    x = make_inputs(7, 4, 19, 6, 3, dtype)
    ct = jax.random.normal(jax.random.key(8), x["z"].shape).astype(dtype)
    block_d = None if backend.startswith("mosaic_gpu") else 4  # Mosaic GPU: 128, one per thread
    fused = functools.partial(bidirectional_scan_pallas, chunk=8, block_d=block_d,
                              backend=Backend.named(backend))  # fmt: skip
    y, grads = value_and_vjp(fused, x, ct)
    y_ref, grads_ref = value_and_vjp(bidirectional_scan_ref, x, ct)
    for name, got, want in [("y", y, y_ref)] + [(f"d{k}", grads[k], grads_ref[k]) for k in ARGS]:
        assert got.shape == want.shape and got.dtype == want.dtype, name
        got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
        assert np.isfinite(got).all(), name
        np.testing.assert_allclose(got, want, err_msg=name, **TOL[dtype])


def test_reference_backward_of_the_fused_launch():
    # backward="reference": the fused forward kernel with gradients from autodiff of a lax.scan
    # over both directions (kernels/pallas/reference_backward.py) against nanodna's reference.
    x = make_inputs(9, 2, 11, 5, 3, jnp.float32)
    ct = jax.random.normal(jax.random.key(10), x["z"].shape)
    fused = functools.partial(bidirectional_scan_pallas, chunk=4, backward="reference")
    y, grads = value_and_vjp(fused, x, ct)
    y_ref, grads_ref = value_and_vjp(bidirectional_scan_ref, x, ct)
    for name, got, want in [("y", y, y_ref)] + [(f"d{k}", grads[k], grads_ref[k]) for k in ARGS]:
        np.testing.assert_allclose(got, want, err_msg=name, **TOL[jnp.float32])


@pytest.mark.parametrize("backend", ["triton", "mosaic_gpu"])
def test_lowers_for_gpu(backend):
    x = make_inputs(10, 2, 64, 64, 16, jnp.bfloat16)

    def loss(x):
        y = bidirectional_scan_pallas(**x, delta_softplus=True, backend=Backend(backend))
        return y.astype(jnp.float32).sum()

    text = jax.jit(jax.grad(loss)).trace(x).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("selective_scan_") >= 2


def test_needs_two_directions():
    x = make_inputs(11, 1, 4, 2, 2, jnp.float32)
    x["A"] = x["A"][:1]
    # jaxtyping's checker (on in tests) or the kernel's own check, whichever sees it first.
    with pytest.raises((ValueError, TypeCheckError)):
        bidirectional_scan_pallas(**x)
    with pytest.raises(ValueError, match="direction axis"):  # the message users see
        check_stacked(**x)


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("backend", ["triton", "mosaic_gpu"])
def test_gpu_fused_launch(dtype, backend):
    if backend == "mosaic_gpu" and not is_hopper_or_newer():
        pytest.skip("Mosaic GPU needs Hopper (sm_90) or newer")
    x = make_inputs(12, 4, 300, 200, 16, dtype)
    ct = jax.random.normal(jax.random.key(13), x["z"].shape).astype(dtype)
    fused = functools.partial(bidirectional_scan_pallas, backend=Backend(backend))
    y, grads = value_and_vjp(fused, x, ct)
    y_ref, grads_ref = value_and_vjp(bidirectional_scan_ref, x, ct)
    for name, got, want in [("y", y, y_ref)] + [(f"d{k}", grads[k], grads_ref[k]) for k in ARGS]:
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                                   err_msg=name, **TOL[dtype])  # fmt: skip
