"""The chunked sequential selective scan with a hand-written backward (a jax.custom_vjp).

Autodiff of the chunked scan stores or rebuilds every step's (B, D, N) state and runs a
generic transpose of each op; on CPU that backward costs 7-11x the forward (BENCHMARKS.md).
Here the backward is written out: the forward keeps only the state entering each chunk,
(K, S, B, D, N), and the backward walks the chunks in reverse, recomputing one chunk's states
from its boundary state (a (T, S, B, D, N) buffer) and running the adjoint recurrence over it.

Maths (per direction s, batch b, channel d, state n; a_t = exp(delta_t A), b_t = delta_t B_t):

    h_t = a_t h_{t-1} + b_t u_t                       y_t = sum_n C_t h_t   (+ D u_t, gate: in scan.py)
    g_t = dL/dh_t = C_t dy_t + a_{t+1} g_{t+1}        (the adjoint recurrence, run backwards)
    dC_t     = sum_d h_t dy_t
    dB_t     = sum_d g_t delta_t u_t
    du_t     = delta_t sum_n g_t B_t
    ddelta_t = sum_n g_t (A a_t h_{t-1} + B_t u_t)
    dA       = sum_{b,t} g_t h_{t-1} a_t delta_t

The skip D, the gate silu(z), the delta bias and softplus are elementwise on (B, L, D) and
stay with autodiff in scan.py; nothing here ever holds a (B, L, D, N) tensor.
Source: the Mamba paper (Gu & Dao 2023, arXiv:2312.00752, section 3.3.2 and appendix D, the
recomputation in the backward) and state-spaces/mamba's `selective_scan_ref`, whose
recurrence this differentiates.

Glossary (scan.py's): S directions stacked, B batch, L length, D channels, N state size,
T chunk length, K number of chunks.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

UNROLL = 4  # time steps per loop iteration inside a chunk


def _to_chunks(x_SBLX: Array, T: int) -> Array:
    """(S, B, L, X) -> (K, T, S, B, X), time-major, zero-padded at the end of the sequence.

    Padded steps have delta = 0 (decay 1, input 0): in either direction they leave the state
    as it is, their outputs are dropped and their cotangents are zero.
    """
    S, Bsz, L, X = x_SBLX.shape
    K = -(-L // T)
    x = jnp.pad(x_SBLX, ((0, 0), (0, 0), (0, K * T - L), (0, 0)))
    return x.reshape(S, Bsz, K, T, X).transpose(2, 3, 0, 1, 4)


def _from_chunks(x_KTSBX: Array, L: int) -> Array:
    K, T, S, Bsz, X = x_KTSBX.shape
    return x_KTSBX.transpose(2, 3, 0, 1, 4).reshape(S, Bsz, K * T, X)[:, :, :L]


def _step(A_S1DN, h_SBDN, u_SBD, dt_SBD, B_SBN):
    """One step of the recurrence: (h_{t-1}, inputs) -> (h_t, a_t)."""
    a_SBDN = jnp.exp(dt_SBD[..., None] * A_S1DN)
    return a_SBDN * h_SBDN + (dt_SBD * u_SBD)[..., None] * B_SBN[:, :, None, :], a_SBDN


def _forward(u, dt, A, B, C, T: int, reverse: bool):
    """y (S, B, L, D) and the states entering each chunk, h0_KSBDN."""
    S, Bsz, L, Dch = u.shape
    A_S1DN = A[:, None]
    xs = tuple(_to_chunks(x, T) for x in (u, dt, B, C))

    def step(h, x_t):
        u_t, dt_t, B_t, C_t = x_t
        h, _ = _step(A_S1DN, h, u_t, dt_t, B_t)
        return h, jnp.sum(h * C_t[:, :, None, :], axis=-1)

    def chunk(h, x_k):
        h_end, y_TSBD = jax.lax.scan(step, h, x_k, reverse=reverse, unroll=UNROLL)
        return h_end, (h, y_TSBD)

    h0 = jnp.zeros((S, Bsz, Dch, A.shape[-1]), u.dtype)
    _, (h0_KSBDN, y_KTSBD) = jax.lax.scan(chunk, h0, xs, reverse=reverse)
    return _from_chunks(y_KTSBD, L), h0_KSBDN


@partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def chunked_scan(
    u: Float[Array, "S B L D"],
    dt: Float[Array, "S B L D"],
    A: Float[Array, "S D N"],
    B: Float[Array, "S B L N"],
    C: Float[Array, "S B L N"],
    T: int,
    reverse: bool,
) -> Float[Array, "S B L D"]:
    """y_t = sum_n C_t h_t for S independent scans (each with its own A), chunks of T steps.

    dt is the final step size (bias and softplus already applied); all inputs share one float
    dtype (float32, or float64 for gradient checks). reverse runs every scan from t = L-1 down.
    """
    return _forward(u, dt, A, B, C, T, reverse)[0]


def _chunked_scan_fwd(u, dt, A, B, C, T, reverse):
    y, h0_KSBDN = _forward(u, dt, A, B, C, T, reverse)
    return y, (u, dt, A, B, C, h0_KSBDN)


def _chunked_scan_bwd(T, reverse, res, dy):
    u, dt, A, B, C, h0_KSBDN = res
    L = u.shape[2]
    A_S1DN = A[:, None]
    xs = tuple(_to_chunks(x, T) for x in (u, dt, B, C, dy.astype(u.dtype)))

    def replay(h, x_t):  # forward again, keeping h_{t-1}; dC_t needs h_t and dy_t only
        u_t, dt_t, B_t, dy_t = x_t
        h_new, _ = _step(A_S1DN, h, u_t, dt_t, B_t)
        return h_new, (h, jnp.sum(h_new * dy_t[..., None], axis=2))

    def adjoint(carry, x_t):  # carry: a_{t+1} g_{t+1} and the per-batch dA sum
        ag, dA_SBDN = carry
        u_t, dt_t, B_t, C_t, dy_t, h_prev = x_t
        a = jnp.exp(dt_t[..., None] * A_S1DN)
        g = ag + dy_t[..., None] * C_t[:, :, None, :]
        w = g * h_prev * a  # d/d(delta A) of the decay term
        dA_SBDN = dA_SBDN + w * dt_t[..., None]
        gB_SBD = jnp.sum(g * B_t[:, :, None, :], axis=-1)
        ddt = jnp.sum(w * A_S1DN, axis=-1) + u_t * gB_SBD
        dB = jnp.sum(g * (dt_t * u_t)[..., None], axis=2)
        return (a * g, dA_SBDN), (dt_t * gB_SBD, ddt, dB)

    def chunk(carry, x_k):
        u_k, dt_k, B_k, C_k, dy_k, h0 = x_k
        _, (h_prev_T, dC_T) = jax.lax.scan(
            replay, h0, (u_k, dt_k, B_k, dy_k), reverse=reverse, unroll=UNROLL
        )
        carry, grads = jax.lax.scan(
            adjoint, carry, (u_k, dt_k, B_k, C_k, dy_k, h_prev_T), reverse=not reverse,
            unroll=UNROLL,
        )
        return carry, (*grads, dC_T)

    zeros = jnp.zeros_like(h0_KSBDN[0])
    (_, dA_SBDN), grads = jax.lax.scan(
        chunk, (zeros, zeros), (*xs, h0_KSBDN), reverse=not reverse
    )
    du, ddt, dB, dC = (_from_chunks(g, L) for g in grads)
    return du, ddt, jnp.sum(dA_SBDN, axis=1), dB, dC


chunked_scan.defvjp(_chunked_scan_fwd, _chunked_scan_bwd)
