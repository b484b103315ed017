"""BiMamba's two depthwise convolutions + SiLU as one CPU kernel pass (depthwise_conv.cc).

`conv_silu_bidirectional_cpu(x, w, b)` is the forward and `conv_silu_bidirectional_bwd_cpu`
its hand-written backward, as plain functions: nanodna/ops/conv.py pairs them in a custom_vjp.
Like the rest of kernels/cpu this imports nothing from nanodna.

Glossary: B batch, L length, C channels of x (the first E are convolved), E conv channels,
K conv width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from kernels.cpu import build

CONV_E_MULTIPLE = 16  # channels divide into vectors of 8 or 16 lanes
CONV_MAX_K = 8  # depthwise_conv.cc's kMaxK
STEPS = 32  # depthwise_conv.cc's kSteps: time steps per work item


def conv_supported(x: jax.Array, w: jax.Array) -> bool:
    """Whether conv_silu_bidirectional_cpu takes x (B, L, C) and w (2, E, K): float32, E a
    multiple of 16 and at most C, K at most 8."""
    E, K = w.shape[1], w.shape[2]
    return (x.dtype == jnp.float32 and w.dtype == jnp.float32 and E % CONV_E_MULTIPLE == 0
            and E <= x.shape[-1] and 1 <= K <= CONV_MAX_K)


def conv_silu_bidirectional_cpu(
    x: Float[Array, "B L C"], w: Float[Array, "2 E K"], b: Float[Array, "2 E"]
) -> tuple[Float[Array, "B L E"], Float[Array, "B L E"]]:
    """(silu(causal conv of x[..., :E] with w[0], b[0]), silu(anti-causal conv with w[1],
    b[1])), zero-padded at the ends, in one pass over x (no slice of x is copied).

    No gradient rule of its own (conv_silu_bidirectional_bwd_cpu is its backward). float32.
    Raises RuntimeError when the kernels could not be
    built (build.error()); shapes conv_supported refuses fail in the kernel with a one-line
    INVALID_ARGUMENT.
    """
    if build.load() is None:
        raise RuntimeError(f"the CPU kernels are unavailable: {build.error()}")
    B, L, _ = x.shape
    out = jax.ShapeDtypeStruct((B, L, w.shape[1]), jnp.float32)
    call = jax.ffi.ffi_call("nanodna_conv_silu_bidirectional_f32", (out, out),
                            vmap_method="sequential")
    return call(x, w, b)


def conv_silu_bidirectional_bwd_cpu(
    x: Float[Array, "B L C"], w: Float[Array, "2 E K"], b: Float[Array, "2 E"],
    du0: Float[Array, "B L E"], du1: Float[Array, "B L E"],
) -> tuple[Float[Array, "B L E"], Float[Array, "2 E K"], Float[Array, "2 E"]]:
    """Gradients of sum(du0 u0 + du1 u1) for (u0, u1) = conv_silu_bidirectional_cpu(x, w, b):
    (dx for x's first E channels, dw, db). The SiLU's input is recomputed, nothing is saved
    by the forward. float32; errors as conv_silu_bidirectional_cpu's."""
    if build.load() is None:
        raise RuntimeError(f"the CPU kernels are unavailable: {build.error()}")
    B, L, _ = x.shape
    E, K = w.shape[1], w.shape[2]
    items = B * -(-L // STEPS)
    sds = lambda shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731
    call = jax.ffi.ffi_call("nanodna_conv_silu_bidirectional_bwd_f32",
                            (sds((B, L, E)), sds((items, 2, K, E)), sds((items, 2, E))),
                            vmap_method="sequential")
    dx, dwt_I2KE, db_I2E = call(x, w, b, du0.astype(jnp.float32), du1.astype(jnp.float32))
    dwt_2KE = dwt_I2KE.sum(0)  # tap-major, direction 1 flipped (depthwise_conv.cc's taps)
    dw = jnp.stack([dwt_2KE[0].T, dwt_2KE[1, ::-1].T])
    return dx, dw, db_I2E.sum(0)
