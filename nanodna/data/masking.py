"""Training targets from windows: BERT-style masking (MLM) and next-token shifting (CLM).

Pure NumPy functions of (ids, repeat, rng), so a batch is reproducible from its seed alone.

MLM follows PlantCAD (the Hugging Face collator's rule): each position that is a real base
or mask-able token (not pad, not unk) is selected with probability `mask_prob`; a selected
position becomes [MASK] with probability 0.8, a random base with 0.1, and stays unchanged
with 0.1. Only selected positions carry loss. The random replacement is drawn from a/c/g/t
only (the collator draws from the whole vocabulary, which would feed the model specials it
never sees otherwise).

Loss weights make soft-masked repeats (lowercase bases) count less: PlantCAD weighs them 0.1
in training and 0.0 in evaluation.

Glossary: B batch, L window length (seq_len; CLM windows are L + 1 long).
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Bool, Float32, Integer

from nanodna import tokenizer
from nanodna.data import DataError
from nanodna.data.batch import Batch


def loss_weights(
    target_BL: Integer[np.ndarray, "B L"], repeat_BL: Bool[np.ndarray, "B L"], repeat_weight: float
) -> Float32[np.ndarray, "B L"]:
    """1 at real bases, `repeat_weight` at repeat bases, 0 at pad/mask/unk."""
    real = np.isin(target_BL, tokenizer.ACGT)
    return np.where(real, np.where(repeat_BL, repeat_weight, 1.0), 0.0).astype(np.float32)


def mlm_mask(
    ids_BL: Integer[np.ndarray, "B L"],
    repeat_BL: Bool[np.ndarray, "B L"],
    rng: np.random.Generator,
    *,
    mask_prob: float = 0.15,
    mask_frac: float = 0.8,
    random_frac: float = 0.1,
    repeat_weight: float = 0.1,
) -> Batch:
    """Masked-LM Batch (tokens_BL, targets_BL, weights_BL); see the module docstring for the rule.

    mask_frac / random_frac: shares of the selected positions that become [MASK] / a random
    base; the rest stay unchanged.
    """
    if not (0.0 <= mask_prob <= 1.0 and mask_frac >= 0 and random_frac >= 0):
        raise DataError("mask_prob must be in [0, 1] and the fractions non-negative")
    if mask_frac + random_frac > 1.0 + 1e-9:
        raise DataError(f"mask_frac + random_frac = {mask_frac + random_frac} > 1")
    targets_BL = ids_BL.astype(np.int32)
    maskable = (targets_BL != tokenizer.PAD) & (targets_BL != tokenizer.UNK)
    selected = maskable & (rng.random(ids_BL.shape) < mask_prob)
    # One uniform draw per position splits the selected ones into mask / random / keep.
    u = rng.random(ids_BL.shape)
    to_mask = selected & (u < mask_frac)
    to_random = selected & (u >= mask_frac) & (u < mask_frac + random_frac)
    random_bases = tokenizer.ACGT[rng.integers(0, 4, size=ids_BL.shape)]
    tokens_BL = np.where(to_mask, tokenizer.MASK, np.where(to_random, random_bases, targets_BL))
    weights_BL = np.where(repeat_BL, repeat_weight, 1.0).astype(np.float32) * selected
    return Batch(tokens_BL.astype(np.int32), targets_BL, weights_BL.astype(np.float32))


def clm_shift(
    ids_BL1: Integer[np.ndarray, "B L1"],
    repeat_BL1: Bool[np.ndarray, "B L1"],
    *,
    repeat_weight: float = 0.1,
) -> Batch:
    """Causal-LM Batch from windows one longer than the model input: predict w[t+1] from w[:t+1].

    No randomness: the window itself is the only source of variation.
    """
    targets_BL = ids_BL1[:, 1:].astype(np.int32)
    return Batch(
        ids_BL1[:, :-1].astype(np.int32),
        targets_BL,
        loss_weights(targets_BL, repeat_BL1[:, 1:], repeat_weight),
    )

