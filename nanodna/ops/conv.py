"""Mamba's depthwise convolution, and BiMamba's pair of them with their SiLU.

`depthwise_conv` is the per-channel conv1d of a Mamba mixer: causal (taps t-W+1 .. t, as
PyTorch's Conv1d(padding=W-1) truncated to L), or anti-causal for the reverse mixer (taps
t .. t+W-1, which equals flip(causal(flip(x)))). `conv_silu_bidirectional` is what a tied
BiMamba layer needs from it: both directions' silu(conv(x)) from one input. With impl "cpu"
that is one kernels/cpu pass that reads x straight from the in_proj output, and under a
gradient the kernel's hand-written backward (a custom_vjp; the SiLU input is recomputed,
nothing but x is saved), which replaces the pads and slices of XLA's autodiff in a training
step. Every other impl runs XLA's shifted multiply-adds below.

Glossary: B batch, L length, E channels (d_inner), W conv width (d_conv); xz_BLE2 is the
in_proj output (B, L, 2E), x (its first E channels) then the gate z.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from kernels import cpu as cpu_kernel
from nanodna.ops.scan import batch_mesh, resolve_impl


def depthwise_conv(
    x_BLE: Float[Array, "B L E"], w_EW: Float[Array, "E W"], b_E: Float[Array, " E"],
    reverse: bool = False,
) -> Float[Array, "B L E"]:
    """Per-channel conv of width W: causal (taps t-W+1..t), or anti-causal when reverse."""
    W, L = w_EW.shape[1], x_BLE.shape[1]
    w_EW, b_E = w_EW.astype(x_BLE.dtype), b_E.astype(x_BLE.dtype)
    pad = (0, W - 1) if reverse else (W - 1, 0)
    x_pad = jnp.pad(x_BLE, ((0, 0), pad, (0, 0)))
    y_BLE = b_E
    for k in range(W):  # W is tiny (4): shifted multiply-adds, no conv layout shuffles
        tap = w_EW[:, W - 1 - k] if reverse else w_EW[:, k]
        y_BLE = y_BLE + x_pad[:, k : k + L] * tap
    return y_BLE


def _conv_silu_xla(xz_BLE2, w_2EW, b_2E):
    """conv_silu_bidirectional in XLA: the definition the kernels are tested against."""
    x_BLE = xz_BLE2[..., : w_2EW.shape[1]]
    return (jax.nn.silu(depthwise_conv(x_BLE, w_2EW[0], b_2E[0])),
            jax.nn.silu(depthwise_conv(x_BLE, w_2EW[1], b_2E[1], reverse=True)))


@jax.custom_vjp
def _conv_silu_cpu(xz_BLE2, w_2EW, b_2E):
    return cpu_kernel.conv_silu_bidirectional_cpu(xz_BLE2, w_2EW, b_2E)


def _conv_silu_cpu_fwd(xz_BLE2, w_2EW, b_2E):
    return _conv_silu_cpu(xz_BLE2, w_2EW, b_2E), (xz_BLE2, w_2EW, b_2E)


def _conv_silu_cpu_bwd(res, du):
    xz_BLE2, w_2EW, b_2E = res
    dx_BLE, dw, db = cpu_kernel.conv_silu_bidirectional_bwd_cpu(xz_BLE2, w_2EW, b_2E, *du)
    pad = xz_BLE2.shape[-1] - dx_BLE.shape[-1]  # channels past E (the gate z) get no gradient
    return jnp.pad(dx_BLE, ((0, 0), (0, 0), (0, pad))), dw, db


_conv_silu_cpu.defvjp(_conv_silu_cpu_fwd, _conv_silu_cpu_bwd)


def conv_silu_bidirectional(
    xz_BLE2: Float[Array, "B L E2"],
    w_2EW: Float[Array, "2 E W"],
    b_2E: Float[Array, "2 E"],
    impl: str = "auto",
) -> tuple[Float[Array, "B L E"], Float[Array, "B L E"]]:
    """(silu(causal conv of x with w[0], b[0]), silu(anti-causal conv of x with w[1], b[1])),
    x = xz_BLE2[..., :E]: the forward and reverse mixers' convolutions of a tied BiMamba layer.

    impl is the layer's selective-scan impl ("auto" resolved as nanodna.ops.scan does):
    "cpu" takes kernels/cpu's forward and hand-written backward where they apply (float32, E
    a multiple of 16, W <= 8, a batch not split over a mesh), every other case XLA's. Outputs
    have xz's dtype. Raises ValueError when xz has fewer than E channels.
    """
    E = w_2EW.shape[1]
    if E > xz_BLE2.shape[-1]:
        raise ValueError(f"the conv has {E} channels but x has only {xz_BLE2.shape[-1]}")
    w_2EW, b_2E = w_2EW.astype(xz_BLE2.dtype), b_2E.astype(xz_BLE2.dtype)
    if (resolve_impl(impl) == "cpu" and cpu_kernel.conv_supported(xz_BLE2, w_2EW)
            and batch_mesh(xz_BLE2) is None):
        return _conv_silu_cpu(xz_BLE2, w_2EW, b_2E)
    return _conv_silu_xla(xz_BLE2, w_2EW, b_2E)
