"""On-disk genome store: memory-mapped token arrays per assembly plus a JSON manifest.

Layout of a store folder:

    manifest.json                {"format": "nanodna-genome-store", "version": 1,
                                  "assemblies": [{"name", "length", "n_frac", "repeat_frac",
                                                  "chromosomes": [{"name", "offset", "length",
                                                                   "n_frac", "repeat_frac"}]}]}
    <assembly>.tokens.npy        uint8 [length]: token ids (see tokenizer), chromosomes end to end
    <assembly>.repeat.npy        uint8 [ceil(length / 8)]: the soft-mask (lowercase) flag, bit-packed
                                 with np.packbits (big-endian bit order)

Chromosome c of an assembly occupies tokens[offset : offset + length]. Nothing here imports JAX.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from nanodna import tokenizer

FORMAT, VERSION = "nanodna-genome-store", 1


@dataclass(frozen=True)
class Chromosome:
    assembly: str
    name: str
    offset: int  # into the assembly's token array
    length: int
    n_frac: float
    repeat_frac: float


def assembly_record(name: str, chromosomes: list[dict]) -> dict:
    """Manifest entry for one assembly from its chromosome entries (offsets already set)."""
    length = sum(c["length"] for c in chromosomes)
    w = lambda key: sum(c[key] * c["length"] for c in chromosomes) / max(length, 1)  # noqa: E731
    return {
        "name": name,
        "length": length,
        "n_frac": w("n_frac"),
        "repeat_frac": w("repeat_frac"),
        "chromosomes": chromosomes,
    }


def write_manifest(store_dir: str, assemblies: list[dict]) -> None:
    with open(os.path.join(store_dir, "manifest.json"), "w") as f:
        # no indent: json falls back to its slow pure-Python encoder when indenting
        json.dump({"format": FORMAT, "version": VERSION, "assemblies": assemblies}, f)


def write_assembly_arrays(store_dir: str, name: str, ids: np.ndarray, repeat: np.ndarray) -> None:
    """Write one assembly's arrays from in-memory ids (uint8) and repeat flags (bool)."""
    np.save(os.path.join(store_dir, f"{name}.tokens.npy"), np.asarray(ids, dtype=np.uint8))
    np.save(os.path.join(store_dir, f"{name}.repeat.npy"), np.packbits(np.asarray(repeat, bool)))


def chromosome_stats(ids: np.ndarray, repeat: np.ndarray) -> dict:
    n = max(len(ids), 1)
    return {
        "length": int(len(ids)),
        "n_frac": float(np.count_nonzero(ids == tokenizer.UNK) / n),
        "repeat_frac": float(np.count_nonzero(repeat) / n),
    }


class GenomeStore:
    """Read-only view of a store folder. Arrays are memory-mapped, so opening is instant."""

    def __init__(self, store_dir: str):
        path = os.path.join(store_dir, "manifest.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{store_dir}: not a genome store (no manifest.json)")
        with open(path) as f:
            manifest = json.load(f)
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{path}: not a nanodna genome store manifest")
        self.dir = store_dir
        self.manifest = manifest
        self.assemblies: list[str] = [a["name"] for a in manifest["assemblies"]]
        self.lengths: dict[str, int] = {a["name"]: a["length"] for a in manifest["assemblies"]}
        self.chromosomes: list[Chromosome] = [
            Chromosome(a["name"], c["name"], c["offset"], c["length"], c["n_frac"], c["repeat_frac"])
            for a in manifest["assemblies"]
            for c in a["chromosomes"]
        ]
        self._tokens: dict[str, np.ndarray] = {}
        self._repeat: dict[str, np.ndarray] = {}

    def tokens(self, assembly: str) -> np.ndarray:
        """uint8 [length] memory map of the assembly's token ids."""
        if assembly not in self._tokens:
            p = os.path.join(self.dir, f"{assembly}.tokens.npy")
            self._tokens[assembly] = np.load(p, mmap_mode="r")
        return self._tokens[assembly]

    def repeat_packed(self, assembly: str) -> np.ndarray:
        if assembly not in self._repeat:
            p = os.path.join(self.dir, f"{assembly}.repeat.npy")
            self._repeat[assembly] = np.load(p, mmap_mode="r")
        return self._repeat[assembly]

    def window(self, assembly: str, start: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids uint8 [length], repeat bool [length]) for positions [start, start + length)."""
        ids = np.asarray(self.tokens(assembly)[start : start + length])
        lo, hi = start // 8, (start + length + 7) // 8
        bits = np.unpackbits(np.asarray(self.repeat_packed(assembly)[lo:hi]))
        rep = bits[start - lo * 8 : start - lo * 8 + length].astype(bool)
        return ids, rep
