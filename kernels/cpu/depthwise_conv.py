"""BiMamba's two depthwise convolutions + SiLU as one CPU kernel pass (depthwise_conv.cc).

`conv_silu_bidirectional_cpu(x, w, b)` is the raw forward: no gradient rule, for inference
(nanodna/ops/conv.py wraps it in a custom_vjp whose backward is XLA's). Like the rest of
kernels/cpu it imports nothing from nanodna.

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

    Forward only (no gradient rule). float32. Raises RuntimeError when the kernels could not be
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
