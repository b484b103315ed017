"""Training FLOPs per token, counted from the work each architecture actually does.

Why: the compute axis of a Caduceus-vs-transformer comparison must not favour either side.
The usual 6·N·D (Kaplan et al. 2020, arXiv 2001.08361, eq. 2.1: C ~ 6 N per token, N the
non-embedding parameters) misses three things here: RCPS runs every weight on BOTH strands
(2x); BiMamba applies its tied in/out projections once for both scan directions while each
direction's conv, x_proj, dt_proj and scan run separately, and the scan's elementwise work
(~7·E·N per token) has no parameters behind it; attention over L positions costs 4·L·D per
layer that no parameter counts either. So we count the work.

Conventions (one multiply-add = 2 FLOPs; per token; forward unless said otherwise):

Matmuls (Linear: 2 * d_in * d_out), as in Kaplan et al. 2020 Table 1.
Training = 3 x forward: the backward of a matmul is two matmuls of the same size (grad wrt
input and wrt weight), Kaplan et al. 2020 sec. 2.1; Hoffmann et al. 2022 (Chinchilla,
arXiv 2203.15556) app. F use the same 2x backward. We apply the same 3x to the scan's elementwise
work, an assumption (their backward is about twice the forward too:
a reverse scan of the same recurrence plus the products for dA, dB, dC, ddelta).
The optimizer update (~10-20 FLOPs per parameter per step) is per step, not per token, and
left out.

Caduceus, per layer and per strand (with RCPS both strands run: x and rc(x) share weights
and are folded into the batch, so everything below counts twice; Caduceus-Ph runs one
strand in training, its RC augmentation changes data, not work):
    in_proj 2*D*2E + out_proj 2*E*D      once with tied projections (BiMamba applies them to
                                         the summed directions), once per direction untied
    per direction (2 with BiMamba):
        depthwise conv  2*E*W            (W taps, multiply-add each)
        x_proj          2*E*(Q+2N)
        dt_proj         2*Q*E
        selective scan  7*E*N            Mamba v1 recurrence (Gu & Dao 2023, arXiv 2312.00752,
                                         alg. 2 / eq. 2a-2b) per channel and state: dt*A (1),
                                         its exp (1, a transcendental counted as one op),
                                         dt*u*B (1; dt*u is per channel), dA*h + . (2),
                                         C.h (2). The paper's "O(BLDN)" made concrete.
    head (tied to the embedding): 2*D*V per strand.
Transformer, per layer: projections 2*(4*D^2 + 3*D*F) (q, k, v, o; SwiGLU gate, up, down)
    + attention 2*L*D (QK^T) + 2*L*D (AV), as Chinchilla app. F counts them; its softmax
    term 3*H*L is left out (H/D <= 1/16 makes it < 5% of attention's). L is the full window
    even when causal: the implementation computes the masked half too, and this module counts
    the work done. Head 2*D*V.
Left out on both sides: the embedding lookup, norms, activations, gates, residual adds,
the loss (a few FLOPs per channel each). Against XLA's cost analysis of loss + gradient on
CPU (tests/test_flops.py, d_model 64 and 128) this count came out 2-4% low, measured.

`six_n_flops_per_token` gives the 6·N convention with N = non-embedding parameters
(embedding table excluded, and the transformer's untied V x D head too, as Kaplan does).
Glossary: D d_model, E d_inner, N d_state, Q dt_rank, W d_conv, F SwiGLU hidden, H heads,
V vocabulary, L sequence length.
"""

from __future__ import annotations

from nanodna.models.config import ModelConfig

SCAN_OPS_PER_STATE = 7  # forward elementwise ops per (channel, state, token); see docstring
TRAIN_MULTIPLIER = 3  # forward + backward = 3 x forward


def forward_breakdown(cfg: ModelConfig, seq_len: int) -> dict[str, float]:
    """Forward FLOPs per token by component (all layers, all strands). Keys name the parts."""
    D, V = cfg.d_model, cfg.vocab_size
    if cfg.arch == "transformer":
        nl, F = cfg.n_layers, cfg.ff_dim
        return {
            "attn_proj": float(nl * 2 * 4 * D * D),
            "mlp": float(nl * 2 * 3 * D * F),
            "attn_scores": float(nl * 4 * seq_len * D),
            "head": float(2 * D * V),
        }
    E, N, Q, W = cfg.d_inner, cfg.d_state, cfg.dt_rank, cfg.d_conv
    nl = cfg.n_layers
    strands = 2 if cfg.rcps else 1
    n_dir = 2 if cfg.bidirectional else 1
    n_proj = 1 if (cfg.tie_in_out_proj or not cfg.bidirectional) else n_dir
    s = strands * nl
    return {
        "in_out_proj": float(s * n_proj * (2 * D * 2 * E + 2 * E * D)),
        "conv": float(s * n_dir * 2 * E * W),
        "x_dt_proj": float(s * n_dir * (2 * E * (Q + 2 * N) + 2 * Q * E)),
        "scan": float(s * n_dir * SCAN_OPS_PER_STATE * E * N),
        "head": float(strands * 2 * D * V),
    }


def forward_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Forward FLOPs per token of a window of `seq_len` tokens (sum of forward_breakdown)."""
    return float(sum(forward_breakdown(cfg, seq_len).values()))


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3 x forward), for the compute axis and
    for MFU = tokens/s * this / peak FLOP/s."""
    return TRAIN_MULTIPLIER * forward_flops_per_token(cfg, seq_len)


def non_embedding_params(cfg: ModelConfig) -> int:
    """Parameters outside the embedding table (and outside the transformer's untied head).

    Counted from the config so it needs no model; tests check it against the built model.
    """
    D = cfg.d_model
    if cfg.arch == "transformer":
        per_layer = 2 * D + 4 * D * D + 3 * D * cfg.ff_dim  # two RMSNorms, attention, SwiGLU
        return cfg.n_layers * per_layer + D  # + final norm
    E, N, Q, W = cfg.d_inner, cfg.d_state, cfg.dt_rank, cfg.d_conv
    proj = D * 2 * E + E * D
    ssm = E * W + E + E * (Q + 2 * N) + Q * E + E + E * N + E  # conv w+b, x_proj, dt w+b, A, D
    n_dir = 2 if cfg.bidirectional else 1
    n_proj = 1 if (cfg.tie_in_out_proj or not cfg.bidirectional) else n_dir
    return cfg.n_layers * (D + n_proj * proj + n_dir * ssm) + D


def six_n_flops_per_token(cfg: ModelConfig) -> float:
    """Kaplan et al. 2020's convention: 6 * non-embedding parameters, per training token."""
    return 6.0 * non_embedding_params(cfg)
