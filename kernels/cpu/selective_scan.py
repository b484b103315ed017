"""The fused CPU selective scan (selective_scan.cc) as a differentiable JAX function.

`selective_scan_cpu(u, dt, A, B, C, reverse, bidirectional)` has the contract of
nanodna/ops/scan_vjp.py's `chunked_scan`: S independent scans, dt the final step size (bias
and softplus applied), no skip and no gate (those stay elementwise in nanodna.ops.scan, under
autodiff). bidirectional runs direction s = 1 the other way round (BiMamba's reverse scan, in
the sequence's own coordinates: no flips). Its backward is the kernel's hand-written adjoint;
undifferentiated calls (scoring) run the forward only. `sharded_selective_scan_cpu` runs it
per device when the batch is split over a mesh (XLA cannot partition a custom call).
`bidirectional_gated_scan_cpu` is BiMamba's whole scan block (bias + softplus of dt, both
directions, D skip, SiLU gate) as one kernel pass, with a backward that is one kernel call
too; `gated_unfused` is the same block composed from the pieces above, its reference.

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

# Channels per work item: items = S x B x ceil(D / D_BLOCK), spread over threads. 128 rather
# than 64 halves the per-item cost of the backward's dB / dC lane sums: the gated backward at
# the l20 layer shape ran ~10% faster (BENCHMARKS.md, "Unrolled state loops").
D_BLOCK = 128

# Steps per chunk of the gated backward's replay: the training forward keeps each direction's h
# at the start of every CHUNK steps, and the backward replays one chunk at a time from there
# (selective_scan.cc, backward_lanes). 32, 64 and 128 ran the l20 layer's backward alike
# (1.16-1.25x faster than a whole-sequence replay); 64 keeps half of 32's extra memory, (2, B,
# L / 64, N, D) float32 per layer, half the size of the (B, L, D) pre (BENCHMARKS.md, "Saved
# chunk states for the gated backward").
CHUNK = 64


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


GATED_N = (4, 8, 16, 32, 64)


def gated_supported(u: jax.Array, A: jax.Array) -> bool:
    """Whether bidirectional_gated_scan_cpu takes these (S, B, L, D) / (S, D, N) shapes:
    float32, D a multiple of 16, N in GATED_N."""
    return (u.dtype == jnp.float32 and u.shape[-1] % build.CHANNEL_MULTIPLE == 0
            and A.shape[-1] in GATED_N and D_BLOCK % build.CHANNEL_MULTIPLE == 0)


def gated_unfused(u, dt_raw, A, B, C, bias, D, z):
    """(y_fwd + y_rev + D_0 u_0 + D_1 u_1) * silu(z), dt = softplus(dt_raw + bias), from
    selective_scan_cpu and XLA elementwise ops: the reference the gated op's forward and
    backward are tested against."""
    dt = jax.nn.softplus(dt_raw + bias[:, None, None, :])
    y = selective_scan_cpu(u, dt, A, B, C, False, True)
    return (y[0] + y[1] + u[0] * D[0] + u[1] * D[1]) * jax.nn.silu(z)


def _gated_call(target, results, args, *extra, **attrs):
    """The gated kernels take each direction's arrays as their own buffers: XLA then drops
    the caller's stack (no stacked copy), in the forward and in the backward."""
    u, dt_raw, A, B, C, bias, D, z = args
    _check(u, dt_raw, A, B, C)
    call = jax.ffi.ffi_call(target, results, vmap_method="sequential")
    return call(u[0], u[1], dt_raw[0], dt_raw[1], A, B[0], B[1], C[0], C[1], bias, D, z, *extra,
                d_block=np.int64(D_BLOCK), **attrs)


@jax.custom_vjp
def bidirectional_gated_scan_cpu(
    u: Float[Array, "2 B L D"],
    dt_raw: Float[Array, "2 B L D"],
    A: Float[Array, "2 D N"],
    B: Float[Array, "2 B L N"],
    C: Float[Array, "2 B L N"],
    bias: Float[Array, "2 D"],
    D: Float[Array, "2 D"],
    z: Float[Array, "B L D"],
) -> Float[Array, "B L D"]:
    """BiMamba's tied scan block, float32: direction 0 forward, 1 reverse (sequence order),
    dt = softplus(dt_raw + bias) per direction, out (y_0 + y_1 + D_0 u_0 + D_1 u_1) silu(z).

    One kernel pass: no softplus, stack, skip or gate passes over (B, L, D) arrays in XLA.
    Under a gradient the forward also keeps the value before the gate and each direction's
    state every CHUNK steps ((2, B, ceil(L / CHUNK), N, D) float32), and the backward is one
    kernel call too (each direction's scan backward plus the chain rule through softplus, skip
    and gate); it agrees with `gated_unfused`'s autodiff to float32 rounding. Shapes must pass
    `gated_supported` (the kernel answers others with a one-line INVALID_ARGUMENT).
    """
    return _gated_call("nanodna_scan_gated_fwd_f32", jax.ShapeDtypeStruct(z.shape, z.dtype),
                       (u, dt_raw, A, B, C, bias, D, z))


def _gated_fwd(*args):
    A, z = args[2], args[-1]
    (Bsz, L, Dch), N = z.shape, A.shape[-1]
    out = jax.ShapeDtypeStruct(z.shape, z.dtype)
    # h_chunks: each direction's state before every CHUNK steps of its processing order
    # (direction 1's chunk 0 starts at t = L - 1), for the backward's chunked replay.
    chunks = jax.ShapeDtypeStruct((2, Bsz, -(-L // CHUNK), N, Dch), jnp.float32)
    y, pre, h_chunks = _gated_call("nanodna_scan_gated_fwd_res_f32", (out, out, chunks), args,
                                   chunk=np.int64(CHUNK))
    return y, (args, pre, h_chunks)


def _gated_bwd(res, dy):
    args, pre, h_chunks = res
    u, dt_raw, A, B, C, bias, D, z = args
    Bsz, L, Dch = z.shape
    N, P = A.shape[-1], -(-Dch // D_BLOCK)
    sds = lambda shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731
    BLD, BPLN, SBD = sds((Bsz, L, Dch)), sds((Bsz, P, L, N)), sds((2, Bsz, Dch))
    results = (BLD, BLD, BLD, BLD, sds((2, Bsz, Dch, N)), BPLN, BPLN, BPLN, BPLN, SBD, SBD, BLD)
    du0, du1, ddt0, ddt1, dA_SBDN, dB0, dB1, dC0, dC1, dbias_SBD, dD_SBD, dz = _gated_call(
        "nanodna_scan_gated_bwd_f32", results, args, pre, h_chunks, dy.astype(jnp.float32),
        chunk=np.int64(CHUNK))
    return (jnp.stack([du0, du1]), jnp.stack([ddt0, ddt1]), dA_SBDN.sum(1),
            jnp.stack([dB0.sum(1), dB1.sum(1)]), jnp.stack([dC0.sum(1), dC1.sum(1)]),
            dbias_SBD.sum(1), dD_SBD.sum(1), dz)


bidirectional_gated_scan_cpu.defvjp(_gated_fwd, _gated_bwd)


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
