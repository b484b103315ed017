"""BiMamba's two depthwise convolutions + SiLU as one CPU kernel pass (depthwise_conv.cc).

`conv_silu_bidirectional_cpu(xz, w, b)` is the forward and `conv_silu_bidirectional_bwd_cpu`
its hand-written backward, as plain functions: nanodna/ops/conv.py pairs them in a custom_vjp.
Like the rest of kernels/cpu this imports nothing from nanodna.

Glossary: B batch, L length, E conv channels (d_inner), W conv width (d_conv; the C++ file
calls it K, since there W is the vector width). xz (B, L, E2 = 2E) is the in_proj output, x then
the gate z: the kernels convolve its first E channels in place (any last axis >= E works).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from kernels.cpu import build

CONV_MAX_W = 8  # depthwise_conv.cc's kMaxK
STEPS = 32  # depthwise_conv.cc's kSteps: time steps per work item


def conv_supported(xz: jax.Array, w: jax.Array) -> bool:
    """Whether the kernels take xz (B, L, >= E) and w (2, E, W): float32, E a multiple of 16,
    W at most 8."""
    E, W = w.shape[1], w.shape[2]
    return (xz.dtype == jnp.float32 and w.dtype == jnp.float32 and E % build.CHANNEL_MULTIPLE == 0
            and E <= xz.shape[-1] and 1 <= W <= CONV_MAX_W)


def _check():
    if build.load() is None:
        raise RuntimeError(f"the CPU kernels are unavailable: {build.error()}")


def conv_silu_bidirectional_cpu(
    xz: Float[Array, "B L E2"], w: Float[Array, "2 E W"], b: Float[Array, "2 E"]
) -> tuple[Float[Array, "B L E"], Float[Array, "B L E"]]:
    """(silu(causal conv of x = xz[..., :E] with w[0], b[0]), silu(anti-causal conv of x with
    w[1], b[1])), x zero past both ends, in one pass that reads x in place (no slice copy).

    float32, no gradient rule (conv_silu_bidirectional_bwd_cpu is the backward). Raises
    RuntimeError when the kernels could not be built (build.error()); shapes conv_supported
    refuses fail in the kernel with a one-line INVALID_ARGUMENT.
    """
    _check()
    B, L, _ = xz.shape
    out = jax.ShapeDtypeStruct((B, L, w.shape[1]), jnp.float32)
    call = jax.ffi.ffi_call("nanodna_conv_silu_bidirectional_f32", (out, out),
                            vmap_method="sequential")
    return call(xz, w, b)


def conv_silu_bidirectional_bwd_cpu(
    xz: Float[Array, "B L E2"], w: Float[Array, "2 E W"], b: Float[Array, "2 E"],
    du0: Float[Array, "B L E"], du1: Float[Array, "B L E"],
) -> tuple[Float[Array, "B L E"], Float[Array, "2 E W"], Float[Array, "2 E"]]:
    """Gradients of sum(du0 u0 + du1 u1), (u0, u1) = conv_silu_bidirectional_cpu(xz, w, b):
    (dx for x = xz[..., :E], dw, db). The SiLU's input is recomputed from x; nothing is saved
    by the forward. float32; errors as conv_silu_bidirectional_cpu's."""
    _check()
    B, L, _ = xz.shape
    E, W = w.shape[1], w.shape[2]
    items = B * -(-L // STEPS)
    sds = lambda shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731
    call = jax.ffi.ffi_call("nanodna_conv_silu_bidirectional_bwd_f32",
                            (sds((B, L, E)), sds((items, 2, W, E)), sds((items, 2, E))),
                            vmap_method="sequential")
    dx, dtaps_I2WE, db_I2E = call(xz, w, b, du0.astype(jnp.float32), du1.astype(jnp.float32))
    dtaps_2WE = dtaps_I2WE.sum(0)  # tap-major, direction 1 flipped (depthwise_conv.cc's taps)
    dw = jnp.stack([dtaps_2WE[0].T, dtaps_2WE[1, ::-1].T])
    return dx, dw, db_I2E.sum(0)
