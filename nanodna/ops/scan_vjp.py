"""The chunked sequential selective scan with a hand-written backward (a jax.custom_vjp).

Autodiff of the chunked scan stores or rebuilds every step's (B, D, N) state and runs a
generic transpose of each op; on CPU that backward costs 7-11x the forward (BENCHMARKS.md).
Here the backward is written out: the forward keeps only the state entering each chunk,
(K, N, S, B, D), and the backward walks the chunks in reverse, recomputing one chunk's states
from its boundary state (a (T, N, S, B, D) buffer) and running the adjoint recurrence over it.

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

from nanodna.ops.scan_fwd import recurrence_step

UNROLL = 4  # time steps per loop iteration inside a chunk

# Layout: inside the loops the state is h_NSBD, channels minor and the state axis major. XLA's
# CPU code then vectorises along D (128-768 wide) and every sum over N is a sum of N vectors
# rather than a horizontal reduction of 16 lanes: the forward measured 1.4-1.6x faster than
# with h_SBDN. Per-step inputs are time-major chunks: (K, T, S, B, D) and (K, T, N, S, B, 1).


def _to_chunks(x_SBLX: Array, T: int, x_major: bool = False) -> Array:
    """(S, B, L, X) -> (K, T, S, B, X), or (K, T, X, S, B, 1) when x_major; zero-padded at the end.

    Padded steps have delta = 0 (decay 1, input 0): in either direction they leave the state
    as it is, their outputs are dropped and their cotangents are zero.
    """
    S, Bsz, L, X = x_SBLX.shape
    K = -(-L // T)
    x = jnp.pad(x_SBLX, ((0, 0), (0, 0), (0, K * T - L), (0, 0))).reshape(S, Bsz, K, T, X)
    if x_major:
        return x.transpose(2, 3, 4, 0, 1)[..., None]
    return x.transpose(2, 3, 0, 1, 4)


def _from_chunks(x_KTSBX: Array, L: int, x_major: bool = False) -> Array:
    """Inverse of _to_chunks (without the trailing 1 when x_major): back to (S, B, L, X)."""
    if x_major:
        x_KTSBX = x_KTSBX.transpose(0, 1, 3, 4, 2)
    K, T, S, Bsz, X = x_KTSBX.shape
    return x_KTSBX.transpose(2, 3, 0, 1, 4).reshape(S, Bsz, K * T, X)[:, :, :L]


def _forward(u, dt, A, B, C, T: int, reverse: bool):
    """y (S, B, L, D) and the states entering each chunk, h0_KNSBD."""
    S, Bsz, L, Dch = u.shape
    A_NS1D = A.transpose(2, 0, 1)[:, :, None]
    xs = (_to_chunks(u, T), _to_chunks(dt, T), _to_chunks(B, T, True), _to_chunks(C, T, True))

    def chunk(h, x_k):
        h_end, y_TSBD = jax.lax.scan(partial(recurrence_step, A_NS1D), h, x_k, reverse=reverse,
                                     unroll=UNROLL)
        return h_end, (h, y_TSBD)

    h0 = jnp.zeros((A.shape[-1], S, Bsz, Dch), u.dtype)
    _, (h0_KNSBD, y_KTSBD) = jax.lax.scan(chunk, h0, xs, reverse=reverse)
    return _from_chunks(y_KTSBD, L), h0_KNSBD


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
    y, h0_KNSBD = _forward(u, dt, A, B, C, T, reverse)
    return y, (u, dt, A, B, C, h0_KNSBD)


def _chunked_scan_bwd(T, reverse, res, dy):
    u, dt, A, B, C, h0_KNSBD = res
    L = u.shape[2]
    A_NS1D = A.transpose(2, 0, 1)[:, :, None]
    xs = (_to_chunks(u, T), _to_chunks(dt, T), _to_chunks(B, T, True), _to_chunks(C, T, True),
          _to_chunks(dy.astype(u.dtype), T))

    # Per chunk: replay the forward from the boundary state, keeping h_{t-1} and a_t (a
    # (T, N, S, B, D) buffer each; keeping a_t measured faster than a second exp), then run
    # the adjoint backwards over the chunk. dC_t needs only h_t and dy_t, so the replay does it.
    def replay(h, x_t):
        u_t, dt_t, B_t, dy_t = x_t
        a = jnp.exp(dt_t * A_NS1D)
        h_new = a * h + (dt_t * u_t) * B_t
        return h_new, (h, a, jnp.sum(h_new * dy_t, axis=-1))

    def adjoint(carry, x_t):  # carry: a_{t+1} g_{t+1} and the per-batch dA sum
        ag, dA_NSBD = carry
        u_t, dt_t, B_t, C_t, dy_t, h_prev, a = x_t
        g = ag + dy_t * C_t
        w = g * h_prev * a  # d/d(delta A) of the decay term
        dA_NSBD = dA_NSBD + w * dt_t
        gB_SBD = jnp.sum(g * B_t, axis=0)
        ddt = jnp.sum(w * A_NS1D, axis=0) + u_t * gB_SBD
        dB = jnp.sum(g * (dt_t * u_t), axis=-1)
        return (a * g, dA_NSBD), (dt_t * gB_SBD, ddt, dB)

    def chunk(carry, x_k):
        u_k, dt_k, B_k, C_k, dy_k, h0 = x_k
        _, (h_prev_T, a_T, dC_T) = jax.lax.scan(
            replay, h0, (u_k, dt_k, B_k, dy_k), reverse=reverse, unroll=UNROLL
        )
        carry, grads = jax.lax.scan(
            adjoint, carry, (u_k, dt_k, B_k, C_k, dy_k, h_prev_T, a_T), reverse=not reverse,
            unroll=UNROLL,
        )
        return carry, (*grads, dC_T)

    zeros = jnp.zeros_like(h0_KNSBD[0])
    (_, dA_NSBD), (du, ddt, dB, dC) = jax.lax.scan(
        chunk, (zeros, zeros), (*xs, h0_KNSBD), reverse=not reverse
    )
    dA_SDN = jnp.sum(dA_NSBD, axis=2).transpose(1, 2, 0)
    return (_from_chunks(du, L), _from_chunks(ddt, L), dA_SDN, _from_chunks(dB, L, True),
            _from_chunks(dC, L, True))


chunked_scan.defvjp(_chunked_scan_fwd, _chunked_scan_bwd)
