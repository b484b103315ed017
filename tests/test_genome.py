"""Genome store: write arrays + manifest, read windows back through the memory map."""

import numpy as np
import pytest

from nanodna.data import genome


def _write_store(tmp_path, rng):
    chrom_lengths = [1001, 37, 4096]
    ids = rng.integers(2, 7, size=sum(chrom_lengths)).astype(np.uint8)
    rep = rng.random(ids.size) < 0.3
    chroms, offset = [], 0
    for i, n in enumerate(chrom_lengths):
        sl = slice(offset, offset + n)
        chroms.append({"name": f"chr{i}", "offset": offset, **genome.chromosome_stats(ids[sl], rep[sl])})
        offset += n
    genome.write_assembly_arrays(str(tmp_path), "asm", ids, rep)
    genome.write_manifest(str(tmp_path), [genome.assembly_record("asm", chroms)])
    return ids, rep


def test_windows_match_written_arrays(tmp_path):
    rng = np.random.default_rng(0)
    ids, rep = _write_store(tmp_path, rng)
    store = genome.GenomeStore(str(tmp_path))
    assert store.assemblies == ["asm"] and store.lengths["asm"] == ids.size
    assert [c.length for c in store.chromosomes] == [1001, 37, 4096]
    for start, length in [(0, 1), (5, 500), (1000, 38), (ids.size - 9, 9)]:
        w_ids, w_rep = store.window("asm", start, length)
        assert np.array_equal(w_ids, ids[start : start + length])
        assert np.array_equal(w_rep, rep[start : start + length])


def test_manifest_fractions(tmp_path):
    rng = np.random.default_rng(1)
    ids, rep = _write_store(tmp_path, rng)
    store = genome.GenomeStore(str(tmp_path))
    rec = store.manifest["assemblies"][0]
    assert rec["n_frac"] == pytest.approx(np.mean(ids == 2))
    assert rec["repeat_frac"] == pytest.approx(np.mean(rep))


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a genome store"):
        genome.GenomeStore(str(tmp_path))
