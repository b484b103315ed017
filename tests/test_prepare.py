"""Genome preparation: FASTA and table round trips, bad input (one line, no partial output), CLI."""

import gzip
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_fasta import fasta_text, random_seq

from nanodna import tokenizer
from nanodna.data import DataError, prepare
from nanodna.data.__main__ import main
from nanodna.data.genome import GenomeStore


def read_back(store_dir):
    """{assembly: {chromosome: sequence string}} from a store."""
    store = GenomeStore(str(store_dir))
    out = {}
    for c in store.chromosomes:
        ids, rep = store.window(c.assembly, c.offset, c.length)
        out.setdefault(c.assembly, {})[c.name] = tokenizer.decode(ids, rep)
    return out


def write_fasta(path, records, gz=False):
    data = fasta_text(records).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return str(path)


@pytest.fixture
def genomes(tmp_path):
    rng = np.random.default_rng()
    a = [(f"chr{i}", random_seq(rng, int(rng.integers(100, 1000)), 0.03)) for i in range(3)]
    b = [("scaffold_1", random_seq(rng, 777)), ("scaffold_2", random_seq(rng, 9))]
    return {"speciesA": a, "speciesB": b}


def no_leftovers(out):
    """Neither the output, nor a hidden temp folder next to it, nor a parent made for it."""
    parent, base = os.path.dirname(out), os.path.basename(out)
    if not os.path.exists(parent):
        return True
    return not os.path.exists(out) and not [n for n in os.listdir(parent) if base in n]


def test_fasta_round_trip_plain_and_gzip(tmp_path, genomes):
    paths = [
        write_fasta(tmp_path / "speciesA.fa", genomes["speciesA"]),
        write_fasta(tmp_path / "speciesB.fasta.gz", genomes["speciesB"], gz=True),
    ]
    out = tmp_path / "store"
    records = prepare.prepare_fasta(paths, str(out), progress=False)
    assert read_back(out) == {k: dict(v) for k, v in genomes.items()}  # case and N kept
    assert [r["name"] for r in records] == ["speciesA", "speciesB"]
    store = GenomeStore(str(out))
    for c in store.chromosomes:
        seq = dict(genomes[c.assembly])[c.name]
        assert c.length == len(seq)
        assert c.n_frac == pytest.approx(seq.count("N") / len(seq))
        assert c.repeat_frac == pytest.approx(sum(ch.islower() for ch in seq) / len(seq))


def test_one_named_assembly_and_one_per_record(tmp_path, genomes):
    paths = [write_fasta(tmp_path / f"{k}.fa", v) for k, v in genomes.items()]
    prepare.prepare_fasta(paths, str(tmp_path / "one"), assembly="merged", progress=False)
    merged = dict(genomes["speciesA"] + genomes["speciesB"])
    assert read_back(tmp_path / "one") == {"merged": merged}
    prepare.prepare_fasta(paths, str(tmp_path / "each"), per_record=True, progress=False)
    assert read_back(tmp_path / "each") == {name: {name: seq} for name, seq in merged.items()}


def _random_bases(n):
    """Incompressible enough that cutting the gzip stream short really truncates it."""
    return np.random.default_rng().choice(list(b"ACGT"), n).astype(np.uint8).tobytes()


BAD_FASTA = {
    "empty": ([b""], "empty file"),
    "no header": ([b"ACGT\nACGT\n"], "sequence before the first '>'"),
    "illegal": ([b">c1\nACGT\nAC#T\n"], r"x0.fa: record 'c1', line 3: illegal character '#'"),
    "truncated gzip": ([gzip.compress(b">c1\n" + _random_bases(5000))[:500]], "truncated gzip"),
    "duplicate record": ([b">c1\nACGT\n>c1 again\nAC\n"],
                         "x0.fa: line 3: duplicate record name 'c1'"),
    "all N": ([b">c1\nACGT\n>c2\nNNNN\nnn\n"], "x0.fa: line 3: record 'c2' is all N"),
    "empty record": ([b">c1\n>c2\nAC\n"], "x0.fa: line 1: record 'c1' has no sequence"),
    "empty last record": ([b">c1\nAC\n>c2\n"], "x0.fa: line 3: record 'c2' has no sequence"),
    "duplicate assembly": ([b">c1\nACGT\n", b">c2\nACGT\n"], "duplicate assembly name 'x'"),
}


@pytest.mark.parametrize("case", list(BAD_FASTA))
def test_bad_fasta_gives_one_line_and_no_output(tmp_path, case):
    contents, message = BAD_FASTA[case]
    paths = []
    for i, data in enumerate(contents):
        name = "x.fa" if case == "duplicate assembly" else f"x{i}.fa"
        folder = tmp_path / f"d{i}"
        folder.mkdir()
        path = folder / (name + (".gz" if data[:2] == b"\x1f\x8b" else ""))
        path.write_bytes(data)
        paths.append(str(path))
    out = str(tmp_path / "new" / "store")
    with pytest.raises(DataError, match=message) as err:
        prepare.prepare_fasta(paths, out, progress=False)
    assert "\n" not in str(err.value)
    assert not os.path.exists(tmp_path / "new")


def test_cli_prints_one_error_line_and_fails(tmp_path, capsys):
    bad = tmp_path / "bad.fa"
    bad.write_bytes(b">c1\nAC!T\n")
    out = str(tmp_path / "store")
    assert main(["prepare", "--quiet", "--fasta", str(bad), "--out", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {bad}: record 'c1', line 2: illegal character '!'"]
    assert no_leftovers(out)


def test_cli_prepare_stats_and_force(tmp_path, genomes, capsys):
    path = write_fasta(tmp_path / "speciesA.fa.gz", genomes["speciesA"], gz=True)
    out = str(tmp_path / "store")
    assert main(["prepare", "--quiet", "--fasta", path, "--out", out]) == 0
    assert main(["prepare", "--quiet", "--fasta", path, "--out", out]) == 2  # exists
    assert "already exists" in capsys.readouterr().err
    assert main(["prepare", "--quiet", "--force", "--fasta", path, "--out", out]) == 0
    assert main(["stats", out]) == 0
    table = capsys.readouterr().out
    for name, seq in genomes["speciesA"]:
        assert name in table and f"{len(seq):,}" in table
    assert main(["stats", str(tmp_path)]) == 2  # not a store


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["prepare", "--help"])
    assert e.value.code == 0 and "--assembly-per-record" in capsys.readouterr().out


def test_cli_user_errors_exit_2_with_one_line(tmp_path):
    """Bad arguments or inputs: exit status 2 and one `error:` line on stderr, nothing else."""
    (tmp_path / "bad.fa").write_text(">c1\nAC!T\n")
    (tmp_path / "a_file").write_text("")
    cases = [
        ["simulate"],  # no --out
        ["simulate", "--out", str(tmp_path / "a_file" / "sim")],  # cannot be made: OSError
        ["prepare", "--quiet", "--fasta", str(tmp_path / "missing.fa"), "--out", str(tmp_path / "s")],
        ["prepare", "--quiet", "--fasta", str(tmp_path / "bad.fa"), "--out", str(tmp_path / "s")],
        ["prepare", "--quiet", "--table", str(tmp_path / "bad.fa"), "--out", str(tmp_path / "s")],
        ["prepare", "--out", str(tmp_path / "s")],  # neither --fasta nor --table (argparse)
        ["stats", str(tmp_path)],  # not a store
        ["frobnicate"],
    ]
    for args in cases:
        proc = subprocess.run([sys.executable, "-m", "nanodna.data", *args], capture_output=True,
                              text=True, check=False, env={**os.environ, "PYTHONPATH": os.getcwd()})
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, proc.stderr)
    assert not os.path.exists(tmp_path / "s")


def window_table(rng, n_rows=12):
    """PlantCAD-style rows, about half on the minus strand, and their forward sequences."""
    rows, forward = [], {}
    for i in range(n_rows):
        asm, chrom = f"asm{i % 2}", f"chr{i % 3}"
        start = 1000 * i
        seq = random_seq(rng, 64, 0.05)
        strand = "-" if rng.random() < 0.5 else "+"
        stored = tokenizer.reverse_complement_str(seq) if strand == "-" else seq
        rows.append({"assembly": asm, "chrom": chrom, "start": start, "end": start + 64,
                     "strand": strand, "seq": stored})
        forward.setdefault(asm, {})[f"{chrom}:{start}-{start + 64}"] = seq
    return rows, forward


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet"])
def test_table_round_trip_with_minus_strand(tmp_path, fmt):
    rows, forward = window_table(np.random.default_rng())
    path = tmp_path / f"windows.{fmt}"
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        sep = "," if fmt == "csv" else "\t"
        lines = [sep.join(rows[0])] + [sep.join(str(v) for v in r.values()) for r in rows]
        path.write_text("\n".join(lines) + "\n")
    prepare.prepare_tables([str(path)], str(tmp_path / "store"), progress=False)
    assert read_back(tmp_path / "store") == forward
    for c in GenomeStore(str(tmp_path / "store")).chromosomes:
        seq = forward[c.assembly][c.name]
        assert c.n_frac == pytest.approx(seq.count("N") / len(seq))
        assert c.repeat_frac == pytest.approx(sum(ch.islower() for ch in seq) / len(seq))


@pytest.mark.parametrize(
    "header, row, message",
    [
        ("assembly,chrom,start,end,seq", "a,c1,0,4,ACGT", "missing column(s) strand"),
        ("assembly,chrom,start,end,strand,seq", "a,c1,0,4,*,ACGT", "row 1: strand must be"),
        ("assembly,chrom,start,end,strand,seq", "a,c1,0,4,+,AC%T", "row 1: illegal character '%'"),
        ("assembly,chrom,start,end,strand,seq", "a,c1,zero,4,+,ACGT", "row 1: start/end 'zero'"),
        ("assembly,chrom,start,end,strand,seq", "", "empty table"),
        ("assembly,chrom,start,end,strand,seq", "a,c1,0,4,+,", "row 1: empty or missing seq"),
        ("assembly,chrom,start,end,strand,seq", "a,c1,0,4,-,NNnN", "row 1: record 'c1:0-4' is all"),
    ],
)
def test_bad_tables(tmp_path, header, row, message):
    path = tmp_path / "t.csv"
    path.write_text(f"{header}\n{row}\n" if row else f"{header}\n")
    out = str(tmp_path / "store")
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        prepare.prepare_tables([str(path)], out, progress=False)
    assert no_leftovers(out)


def test_duplicate_window_in_table_is_an_error(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("assembly\tchrom\tstart\tend\tstrand\tseq\n" + "a\tc\t0\t4\t+\tACGT\n" * 2)
    with pytest.raises(DataError, match=r"row 2: duplicate record name 'c:0-4'"):
        prepare.prepare_tables([str(path)], str(tmp_path / "s"), progress=False)


def test_table_error_names_the_right_row_and_offset(tmp_path):
    path = tmp_path / "t.tsv"
    rows = ["a\tc\t0\t4\t+\tACGT", "b\tc\t0\t4\t-\tacgt", "a\tc\t8\t12\t+\tACGTAXGT"]
    path.write_text("assembly\tchrom\tstart\tend\tstrand\tseq\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"t.tsv: row 3: illegal character 'X' at offset 5"):
        prepare.prepare_tables([str(path)], str(tmp_path / "s"), progress=False)
