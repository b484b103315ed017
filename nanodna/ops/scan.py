"""Selective scan (Mamba v1): one entry point, several implementations.

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t        (per channel d, state n)
    y_t = sum_n C_t[n] h_t[n] + D * u_t ;  y_t *= silu(z_t) if z is given

Layout is (batch, length, channels), mamba-ssm's semantics otherwise. The state is float32
whatever the input dtype; the output has u's dtype.

Glossary: B batch, L length, D channels (d_inner), N state size (d_state).
Note the clash mamba-ssm makes us live with: the arrays B (input matrix, B L N) and D (skip,
D) are named after the paper; the axis letters in names like u_BLD are the glossary above.

Implementations (`impl=`):
    "ref"      lax.scan over time; the ground truth every other path is tested against.
    "chunked"  XLA path: the sequence is cut into chunks, each chunk scanned in parallel with
               an associative scan, the state carried between chunks by lax.scan.
    "assoc"    one associative scan over the whole sequence (for benchmarks).
    "pallas"   the Pallas kernel in kernels/pallas (GPU / TPU, or interpret mode on CPU).
    "auto"     pallas on GPU/TPU, chunked on CPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


def _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """Cast to float32 and apply the delta bias / softplus, as every implementation does."""
    f32 = jnp.float32
    delta = delta.astype(f32)
    if delta_bias is not None:
        delta = delta + delta_bias.astype(f32)
    if delta_softplus:
        delta = jax.nn.softplus(delta)
    return u.astype(f32), delta, A.astype(f32), B.astype(f32), C.astype(f32)


def _finish(y_BLD, u, D, z, out_dtype):
    """Skip connection and gate, shared by every implementation."""
    f32 = jnp.float32
    if D is not None:
        y_BLD = y_BLD + u.astype(f32) * D.astype(f32)
    if z is not None:
        y_BLD = y_BLD * jax.nn.silu(z.astype(f32))
    return y_BLD.astype(out_dtype)


def selective_scan_ref(
    u: Float[Array, "B L D"],
    delta: Float[Array, "B L D"],
    A: Float[Array, "D N"],
    B: Float[Array, "B L N"],
    C: Float[Array, "B L N"],
    D: Float[Array, " D"] | None = None,
    z: Float[Array, "B L D"] | None = None,
    delta_bias: Float[Array, " D"] | None = None,
    delta_softplus: bool = False,
    reverse: bool = False,
) -> Float[Array, "B L D"]:
    """Reference: lax.scan over time, state h_BDN in float32. Slow but obviously right."""
    u32, delta32, A32, B32, C32 = _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    Bsz, _, Dch = u.shape
    N = A.shape[-1]

    def step(h_BDN, xs):
        u_BD, dt_BD, B_BN, C_BN = xs
        dA_BDN = jnp.exp(dt_BD[:, :, None] * A32[None])
        h_BDN = dA_BDN * h_BDN + (dt_BD * u_BD)[:, :, None] * B_BN[:, None, :]
        y_BD = jnp.einsum("bdn,bn->bd", h_BDN, C_BN)
        return h_BDN, y_BD

    xs = tuple(jnp.swapaxes(a, 0, 1) for a in (u32, delta32, B32, C32))  # time-major
    h0 = jnp.zeros((Bsz, Dch, N), jnp.float32)
    _, y_LBD = jax.lax.scan(step, h0, xs, reverse=reverse)
    return _finish(jnp.swapaxes(y_LBD, 0, 1), u, D, z, u.dtype)
