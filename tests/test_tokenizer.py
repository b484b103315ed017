"""Tokenizer: ids, case flag, IUPAC handling, reverse complement."""

import numpy as np
import pytest

from nanodna import tokenizer as tok


def random_dna(rng, n, alphabet="ACGTacgtNnRYswkm"):
    return "".join(rng.choice(list(alphabet), size=n))


def test_ids_are_plantcad_compatible():
    assert (tok.PAD, tok.MASK, tok.UNK, tok.A, tok.C, tok.G, tok.T) == tuple(range(7))
    assert tok.NUM_TOKENS == 7 and tok.VOCAB_SIZE == 8
    assert [tok.ITOS[i] for i in tok.ACGT] == ["a", "c", "g", "t"]


def test_round_trip_keeps_case_and_maps_iupac_to_unk():
    rng = np.random.default_rng(0)
    seq = random_dna(rng, 500, "ACGTacgt")
    ids, rep = tok.encode(seq)
    assert ids.dtype == np.uint8 and rep.dtype == bool
    assert tok.decode(ids, rep) == seq
    assert np.array_equal(rep, np.array([c.islower() for c in seq]))
    ids, rep = tok.encode("ANRYSWKMBDHVn-")
    assert ids[0] == tok.A and (ids[1:] == tok.UNK).all()
    assert rep[-2] and not rep[1]


def test_illegal_character_names_offset():
    with pytest.raises(tok.IllegalCharacterError) as e:
        tok.encode("ACGTXACGT")
    assert e.value.position == 4 and e.value.char == "X"
    ids, _ = tok.encode("ACGTXACGT", strict=False)
    assert ids[4] == tok.UNK


def test_reverse_complement_numpy_and_jax():
    import jax.numpy as jnp

    rng = np.random.default_rng(1)
    seq = random_dna(rng, 257, "ACGTN")
    ids, _ = tok.encode(seq)
    rc_np = tok.reverse_complement(ids)
    assert np.array_equal(tok.reverse_complement(rc_np), ids)  # rc(rc(x)) == x
    assert tok.decode(rc_np) == tok.reverse_complement_str(seq)
    batch = rng.integers(0, 8, size=(3, 64)).astype(np.int32)
    rc_jax = np.asarray(tok.reverse_complement(jnp.asarray(batch)))
    assert np.array_equal(rc_jax, tok.reverse_complement(batch))
    assert np.array_equal(tok.reverse_complement(rc_jax), batch)


def test_reverse_complement_str_keeps_case_and_iupac():
    s = "AcgTNryKM"
    assert tok.reverse_complement_str(s) == "KMryNAcgT"
    assert tok.reverse_complement_str(tok.reverse_complement_str(s)) == s
