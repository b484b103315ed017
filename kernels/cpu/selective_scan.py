"""The fused CPU selective scan (selective_scan.cc) as a differentiable JAX function.

`selective_scan_cpu(u, dt, A, B, C, reverse, bidirectional)` has the contract of
nanodna/ops/scan_vjp.py's `chunked_scan`: S independent scans, dt the final step size (bias
and softplus applied), no skip and no gate (those stay elementwise in nanodna.ops.scan, under
autodiff). bidirectional runs direction s = 1 the other way round (BiMamba's reverse scan, in
the sequence's own coordinates: no flips). Its backward is the kernel's hand-written adjoint;
undifferentiated calls (scoring) run the forward only. `sharded_selective_scan_cpu` runs it
per device when the batch is split over a mesh (XLA cannot partition a custom call).

Glossary: S directions stacked, B batch, L length, D channels, N state size, P channel blocks.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AbstractMesh, Mesh
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Float

from kernels.cpu import build

D_BLOCK = 64  # channels per work item: items = S x B x ceil(D / D_BLOCK), spread over threads


def _suffix(dtype) -> str:
    if dtype == jnp.float32:
        return "f32"
    if dtype == jnp.float64:
        return "f64"
    raise TypeError(f"the CPU scan kernel takes float32 or float64 inputs, not {dtype}")


def _check(u, dt, A, B, C):
    if build.load() is None:
        raise RuntimeError(f"the CPU scan kernel is unavailable: {build.error()}")
    if len({x.dtype for x in (u, dt, A, B, C)}) != 1:
        raise TypeError("the CPU scan kernel needs one dtype for u, dt, A, B and C")
    return _suffix(u.dtype)


def _attrs(reverse, bidirectional):
    return dict(reverse=np.bool_(reverse), bidirectional=np.bool_(bidirectional),
                d_block=np.int64(D_BLOCK))


def _forward(u, dt, A, B, C, reverse, bidirectional):
    kind = _check(u, dt, A, B, C)
    call = jax.ffi.ffi_call(f"nanodna_scan_fwd_{kind}", jax.ShapeDtypeStruct(u.shape, u.dtype),
                            vmap_method="sequential")
    return call(u, dt, A, B, C, **_attrs(reverse, bidirectional))


@partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def selective_scan_cpu(
    u: Float[Array, "S B L D"],
    dt: Float[Array, "S B L D"],
    A: Float[Array, "S D N"],
    B: Float[Array, "S B L N"],
    C: Float[Array, "S B L N"],
    reverse: bool = False,
    bidirectional: bool = False,
) -> Float[Array, "S B L D"]:
    """y_t = sum_n C_t h_t, h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t, for S independent scans.

    All inputs float32 (or float64, for gradient checks) of one dtype; reverse runs every scan
    from t = L-1 down, bidirectional flips that for direction s = 1 (S = 2, BiMamba). Raises
    RuntimeError when the kernel could not be built (build.error()), TypeError for other
    dtypes; shapes that disagree fail in the kernel with a one-line INVALID_ARGUMENT.
    """
    return _forward(u, dt, A, B, C, reverse, bidirectional)


def _fwd(u, dt, A, B, C, reverse, bidirectional):
    return _forward(u, dt, A, B, C, reverse, bidirectional), (u, dt, A, B, C)


def _bwd(reverse, bidirectional, res, dy):
    u, dt, A, B, C = res
    S, Bsz, L, D = u.shape
    N = A.shape[-1]
    P = -(-D // D_BLOCK)
    kind = _check(u, dt, A, B, C)
    sds = lambda shape: jax.ShapeDtypeStruct(shape, u.dtype)  # noqa: E731
    call = jax.ffi.ffi_call(
        f"nanodna_scan_bwd_{kind}",
        (sds(u.shape), sds(u.shape), sds((S, Bsz, D, N)), sds((S, Bsz, P, L, N)),
         sds((S, Bsz, P, L, N))),
        vmap_method="sequential",
    )
    du, ddt, dA_SBDN, dB_SBPLN, dC_SBPLN = call(
        u, dt, A, B, C, dy.astype(u.dtype), **_attrs(reverse, bidirectional))
    return du, ddt, dA_SBDN.sum(1), dB_SBPLN.sum(2), dC_SBPLN.sum(2)


selective_scan_cpu.defvjp(_fwd, _bwd)


def sharded_selective_scan_cpu(
    mesh: Mesh | AbstractMesh,
    axis_name: str | tuple[str, ...],
    u: Float[Array, "S B L D"],
    dt: Float[Array, "S B L D"],
    A: Float[Array, "S D N"],
    B: Float[Array, "S B L N"],
    C: Float[Array, "S B L N"],
    reverse: bool = False,
    bidirectional: bool = False,
) -> Float[Array, "S B L D"]:
    """selective_scan_cpu with the batch axis (1) split over mesh axis_name (one name or
    several), A replicated: each device scans its own rows, and shard_map's transpose sums A's
    gradient over devices. The batch must divide over the devices (nanodna.ops.scan.batch_mesh
    checks)."""
    rows = P(None, axis_name)
    return jax.shard_map(
        lambda u, dt, A, B, C: selective_scan_cpu(u, dt, A, B, C, reverse, bidirectional),
        mesh=mesh,
        in_specs=(rows, rows, P(), rows, rows),
        out_specs=rows,
        check_vma=False,  # a custom call has no replication rule; the specs above say it all
    )(u, dt, A, B, C)
