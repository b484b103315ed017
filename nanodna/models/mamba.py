"""Mamba v1 mixer and its bidirectional form (BiMamba), as in mamba-ssm / Caduceus.

Glossary: B batch, L length, D d_model, E d_inner (= expand * D), N d_state, Q dt_rank,
W conv width.

Mamba mixer:  x, z = in_proj(h);  x = silu(causal depthwise conv(x));  dt, B, C = x_proj(x);
              y = selective_scan(x, dt_proj(dt), A, B, C, D, gate z, softplus(+dt bias));
              out = out_proj(y)
BiMamba adds a second mixer that reads the sequence backwards (flip -> mamba -> flip). With
tied projections the reverse mixer shares in_proj and out_proj; both are position-wise and
linear, so we apply in_proj once, run the two direction-specific parts (conv, x_proj, dt_proj,
A, D) and apply out_proj once to the sum: the same function at half the projection FLOPs. The
reverse direction runs its conv anti-causally and its scan with reverse=True instead of
flipping the arrays, and both scans go through ops.selective_scan_bidirectional (one fused
launch with the Pallas kernel); tests check all this against the literal flip-mamba-flip.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from nanodna.models.config import ModelConfig
from nanodna.models.layers import Linear
from nanodna.ops.conv import conv_silu_bidirectional, depthwise_conv
from nanodna.ops.scan import selective_scan, selective_scan_bidirectional

DT_MIN, DT_MAX, DT_FLOOR = 1e-3, 0.1, 1e-4  # mamba-ssm's dt initialisation range


class SelectiveSSM(eqx.Module):
    """The direction-specific part of a Mamba mixer: conv1d, x_proj, dt_proj, A_log, D."""

    conv_weight: Array  # (E, W)
    conv_bias: Array  # (E,)
    x_proj: Linear  # E -> Q + 2N
    dt_proj: Linear  # Q -> E, bias = inverse softplus of the initial dt
    A_log: Array  # (E, N); A = -exp(A_log)
    D: Array  # (E,) skip
    d_state: int = eqx.field(static=True)
    scan_impl: str = eqx.field(static=True)

    def __init__(self, cfg: ModelConfig, *, key: PRNGKeyArray):
        E, N, Q, W = cfg.d_inner, cfg.d_state, cfg.dt_rank, cfg.d_conv
        k_cw, k_cb, k_x, k_dtw, k_dt = jax.random.split(key, 5)
        bound = 1.0 / math.sqrt(W)  # PyTorch Conv1d default (fan_in = W for depthwise)
        self.conv_weight = jax.random.uniform(k_cw, (E, W), minval=-bound, maxval=bound)
        self.conv_bias = jax.random.uniform(k_cb, (E,), minval=-bound, maxval=bound)
        self.x_proj = Linear(E, Q + 2 * N, key=k_x, dtype=cfg.compute_dtype,
                             dot_dtype=cfg.dot_dtype)
        # dt_proj: weight U(+-Q^-0.5) keeps dt_proj(dt) O(1) at init; the bias puts
        # softplus(bias) = dt log-uniform in [DT_MIN, DT_MAX], so memories span 10 to 1000 steps.
        dt_proj = Linear(Q, E, key=k_dtw, bias=True, dtype=cfg.compute_dtype,
                         dot_dtype=cfg.dot_dtype)
        w = jax.random.uniform(k_dtw, (E, Q), minval=-(Q**-0.5), maxval=Q**-0.5)
        log_dt = jax.random.uniform(k_dt, (E,), minval=math.log(DT_MIN), maxval=math.log(DT_MAX))
        dt = jnp.maximum(jnp.exp(log_dt), DT_FLOOR)
        inv_softplus_dt = dt + jnp.log(-jnp.expm1(-dt))
        self.dt_proj = eqx.tree_at(lambda m: (m.weight, m.bias), dt_proj, (w, inv_softplus_dt))
        # S4D-real: A[e, n] = -(n + 1), the same for every channel.
        self.A_log = jnp.log(jnp.broadcast_to(jnp.arange(1, N + 1, dtype=jnp.float32), (E, N)))
        self.D = jnp.ones((E,), jnp.float32)
        self.d_state = N
        self.scan_impl = cfg.scan_impl

    def scan_inputs(self, x_BLE: Float[Array, "B L E"], reverse: bool = False):
        """conv -> silu -> x_proj -> dt_proj: the selective scan's (u, delta, A, B, C)."""
        return self.project(
            jax.nn.silu(depthwise_conv(x_BLE, self.conv_weight, self.conv_bias, reverse)))

    def project(self, u_BLE: Float[Array, "B L E"]):
        """x_proj -> dt_proj of the conv's output u: the selective scan's (u, delta, A, B, C)."""
        Q, N = self.dt_proj.weight.shape[1], self.d_state
        dbc = self.x_proj(u_BLE)
        dt_BLQ, B_BLN, C_BLN = dbc[..., :Q], dbc[..., Q : Q + N], dbc[..., Q + N :]
        # dt_proj's bias is added inside the scan (float32, before softplus), as in mamba-ssm.
        dt_BLE = self.dt_proj.matmul(dt_BLQ)
        return u_BLE, dt_BLE, -jnp.exp(self.A_log), B_BLN, C_BLN

    def __call__(
        self, x_BLE: Float[Array, "B L E"], z_BLE: Float[Array, "B L E"], reverse: bool = False
    ) -> Float[Array, "B L E"]:
        u_BLE, dt_BLE, A_EN, B_BLN, C_BLN = self.scan_inputs(x_BLE, reverse)
        return selective_scan(
            u_BLE, dt_BLE, A_EN, B_BLN, C_BLN, D=self.D, z=z_BLE,
            delta_bias=self.dt_proj.bias, delta_softplus=True, reverse=reverse,
            impl=self.scan_impl,
        )


def _out_proj(cfg: ModelConfig, key: PRNGKeyArray) -> Linear:
    """out_proj shrunk by 1/sqrt(n_layers) (GPT-2 style, mamba-ssm's _init_weights): the
    residual stream's variance then stays O(1) however deep the stack."""
    lin = Linear(cfg.d_inner, cfg.d_model, key=key, dtype=cfg.compute_dtype,
                 dot_dtype=cfg.dot_dtype)
    return eqx.tree_at(lambda m: m.weight, lin, lin.weight / math.sqrt(cfg.n_layers))


class Mamba(eqx.Module):
    """One unidirectional Mamba v1 mixer: (B, L, D) -> (B, L, D)."""

    in_proj: Linear  # D -> 2E (x and gate z), no bias
    ssm: SelectiveSSM
    out_proj: Linear  # E -> D, no bias

    def __init__(self, cfg: ModelConfig, *, key: PRNGKeyArray):
        k_in, k_ssm, k_out = jax.random.split(key, 3)
        self.in_proj = Linear(cfg.d_model, 2 * cfg.d_inner, key=k_in, dtype=cfg.compute_dtype,
                              dot_dtype=cfg.dot_dtype)
        self.ssm = SelectiveSSM(cfg, key=k_ssm)
        self.out_proj = _out_proj(cfg, k_out)

    def __call__(
        self, h_BLD: Float[Array, "B L D"], reverse: bool = False
    ) -> Float[Array, "B L D"]:
        x_BLE, z_BLE = jnp.split(self.in_proj(h_BLD), 2, axis=-1)
        return self.out_proj(self.ssm(x_BLE, z_BLE, reverse=reverse))


class BiMamba(eqx.Module):
    """Forward Mamba + reverse Mamba, outputs added (Caduceus' "add" strategy).

    Tied (the PlantCAD setting): rev is only a SelectiveSSM and shares fwd's projections.
    Untied: rev is a full Mamba. Unidirectional (bidirectional=False): rev is None.
    """

    fwd: Mamba
    rev: Mamba | SelectiveSSM | None

    def __init__(self, cfg: ModelConfig, *, key: PRNGKeyArray):
        k_fwd, k_rev = jax.random.split(key)
        self.fwd = Mamba(cfg, key=k_fwd)
        if not cfg.bidirectional:
            self.rev = None
        elif cfg.tie_in_out_proj:
            self.rev = SelectiveSSM(cfg, key=k_rev)
        else:
            self.rev = Mamba(cfg, key=k_rev)

    def __call__(self, h_BLD: Float[Array, "B L D"]) -> Float[Array, "B L D"]:
        if self.rev is None:
            return self.fwd(h_BLD)
        if isinstance(self.rev, Mamba):
            return self.fwd(h_BLD) + self.rev(h_BLD, reverse=True)
        # Tied: both directions read one in_proj output and share the gate z; their convs go
        # to one call (one kernels/cpu pass each way on CPU), their scans to another (a single
        # fused launch with the Pallas kernel or kernels/cpu), and the scans are summed.
        xz_BLE2 = self.fwd.in_proj(h_BLD)
        z_BLE = xz_BLE2[..., xz_BLE2.shape[-1] // 2 :]
        fwd, rev = self.fwd.ssm, self.rev
        u_fwd, u_rev = conv_silu_bidirectional(
            xz_BLE2, jnp.stack([fwd.conv_weight, rev.conv_weight]),
            jnp.stack([fwd.conv_bias, rev.conv_bias]), impl=fwd.scan_impl)
        per_dir = zip(fwd.project(u_fwd), rev.project(u_rev))
        u, dt, A, B, C = (jnp.stack(pair) for pair in per_dir)
        y_BLE = selective_scan_bidirectional(
            u, dt, A, B, C, D=jnp.stack([fwd.D, rev.D]), z=z_BLE,
            delta_bias=jnp.stack([fwd.dt_proj.bias, rev.dt_proj.bias]),
            delta_softplus=True, impl=fwd.scan_impl,
        )
        return self.fwd.out_proj(y_BLE)

