"""Reverse-complement parameter sharing (RCPS) as batch folding.

Caduceus-PS defines RC equivariance in a channel-split view: the embedding emits
concat[E(x), flip_{L,C}(E(rc(x)))] (2D channels), every block runs one module on the first
half and on flip_{L,C} of the second half, and the head reads
logits = W h_fwd + W[complement] flip_C(h_rc). Unrolled, that is one weight-shared network
run on x and on rc(x), combined only at the head. So we stack x and rc(x) in the batch
(`fold`), run an ordinary network, and combine at `head`. The channel-view functions below
are the published definition, kept so tests can show the two agree.

Caduceus' fused_add_norm=True path (ModelConfig.rcps_swap_strands) differs in one place: its
fused branch of RCPSMambaBlock.forward (kuleshov-group/caduceus, modeling_rcps.py) normalises
the *second* channel half as the forward strand and the first half, flipped, as the rc strand,
and writes them back in that order. In the channel view the two halves of the stream exchange
places before every block; in the folded batch that is `swap_strands`. The final norm
(CaduceusMixerModel.forward, fused branch) reads the halves in the ordinary order.

Glossary: B batch, L length, D width per strand, C = 2D channels of the split view,
V vocabulary. "2B" is the folded batch: rows [0, B) are x, rows [B, 2B) are rc(x).
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from nanodna.tokenizer import COMPLEMENT, reverse_complement


def fold(tokens_BL: Int[Array, "B L"]) -> Int[Array, "B2 L"]:
    """Stack x and rc(x) along the batch: the network then sees both strands."""
    return jnp.concatenate([tokens_BL, reverse_complement(tokens_BL)], axis=0)


def swap_strands(h_2BLD: Float[Array, "B2 L D"]) -> Float[Array, "B2 L D"]:
    """The fused-path strand exchange: h_x <- flip_{L,C}(h_rc), h_rc <- flip_{L,C}(h_x).

    Equal to exchanging the two channel halves of the split view (tests check this). Feeding
    rc(x) instead of x exchanges the two halves of the folded batch, and swap_strands commutes
    with that exchange, so RC equivariance holds, at any depth (odd included).
    """
    h_fwd, h_rc = jnp.split(h_2BLD, 2, axis=0)
    return jnp.concatenate([jnp.flip(h_rc, axis=(1, 2)), jnp.flip(h_fwd, axis=(1, 2))], axis=0)


def head(h_2BLD: Float[Array, "B2 L D"], W_VD: Float[Array, "V D"]) -> Float[Array, "B L V"]:
    """logits_t = W h_fwd[t] + W[complement] h_rc[L-1-t]: the rc strand's position L-1-t is
    the same base pair as position t, read on the other strand (so complemented)."""
    h_fwd, h_rc = jnp.split(h_2BLD.astype(jnp.float32), 2, axis=0)
    W = W_VD.astype(jnp.float32)
    W_comp = W[jnp.asarray(COMPLEMENT, jnp.int32)]
    logits_fwd = jnp.einsum("bld,vd->blv", h_fwd, W)
    return logits_fwd + jnp.einsum("bld,vd->blv", jnp.flip(h_rc, axis=1), W_comp)


def head_at(
    h_2BLD: Float[Array, "B2 L D"], W_VD: Float[Array, "V D"], pos_B: Int[Array, " B"]
) -> Float[Array, "B V"]:
    """`head` at one position per row, head(h)[b, pos_B[b]], without the other positions:
    the forward strand's h at pos, the rc strand's at L-1-pos (inference, scoring)."""
    h_fwd, h_rc = jnp.split(h_2BLD, 2, axis=0)
    rows_B, L = jnp.arange(h_fwd.shape[0]), h_fwd.shape[1]
    W = W_VD.astype(jnp.float32)
    W_comp = W[jnp.asarray(COMPLEMENT, jnp.int32)]
    h_fwd_BD = h_fwd[rows_B, pos_B].astype(jnp.float32)
    h_rc_BD = h_rc[rows_B, L - 1 - pos_B].astype(jnp.float32)
    return h_fwd_BD @ W.T + h_rc_BD @ W_comp.T


def rc_logits(logits_BLV: Float[Array, "B L V"]) -> Float[Array, "B L V"]:
    """What the logits of rc(x) must be for an RC-equivariant model: flip L, complement V."""
    return jnp.flip(logits_BLV, axis=1)[..., jnp.asarray(COMPLEMENT, jnp.int32)]


# --- the channel-split view (Caduceus' definition), for tests and interop -------------------


def rc_channels(h_BLC: Float[Array, "B L C"]) -> Float[Array, "B L C"]:
    """The reverse complement of a split-view activation: flip length and channels."""
    return jnp.flip(h_BLC, axis=(1, 2))


def to_channels(h_2BLD: Float[Array, "B2 L D"]) -> Float[Array, "B L C"]:
    """Folded batch -> split view: concat[h_fwd, flip_{L,C}(h_rc)]."""
    h_fwd, h_rc = jnp.split(h_2BLD, 2, axis=0)
    return jnp.concatenate([h_fwd, jnp.flip(h_rc, axis=(1, 2))], axis=-1)


def from_channels(h_BLC: Float[Array, "B L C"]) -> Float[Array, "B2 L D"]:
    """Split view -> folded batch (inverse of to_channels)."""
    h_fwd, h_rc = jnp.split(h_BLC, 2, axis=-1)
    return jnp.concatenate([h_fwd, jnp.flip(h_rc, axis=(1, 2))], axis=0)


def embed_channels(
    E_VD: Float[Array, "V D"], tokens_BL: Int[Array, "B L"]
) -> Float[Array, "B L C"]:
    """RCPS embedding as published: concat[E(x), flip_{L,C}(E(rc(x)))]."""
    rc_emb = jnp.flip(E_VD[reverse_complement(tokens_BL)], axis=(1, 2))
    return jnp.concatenate([E_VD[tokens_BL], rc_emb], axis=-1)


def block_channels(
    f: Callable[[Array], Array], h_BLC: Float[Array, "B L C"]
) -> Float[Array, "B L C"]:
    """An RCPS block as published: f on the first half, f under flip_{L,C} on the second."""
    h_fwd, h_rc = jnp.split(h_BLC, 2, axis=-1)
    out_rc = jnp.flip(f(jnp.flip(h_rc, axis=(1, 2))), axis=(1, 2))
    return jnp.concatenate([f(h_fwd), out_rc], axis=-1)


def head_channels(
    W_VD: Float[Array, "V D"], h_BLC: Float[Array, "B L C"]
) -> Float[Array, "B L V"]:
    """RCPS LM head as published: W h_fwd + W[complement] flip_C(h_rc)."""
    h_fwd, h_rc = jnp.split(h_BLC, 2, axis=-1)
    W_comp = W_VD[jnp.asarray(COMPLEMENT, jnp.int32)]
    return h_fwd @ W_VD.T + jnp.flip(h_rc, axis=-1) @ W_comp.T
