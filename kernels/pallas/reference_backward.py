"""The reference backward: autodiff of a plain lax.scan, for `backward="reference"`.

Glossary: S directions, B batch, L length, D channels, N state size.

While a kernel's backward is being tuned, the forward can stay on the kernel and the gradients
come from here (as JAX's Pallas attention offers an XLA backward). The recurrence is written
out again because kernels/ never imports nanodna; tests/test_pallas_scan.py checks these
gradients against nanodna.ops.scan.selective_scan_ref's, so the two cannot drift apart.
Memory is the reference's: (B, L, D, N) float32 states per direction.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels.pallas.plan import Plan


def scan_stacked_xla(plan: Plan, u, dt, A_SND, B, C, D3, z, bias3):
    """Sum over the S directions of their scans, in the kernel's stacked layout.

    u/dt (S B L D), A_SND (S N D), B/C (S B L N), D3/bias3 (S 1 D) or None, z (B L D) or None;
    returns (B L D) in u's dtype. The state is float32 (float64 for float64 inputs).
    """
    f32 = jnp.promote_types(u.dtype, jnp.float32)
    y_BLD = jnp.zeros(u.shape[1:], f32)
    for s in range(plan.n_dir):
        reverse = bool(s) if plan.n_dir == 2 else plan.reverse
        u_BLD, dt_BLD = u[s].astype(f32), dt[s].astype(f32)
        if bias3 is not None:
            dt_BLD = dt_BLD + bias3[s].astype(f32)
        if plan.softplus:
            dt_BLD = jax.nn.softplus(dt_BLD)
        A_DN = A_SND[s].T.astype(f32)

        def step(h_BDN, xs, A_DN=A_DN):
            u_BD, dt_BD, B_BN, C_BN = xs
            dA_BDN = jnp.exp(dt_BD[..., None] * A_DN)
            h_BDN = dA_BDN * h_BDN + (dt_BD * u_BD)[..., None] * B_BN[:, None]
            return h_BDN, jnp.einsum("bdn,bn->bd", h_BDN, C_BN)

        B_BLN, C_BLN = B[s].astype(f32), C[s].astype(f32)
        xs = tuple(jnp.swapaxes(a, 0, 1) for a in (u_BLD, dt_BLD, B_BLN, C_BLN))  # time-major
        h0_BDN = jnp.zeros((u.shape[1], u.shape[3], A_SND.shape[1]), f32)
        _, y_LBD = jax.lax.scan(step, h0_BDN, xs, reverse=reverse)
        ys_BLD = jnp.swapaxes(y_LBD, 0, 1)
        if D3 is not None:
            ys_BLD = ys_BLD + u_BLD * D3[s].astype(f32)
        y_BLD = y_BLD + ys_BLD
    if z is not None:  # the gate is shared, so gating the sum gates each direction
        y_BLD = y_BLD * jax.nn.silu(z.astype(f32))
    return y_BLD.astype(u.dtype)


def reference_grads(plan: Plan, inputs, dy_BLD):
    """Gradients of scan_stacked_xla at `inputs` (the kernel's 8, None for absent) for dy."""
    _, vjp = jax.vjp(lambda *a: scan_stacked_xla(plan, *a), *inputs)
    return vjp(dy_BLD.astype(inputs[0].dtype))
