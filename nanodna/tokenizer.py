"""Character-level DNA tokenizer, compatible with PlantCaduceus.

Seven ids, padded to a vocabulary of 8 so the embedding and LM head tile nicely:

    0 pad   1 mask   2 unk   3 a   4 c   5 g   6 t   (7 unused)

Case carries information in plant assemblies: lowercase marks soft-masked repeats. The token
id is case-free; the lowercase flag comes back as a separate per-base boolean array (`repeat`).

IUPAC ambiguity codes (N, R, Y, S, W, K, M, B, D, H, V) and '-' are all legal in assemblies and
all map to `unk`: the model never sees a guess at an ambiguous base. Any other byte is illegal
and `encode(..., strict=True)` reports it.

Glossary: L sequence length; ... any leading batch axes.
"""

from __future__ import annotations

import numpy as np

from nanodna.errors import UserError

PAD, MASK, UNK, A, C, G, T = 0, 1, 2, 3, 4, 5, 6
NUM_TOKENS = 7  # real ids
VOCAB_SIZE = 8  # padded embedding / head size
ACGT = np.array([A, C, G, T], dtype=np.int32)  # the four base ids, in a/c/g/t order
# The one base alphabet. Base code i (0..3) is BASES[i] and token id A + i; the code of the
# complement of code i is 3 - i (a-t, c-g), which reverse_complement_codes relies on.
BASES = "ACGT"
ITOS = ["[PAD]", "[MASK]", "[UNK]", "a", "c", "g", "t", "[UNUSED]"]

# complement of each id: a<->t, c<->g; specials map to themselves.
COMPLEMENT = np.array([PAD, MASK, UNK, T, G, C, A, 7], dtype=np.uint8)

IUPAC_AMBIGUOUS = b"NRYSWKMBDHVnryswkmbdhv-"

# byte -> id lookup (255 = illegal), and byte -> is-lowercase.
_BYTE_TO_ID = np.full(256, 255, dtype=np.uint8)
for _ch, _id in zip(BASES.encode(), (A, C, G, T)):
    _BYTE_TO_ID[_ch] = _id
    _BYTE_TO_ID[_ch + 32] = _id  # lowercase
for _ch in IUPAC_AMBIGUOUS:
    _BYTE_TO_ID[_ch] = UNK
_BYTE_IS_LOWER = np.zeros(256, dtype=bool)
_BYTE_IS_LOWER[ord("a") : ord("z") + 1] = True

_ID_TO_BYTE = np.frombuffer(b"..N" + BASES.encode() + b".", dtype=np.uint8).copy()
_ID_TO_BYTE[PAD], _ID_TO_BYTE[MASK] = ord("_"), ord("?")


class IllegalCharacterError(UserError):
    """A sequence holds a byte that is neither a base nor an IUPAC code."""

    def __init__(self, position: int, char: str):
        self.position, self.char = position, char
        super().__init__(f"illegal character {char!r} at offset {position}")


def encode_bytes(seq: bytes | bytearray | memoryview | np.ndarray, strict: bool = True):
    """Bytes -> (ids uint8 [L], repeat bool [L]). The fast path used by genome preparation.

    With strict=True an illegal byte raises IllegalCharacterError naming its offset; otherwise
    it becomes unk.
    """
    raw = np.frombuffer(seq, dtype=np.uint8) if not isinstance(seq, np.ndarray) else seq
    ids = _BYTE_TO_ID[raw]
    bad = ids == 255
    if bad.any():
        if strict:
            pos = int(np.argmax(bad))
            raise IllegalCharacterError(pos, chr(raw[pos]))
        ids = np.where(bad, UNK, ids).astype(np.uint8)
    return ids, _BYTE_IS_LOWER[raw]


def encode(seq: str, strict: bool = True):
    """String -> (ids uint8 [L], repeat bool [L]); lowercase sets `repeat`."""
    return encode_bytes(seq.encode("ascii", errors="replace"), strict=strict)


def decode(ids, repeat=None) -> str:
    """ids [L] -> string (upper case; lower case where `repeat` is set). unk -> 'N'."""
    ids = np.asarray(ids, dtype=np.uint8)
    out = _ID_TO_BYTE[ids]
    if repeat is not None:
        lower = np.asarray(repeat, dtype=bool) & (out >= ord("A")) & (out <= ord("Z"))
        out = np.where(lower, out + 32, out).astype(np.uint8)
    return out.tobytes().decode("ascii")


def base_codes(seq: str) -> np.ndarray:
    """'ACGT...' (either case) -> base codes uint8 [L] (0..3, see BASES); other letters fail."""
    return np.array([BASES.index(ch) for ch in seq.upper()], dtype=np.uint8)


def reverse_complement_codes(codes):
    """Reverse complement of base codes (0..3) along the last axis; keeps the dtype."""
    return (len(BASES) - 1) - codes[..., ::-1]


def reverse_complement(ids):
    """Reverse complement of token ids along the last axis (a<->t, c<->g; specials kept).

    Works on any array with the array API (NumPy, JAX) without importing JAX here.
    """
    xp = ids.__array_namespace__()
    is_base = (ids >= A) & (ids <= T)
    return xp.where(is_base, (A + T) - ids, ids)[..., ::-1].astype(ids.dtype)


_RC_TABLE = bytes.maketrans(
    (BASES + BASES.lower()).encode() + b"NnRrYySsWwKkMmBbDdHhVv",
    (BASES[::-1] + BASES[::-1].lower()).encode() + b"NnYyRrSsWwMmKkVvHhDdBb",
)



def reverse_complement_str(seq: str) -> str:
    """Reverse complement of a DNA string, keeping case and IUPAC codes (R<->Y, K<->M, ...)."""
    return seq.encode("ascii").translate(_RC_TABLE)[::-1].decode("ascii")
