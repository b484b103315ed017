"""FASTA reader: records, case, gzip (incl. multi-member), chunk boundaries, and bad input."""

import gzip
import zlib

import numpy as np
import pytest

from nanodna import tokenizer
from nanodna.data import DataError, fasta


def random_seq(rng, n, n_frac=0.0):
    """Mixed-case DNA with some N, as soft-masked assemblies look."""
    seq = rng.choice(list("ACGTacgt"), size=n)
    seq[rng.random(n) < n_frac] = "N"
    return "".join(seq)


def fasta_text(records, width=60):
    lines = []
    for name, seq in records:
        lines.append(f">{name} some description")
        lines += [seq[i : i + width] for i in range(0, len(seq), width)]
    return "\n".join(lines) + "\n"


def collect(path):
    """{record name: sequence string} rebuilt from the reader's pieces."""
    out, names = {}, []
    for piece in fasta.read_fasta(str(path)):
        if piece.record == len(names):
            names.append(piece.name)
            out[piece.name] = ""
        out[piece.name] += tokenizer.decode(piece.ids_L, piece.repeat_L)
    return out


@pytest.fixture
def records():
    rng = np.random.default_rng()
    return [(f"chr{i}", random_seq(rng, int(rng.integers(50, 400)), 0.05)) for i in range(4)]


@pytest.mark.parametrize("compress", ["plain", "gzip", "multi-member gzip"])
def test_read_fasta_round_trip(tmp_path, records, compress):
    text = fasta_text(records).encode()
    path = tmp_path / "g.fa"
    if compress == "plain":
        path.write_bytes(text)
    elif compress == "gzip":
        path.write_bytes(gzip.compress(text))
    else:  # bgzip-like: several gzip members back to back
        half = len(text) // 2
        path.write_bytes(gzip.compress(text[:half]) + gzip.compress(text[half:]))
    assert collect(path) == dict(records)


@pytest.mark.parametrize("read_bytes", [1, 7, 61])
def test_tiny_chunks_split_headers_and_lines(tmp_path, monkeypatch, records, read_bytes):
    # Headers and CRLF line ends cut across chunk boundaries must still parse the same.
    monkeypatch.setattr(fasta, "READ_BYTES", read_bytes)
    monkeypatch.setattr(fasta, "MAX_CHUNK", 5)
    path = tmp_path / "g.fa.gz"
    path.write_bytes(gzip.compress(fasta_text(records, width=17).replace("\n", "\r\n").encode()))
    assert collect(path) == dict(records)


def test_illegal_character_names_file_record_and_line(tmp_path):
    rng = np.random.default_rng()
    records = [(f"chr{i}", random_seq(rng, 300)) for i in range(3)]
    text = fasta_text(records, width=50).splitlines()
    # Put a bad byte in the 3rd sequence line of the 2nd record.
    header_line = next(i for i, t in enumerate(text) if t.startswith(">chr1"))
    bad = header_line + 3
    text[bad] = text[bad][:5] + "!" + text[bad][6:]
    path = tmp_path / "bad.fa"
    path.write_text("\n".join(text) + "\n")
    message = rf"bad.fa: record 'chr1', line {bad + 1}: illegal character '!'"
    with pytest.raises(DataError, match=message):
        collect(path)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty file"),
        (b"\n\n", "empty file"),
        (b"ACGT\n>chr1\nACGT\n", "line 1: sequence before the first '>' header"),
        (b"\n\nACGT\n", "line 3: sequence before the first '>' header"),
        (b">\nACGT\n", "line 1: header '>' without a record name"),
    ],
)
def test_bad_fasta(tmp_path, content, message):
    path = tmp_path / "x.fa"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        collect(path)


def test_truncated_and_corrupt_gzip(tmp_path, records):
    data = gzip.compress(fasta_text(records).encode())
    path = tmp_path / "t.fa.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated gzip"):
        collect(path)
    corrupt = bytearray(data)
    corrupt[20:40] = bytes(20)
    path.write_bytes(bytes(corrupt))
    with pytest.raises(DataError, match="corrupt gzip|truncated gzip"):
        collect(path)


def test_read_chunks_bounds_output_of_compressible_data(tmp_path, monkeypatch):
    # A megabyte of N compresses to ~1 kB; the reader must still hand it out in small pieces.
    monkeypatch.setattr(fasta, "MAX_CHUNK", 4096)
    data = zlib.compress(b"N" * (1 << 20))
    path = tmp_path / "n.gz"
    path.write_bytes(gzip.compress(b"N" * (1 << 20)))
    sizes = [len(c) for c in fasta.read_chunks(str(path))]
    assert max(sizes) <= 4096 and sum(sizes) == 1 << 20 and len(data) < 1 << 20


@pytest.mark.parametrize(
    "path, name",
    [
        ("/a/TAIR10.fa.gz", "TAIR10"),
        ("x/Zm-B73.fasta", "Zm-B73"),
        ("GCF_1.2_genomic.fna.gz", "GCF_1.2_genomic"),
        ("plain", "plain"),
    ],
)
def test_assembly_name_from_path(path, name):
    assert fasta.assembly_name_from_path(path) == name


@pytest.mark.parametrize("ends", ["\r", "\r\n", "mixed"])
@pytest.mark.parametrize("read_bytes", [1, 3, 1 << 20])
def test_cr_crlf_and_mixed_line_ends_read_alike(tmp_path, monkeypatch, records, ends, read_bytes):
    # Issue 13: a FASTA with old Mac line ends (CR only) read as one long header line, then
    # "record 'chr1' has no sequence". Every line end is a line end now.
    monkeypatch.setattr(fasta, "READ_BYTES", read_bytes)
    lines = fasta_text(records, width=23).split("\n")[:-1]
    rng = np.random.default_rng()
    if ends == "mixed":
        seps = rng.choice(["\n", "\r", "\r\n"], size=len(lines))
    else:
        seps = [ends] * len(lines)
    path = tmp_path / "mac.fa"
    path.write_bytes("".join(t + e for t, e in zip(lines, seps)).encode())
    assert collect(path) == dict(records)


def test_cr_only_errors_name_the_right_line(tmp_path):
    path = tmp_path / "mac.fa"
    path.write_bytes(b">c1\rACGT\rAC!T\r")
    with pytest.raises(DataError, match=r"record 'c1', line 3: illegal character '!'"):
        collect(path)


def test_truncated_gzip_names_the_line_reached(tmp_path, records):
    data = gzip.compress(fasta_text(records).encode())
    path = tmp_path / "t.fa.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"truncated gzip .*after line \d+"):
        collect(path)


def test_header_pieces_carry_their_line(tmp_path):
    path = tmp_path / "x.fa"
    path.write_bytes(b">a\nACGT\nAC\n\n>b desc\r\nAAA\r>c\rC\n")
    heads = [(p.name, p.line) for p in fasta.read_fasta(str(path)) if len(p.ids_L) == 0]
    assert heads == [("a", 1), ("b", 5), ("c", 7)]
