"""The selective scan for inference: one plain loop over time, nothing kept for a backward.

Training paths cut the sequence into chunks only so that a backward pass can restart from
chunk-boundary states (scan_vjp.py keeps them, `chunked_seq` rematerialises them). Scoring
never differentiates, so here the whole sequence runs as one lax.scan (unrolled UNROLL steps
per iteration) whose only outputs are the y_t: no boundary states, no residuals, no chunk
padding. Differentiating it is possible (autodiff stores every step's state) but is not what
it is for: impl "fwd" is the inference choice (nanodna.evaluation.scoring).

Layout as in scan_vjp.py (the layout measured fastest on CPU there): the state is h_NSBD,
channels minor, so XLA vectorises along D and the sum over N is a sum of N vectors. The S
directions share one loop; a reverse direction is fed time-flipped by the caller.

Glossary (scan.py's): S directions stacked, B batch, L length, D channels, N state size.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

UNROLL = 8  # time steps per loop iteration (benchmarks/bench_eval.py --paths)


def recurrence_step(A_NS1D, h_NSBD, x_t):
    """One time step of the recurrence in the h_NSBD layout: x_t = (u_SBD, dt_SBD, B_NSB1,
    C_NSB1) -> (h_t, y_t = sum_n C_t h_t). Shared with scan_vjp.py's chunked forward."""
    u_SBD, dt_SBD, B_NSB1, C_NSB1 = x_t
    h_NSBD = jnp.exp(dt_SBD * A_NS1D) * h_NSBD + (dt_SBD * u_SBD) * B_NSB1
    return h_NSBD, jnp.sum(h_NSBD * C_NSB1, axis=0)


def forward_scan(
    u: Float[Array, "S B L D"],
    dt: Float[Array, "S B L D"],
    A: Float[Array, "S D N"],
    B: Float[Array, "S B L N"],
    C: Float[Array, "S B L N"],
    reverse: bool = False,
) -> Float[Array, "S B L D"]:
    """y_t = sum_n C_t h_t, h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t, for S independent scans.

    dt is the final step size (bias and softplus applied); all inputs share one float dtype
    (the state dtype, see scan.state_dtype). reverse runs every scan from t = L-1 down."""
    S, Bsz, _, Dch = u.shape
    A_NS1D = A.transpose(2, 0, 1)[:, :, None]
    xs = (u.transpose(2, 0, 1, 3), dt.transpose(2, 0, 1, 3),  # (L, S, B, D)
          B.transpose(2, 3, 0, 1)[..., None], C.transpose(2, 3, 0, 1)[..., None])  # (L, N, S, B, 1)

    h0_NSBD = jnp.zeros((A.shape[-1], S, Bsz, Dch), u.dtype)
    _, y_LSBD = jax.lax.scan(partial(recurrence_step, A_NS1D), h0_NSBD, xs, reverse=reverse,
                             unroll=UNROLL)
    return y_LSBD.transpose(1, 2, 0, 3)
