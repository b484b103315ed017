"""MLM masking statistics (15%, 80/10/10, weights) and CLM shifting."""

import numpy as np
import pytest

from nanodna import tokenizer
from nanodna.data import masking


def random_windows(rng, B, L, unk_frac=0.05, repeat_frac=0.3):
    ids = tokenizer.ACGT[rng.integers(0, 4, size=(B, L))].astype(np.uint8)
    ids[rng.random((B, L)) < unk_frac] = tokenizer.UNK
    ids[:, -3:] = tokenizer.PAD  # a padded tail, which must never be selected
    return ids, rng.random((B, L)) < repeat_frac


def test_mlm_statistics_match_the_80_10_10_rule():
    rng = np.random.default_rng()
    ids, repeat = random_windows(rng, 64, 2048)
    b = masking.mlm_mask(ids, repeat, np.random.default_rng(rng.integers(1 << 30)))
    tokens, targets, weights = b.tokens_BL, b.targets_BL, b.weights_BL
    assert tokens.dtype == targets.dtype == np.int32 and weights.dtype == np.float32
    np.testing.assert_array_equal(targets, ids)

    selected = weights > 0
    eligible = (ids != tokenizer.PAD) & (ids != tokenizer.UNK)
    assert not (selected & ~eligible).any()
    assert selected[eligible].mean() == pytest.approx(0.15, abs=0.005)
    masked = selected & (tokens == tokenizer.MASK)
    randomised = selected & (tokens != tokenizer.MASK) & (tokens != targets)
    n = selected.sum()
    assert masked.sum() / n == pytest.approx(0.8, abs=0.01)
    # A random base equals the original a quarter of the time: 7.5% differ, 12.5% look unchanged.
    assert randomised.sum() / n == pytest.approx(0.075, abs=0.01)
    assert np.isin(tokens[randomised], tokenizer.ACGT).all()
    # Off-selection: untouched input, zero weight.
    np.testing.assert_array_equal(tokens[~selected], ids[~selected])
    assert (weights[~selected] == 0).all()
    np.testing.assert_allclose(weights[selected & repeat], 0.1)
    np.testing.assert_allclose(weights[selected & ~repeat], 1.0)


def test_mlm_is_a_function_of_the_rng_seed():
    rng = np.random.default_rng()
    ids, repeat = random_windows(rng, 4, 128)
    seed = int(rng.integers(1 << 30))
    a = masking.mlm_mask(ids, repeat, np.random.default_rng(seed))
    b = masking.mlm_mask(ids, repeat, np.random.default_rng(seed))
    c = masking.mlm_mask(ids, repeat, np.random.default_rng(seed + 1))
    for x, y in zip(a, b):  # every field of the Batch
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.weights_BL, c.weights_BL)


def test_mlm_eval_weights_drop_repeats():
    rng = np.random.default_rng()
    ids, repeat = random_windows(rng, 8, 512)
    b = masking.mlm_mask(ids, repeat, rng, repeat_weight=0.0)
    assert (b.weights_BL[repeat] == 0).all() and (b.weights_BL[~repeat] > 0).any()


def test_mlm_rejects_bad_fractions():
    ids, repeat = random_windows(np.random.default_rng(), 2, 16)
    with pytest.raises(ValueError, match="> 1"):
        masking.mlm_mask(ids, repeat, np.random.default_rng(), mask_frac=0.8, random_frac=0.3)


def test_clm_shift():
    rng = np.random.default_rng()
    ids, repeat = random_windows(rng, 3, 65)
    b = masking.clm_shift(ids, repeat, repeat_weight=0.1)
    np.testing.assert_array_equal(b.tokens_BL, ids[:, :-1])
    np.testing.assert_array_equal(b.targets_BL, ids[:, 1:])
    real = np.isin(ids[:, 1:], tokenizer.ACGT)
    expected = np.where(real, np.where(repeat[:, 1:], 0.1, 1.0), 0.0)
    np.testing.assert_allclose(b.weights_BL, expected)
