"""Eval tables: reading parquet / CSV / TSV, default target index, one-line validation errors."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanodna import tokenizer
from nanodna.evaluation.tables import EvalTableError, default_pos, read_table


def _random_seqs(rng, n, length):
    return ["".join(rng.choice(list("ACGTacgt"), size=length)) for _ in range(n)]


def _write_text(path, header, rows, sep):
    with open(path, "w") as f:
        f.write(sep.join(header) + "\n")
        for row in rows:
            f.write(sep.join(str(v) for v in row) + "\n")


@pytest.fixture
def rng():
    return np.random.default_rng()


def test_formats_agree_and_tokenise(tmp_path, rng):
    seqs = _random_seqs(rng, 5, 24)
    labels = rng.integers(0, 2, size=5)
    pos = rng.integers(0, 24, size=5)
    rows = list(zip(seqs, labels, pos))
    _write_text(tmp_path / "t.tsv", ["sequence", "label", "pos"], rows, "\t")
    _write_text(
        tmp_path / "t.csv", ["pos", "sequence", "label"], [(p, s, y) for s, y, p in rows], ","
    )
    pq.write_table(
        pa.table({"sequence": seqs, "label": labels, "pos": pos}), tmp_path / "t.parquet"
    )
    tables = [read_table(tmp_path / f"t.{ext}") for ext in ("tsv", "csv", "parquet")]
    for t in tables:
        assert len(t) == 5
        np.testing.assert_array_equal(t.label_R, labels)
        np.testing.assert_array_equal(t.pos_R, pos)
        for i, s in enumerate(seqs):
            np.testing.assert_array_equal(t.ids[i], tokenizer.encode(s)[0])
            assert t.ref_R[i] == tokenizer.encode(s[pos[i]])[0][0]


def test_default_pos_is_left_of_centre(tmp_path, rng):
    lengths = [512, 33, 8192]
    seqs = ["".join(rng.choice(list("ACGT"), size=n)) for n in lengths]
    pq.write_table(pa.table({"sequence": seqs, "label": [0, 1, 0]}), tmp_path / "t.parquet")
    t = read_table(tmp_path / "t.parquet")
    assert list(t.pos_R) == [255, 15, 4095]
    assert [default_pos(n) for n in lengths] == [255, 15, 4095]


def test_max_rows(tmp_path, rng):
    _write_text(
        tmp_path / "t.tsv",
        ["sequence", "label"],
        zip(_random_seqs(rng, 9, 10), [0, 1] * 4 + [0]),
        "\t",
    )
    assert len(read_table(tmp_path / "t.tsv", max_rows=4)) == 4
    with pytest.raises(EvalTableError, match="max_rows"):
        read_table(tmp_path / "t.tsv", max_rows=0)


def test_variant_table(tmp_path, rng):
    seqs = ["".join(rng.choice(list("ACGT"), size=16)) for _ in range(4)]
    pos = rng.integers(0, 16, size=4)
    refs = [s[p] for s, p in zip(seqs, pos)]
    alts = [rng.choice([b for b in "ACGT" if b != r]) for r in refs]
    _write_text(
        tmp_path / "v.tsv", ["sequence", "pos", "ref", "alt"], zip(seqs, pos, refs, alts), "\t"
    )
    t = read_table(tmp_path / "v.tsv", task="variant")
    assert t.label_R is None
    np.testing.assert_array_equal(t.alt_R, [tokenizer.encode(a)[0][0] for a in alts])
    np.testing.assert_array_equal(t.ref_R, [tokenizer.encode(r)[0][0] for r in refs])


def _error(tmp_path, header, rows, task="conservation", name="bad.tsv"):
    _write_text(tmp_path / name, header, rows, "\t")
    with pytest.raises(EvalTableError) as e:
        read_table(tmp_path / name, task=task)
    msg = str(e.value)
    assert "\n" not in msg and name in msg
    return msg


def test_validation_errors(tmp_path):
    ok = "ACGTACGTAC"
    assert "missing column" in _error(tmp_path, ["sequence"], [(ok,)])
    assert "label" in _error(tmp_path, ["sequence"], [(ok,)])
    assert "no rows" in _error(tmp_path, ["sequence", "label"], [])
    assert "row 1" in _error(
        tmp_path, ["sequence", "label", "pos"], [(ok, 1, 3), (ok, 0, 10)]
    )  # pos past the end
    assert "outside" in _error(tmp_path, ["sequence", "label", "pos"], [(ok, 1, -1)])
    assert "outside" in _error(
        tmp_path, ["sequence", "label"], [(ok, 1), ("A", 0)]
    )  # too short for a centre
    assert "row 1: target base 'N'" in _error(
        tmp_path, ["sequence", "label", "pos"], [(ok, 1, 2), ("ACNT", 0, 2)]
    )
    assert "row 2: label '2'" in _error(
        tmp_path, ["sequence", "label"], [(ok, 1), (ok, 0), (ok, 2)]
    )
    assert "illegal character 'X' at offset 3" in _error(
        tmp_path, ["sequence", "label"], [("ACGXAC", 1)]
    )
    assert "empty sequence" in _error(tmp_path, ["sequence", "label"], [("", 1)])
    assert "not an integer" in _error(tmp_path, ["sequence", "label", "pos"], [(ok, 1, "x")])
    # variant task
    assert "does not match" in _error(
        tmp_path, ["sequence", "pos", "ref", "alt"], [("ACGT", 1, "A", "G")], "variant"
    )
    assert "alt equals ref" in _error(
        tmp_path, ["sequence", "pos", "ref", "alt"], [("ACGT", 1, "C", "C")], "variant"
    )
    assert "not one of A/C/G/T" in _error(
        tmp_path, ["sequence", "pos", "ref", "alt"], [("ACGT", 1, "C", "N")], "variant"
    )
    assert "missing column" in _error(tmp_path, ["sequence", "label"], [(ok, 1)], "variant")
    assert "unknown table format" in _error(
        tmp_path, ["sequence", "label"], [(ok, 1)], name="t.xlsx"
    )


def test_missing_file_and_malformed_csv(tmp_path):
    with pytest.raises(EvalTableError, match="no such file"):
        read_table(tmp_path / "nope.tsv")
    (tmp_path / "m.csv").write_text("sequence,label\nACGT,1,extra\n")
    with pytest.raises(EvalTableError, match="cannot read table") as e:
        read_table(tmp_path / "m.csv")
    assert "\n" not in str(e.value)
