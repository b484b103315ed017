"""Training FLOPs per token, for MFU: 3 x the forward FLOPs (backward ~ 2 x forward).

Forward FLOPs per token, counting a multiply-add as 2:

Caduceus, per layer and per strand (x2 strands with RCPS, whose batch is folded):
    in_proj 2*D*2E  +  out_proj 2*E*D         once with tied projections (BiMamba applies
                                              them to the summed directions), twice untied
    per direction (2 with BiMamba):
        conv 2*E*K + x_proj 2*E*(R+2N) + dt_proj 2*R*E
        + scan 7*E*N   (dt*A and its exp, B*(dt*u), h update (2), C.h (2); per state)
    plus the head, 2*D*V per strand.
Transformer, per layer: 2*(4*D^2 + 3*D*F) for the projections + 4*L*D for QK^T and AV
(counted in full even when causal, as nanoGPT/PaLM do), plus the head 2*D*V. That is the
familiar 6*N + 12*n_layers*L*D once multiplied by 3.
Norms, activations, the gate and the skip are left out (a few per channel, < 1%).
"""

from __future__ import annotations

from nanodna.models.config import ModelConfig


def forward_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    D, V = cfg.d_model, cfg.vocab_size
    if cfg.arch == "transformer":
        per_layer = 2 * (4 * D * D + 3 * D * cfg.ff_dim) + 4 * seq_len * D
        return float(cfg.n_layers * per_layer + 2 * D * V)
    E, N, R, K = cfg.d_inner, cfg.d_state, cfg.dt_rank, cfg.d_conv
    n_dir = 2 if cfg.bidirectional else 1
    n_proj = 1 if (cfg.tie_in_out_proj or not cfg.bidirectional) else n_dir
    proj = n_proj * (2 * D * 2 * E + 2 * E * D)
    direction = 2 * E * K + 2 * E * (R + 2 * N) + 2 * R * E + 7 * E * N
    per_strand = cfg.n_layers * (proj + n_dir * direction) + 2 * D * V
    return float(per_strand * (2 if cfg.rcps else 1))


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward), for MFU = tokens/s * this / peak FLOP/s."""
    return 3.0 * forward_flops_per_token(cfg, seq_len)
