"""Caduceus: a BiMamba language model over DNA, RC-equivariant (PS) or RC-averaged (Ph).

Glossary: B batch, L length, D d_model (per strand), V vocabulary; "B2" the folded batch of
x and rc(x) (see rcps.py).

    tokens -> embedding E -> n_layers x [h + BiMamba(RMSNorm(h))] -> RMSNorm -> logits (head tied to E)

The residual stream h is float32 whatever the compute dtype (mamba-ssm's residual_in_fp32).
Caduceus-PS (rcps=True) folds x and rc(x) into the batch and combines them at the head, so
logits(rc(x)) = rc_logits(logits(x)) exactly. With rcps_swap_strands (Caduceus' fused_add_norm
path, see rcps.py) every block first exchanges the two strand streams of the folded batch:

    n_layers x [h <- swap_strands(h); h + BiMamba(RMSNorm(h))]

Caduceus-Ph (rcps=False) is the plain model; `conjoined_logits` averages it over both strands
at inference (`strand_mean`: mean of logits).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from nanodna.models import rcps
from nanodna.models.config import ModelConfig
from nanodna.models.layers import RMSNorm, scan_layers, stack_layers
from nanodna.models.mamba import BiMamba
from nanodna.tokenizer import reverse_complement

EMBED_STD = 0.02  # mamba-ssm / Caduceus embedding init


class MambaBlock(eqx.Module):
    """Pre-norm residual block: h + BiMamba(RMSNorm(h)), h in float32.

    With swap_strands the input must be a folded batch (rcps.fold) and its two strand streams
    exchange places first (rcps.swap_strands).
    """

    norm: RMSNorm
    mixer: BiMamba
    compute_dtype: str = eqx.field(static=True)
    swap_strands: bool = eqx.field(static=True, default=False)

    def __init__(self, cfg: ModelConfig, *, key: PRNGKeyArray):
        self.norm = RMSNorm(cfg.d_model)
        self.mixer = BiMamba(cfg, key=key)
        self.compute_dtype = cfg.compute_dtype
        self.swap_strands = cfg.rcps_swap_strands

    def __call__(self, h_BLD: Float[Array, "B L D"]) -> Float[Array, "B L D"]:
        if self.swap_strands:
            h_BLD = rcps.swap_strands(h_BLD)
        x_BLD = self.norm(h_BLD).astype(self.compute_dtype)
        return h_BLD + self.mixer(x_BLD).astype(jnp.float32)


class Caduceus(eqx.Module):
    embed: Array  # (V, D); also the LM head's weight
    blocks: MambaBlock  # stacked: every array has a leading n_layers axis
    norm_f: RMSNorm
    rcps: bool = eqx.field(static=True)
    remat: bool = eqx.field(static=True)
    unroll_layers: bool = eqx.field(static=True)

    def __init__(self, cfg: ModelConfig, *, key: PRNGKeyArray):
        k_emb, k_blocks = jax.random.split(key)
        self.embed = EMBED_STD * jax.random.normal(k_emb, (cfg.vocab_size, cfg.d_model))
        self.blocks = stack_layers(lambda k: MambaBlock(cfg, key=k), cfg.n_layers, k_blocks)
        self.norm_f = RMSNorm(cfg.d_model)
        self.rcps, self.remat, self.unroll_layers = cfg.rcps, cfg.remat, cfg.unroll_layers

    def trunk(self, h_BLD: Float[Array, "B L D"]) -> Float[Array, "B L D"]:
        """Embeddings -> final normed hidden states: the blocks and the final norm."""
        return self.norm_f(scan_layers(self.blocks, h_BLD, remat=self.remat,
                                       unroll=self.unroll_layers))

    def hidden(self, tokens_BL: Int[Array, "B L"]) -> Float[Array, "B L D"]:
        """Final normed hidden states of one strand (no RC folding). With rcps_swap_strands
        the strands interact, so tokens_BL must be a folded batch (rcps.fold)."""
        return self.trunk(self.embed[tokens_BL])

    def __call__(self, tokens_BL: Int[Array, "B L"]) -> Float[Array, "B L V"]:
        if self.rcps:
            return rcps.head(self.hidden(rcps.fold(tokens_BL)), self.embed)
        return jnp.einsum("bld,vd->blv", self.hidden(tokens_BL), self.embed)

    def logits_at(self, tokens_BL: Int[Array, "B L"], pos_B: Int[Array, " B"]) -> Float[Array, "B V"]:
        """self(tokens_BL)[b, pos_B[b]]: every position runs through the trunk, only one per
        row through the head (what the masked scoring rule reads)."""
        if self.rcps:
            return rcps.head_at(self.hidden(rcps.fold(tokens_BL)), self.embed, pos_B)
        h_BD = self.hidden(tokens_BL)[jnp.arange(tokens_BL.shape[0]), pos_B]
        return h_BD @ self.embed.T


def strand_mean(fwd_BxV: Float[Array, "*B V"], rc_BxV: Float[Array, "*B V"]) -> Float[Array, "*B V"]:
    """The one strand average: the mean of the two strands' logits (or log-probabilities).

    `rc_BxV` must already be aligned to the forward strand (position and complemented base).
    A mean of log-probabilities, once renormalised (softmax / log-softmax), is the normalised
    geometric mean of the two strands' probabilities; since log-softmax ignores constant
    shifts, averaging logits and averaging log-probabilities give the same distribution. The
    geometric mean is chosen over an arithmetic mean of probabilities because it keeps the
    model log-linear, so scoring a table with both strands (nanodna.evaluation.scoring) gives
    exactly the masked scores of `conjoined_logits`. Callers renormalise.
    """
    return 0.5 * (fwd_BxV + rc_BxV)


def conjoined_logits(model: eqx.Module, tokens_BL: Int[Array, "B L"]) -> Float[Array, "B L V"]:
    """Post-hoc conjoining (Caduceus-Ph): the strand mean (`strand_mean`) of logits(x) and the
    strand-aligned logits(rc(x)). RC-equivariant by construction, whatever the model."""
    logits_rc = rcps.rc_logits(model(reverse_complement(tokens_BL)))
    return strand_mean(model(tokens_BL), logits_rc)
