"""Hostile inputs, fuzzed (issue 13, deliver 8): the tokenizer, the FASTA reader and the table
readers either parse an input correctly (checked against a simple reference parse written
here, independent of the code under test) or refuse it with ONE line (a UserError; exit 2 and
one `error:` line at the command line) and leave no partial output.

Hypothesis drives every test with a small example budget so the file runs in well under 30 s.
"""

import contextlib
import gzip
import importlib.util
import io
import os
import shutil
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from nanodna import tokenizer
from nanodna.data import DataError, fasta, prepare
from nanodna.errors import UserError
from nanodna.evaluation import metrics
from nanodna.evaluation.tables import EvalTableError, default_pos, read_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("eval_cli", os.path.join(ROOT, "eval.py"))
eval_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(eval_cli)

FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# --- an independent reference of the alphabet ---------------------------------------------
REF_ID = {**{c: 3 + i for i, c in enumerate("ACGT")}, **{c: 3 + i for i, c in enumerate("acgt")}}
REF_ID.update({c: tokenizer.UNK for c in "NRYSWKMBDHVnryswkmbdhv-"})
SEQ_ALPHABET = "ACGTacgtNnRYryKMkmSWswBDHVbdhv-"


def ref_encode(text: bytes):
    """(ids, repeat) by the documented rules, or the offset of the first illegal byte."""
    ids, rep = [], []
    for k, b in enumerate(text):
        ch = chr(b)
        if ch not in REF_ID:
            return k
        ids.append(REF_ID[ch]), rep.append("a" <= ch <= "z")
    return np.array(ids, np.uint8), np.array(rep, bool)


def one_line(e: BaseException) -> bool:
    return isinstance(e, UserError) and "\n" not in str(e) and str(e).strip() != ""


# --- tokenizer -----------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=200))
def test_tokenizer_random_bytes(data):
    ref = ref_encode(data)
    if isinstance(ref, int):
        with pytest.raises(tokenizer.IllegalCharacterError) as e:
            tokenizer.encode_bytes(data)
        assert e.value.position == ref and one_line(e.value)
        ids, _ = tokenizer.encode_bytes(data, strict=False)  # lenient: illegal -> unk
        assert ids[ref] == tokenizer.UNK and len(ids) == len(data)
    else:
        ids, rep = tokenizer.encode_bytes(data)
        np.testing.assert_array_equal(ids, ref[0])
        np.testing.assert_array_equal(rep, ref[1])


@FUZZ
@given(st.text(alphabet=SEQ_ALPHABET, max_size=100))
def test_tokenizer_iupac_mixed_case_round_trip(seq):
    ids, rep = tokenizer.encode(seq)
    # decode keeps case and bases; every ambiguity code comes back as N
    expected = "".join(c if c in "ACGTacgt" else ("n" if c.islower() else "N") for c in seq)
    assert tokenizer.decode(ids, rep) == expected
    assert tokenizer.reverse_complement_str(tokenizer.reverse_complement_str(seq)) == seq
    np.testing.assert_array_equal(
        tokenizer.reverse_complement(tokenizer.reverse_complement(ids)), ids)


# --- FASTA reader --------------------------------------------------------------------------


def ref_parse_fasta(data: bytes):
    """[(name, ids, repeat)] of a plain FASTA file, or 'error'. Any of LF, CR, CRLF ends a
    line; spaces and tabs inside sequence lines are ignored."""
    text = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    records = []
    for line in text.split(b"\n"):
        if line.startswith(b">"):
            words = line[1:].split()
            if not words:
                return "error"
            records.append([words[0].decode("ascii", errors="replace"), b""])
        else:
            seq = line.replace(b" ", b"").replace(b"\t", b"")
            if not records:
                if seq:
                    return "error"
            else:
                records[-1][1] += seq
    if not records:
        return "error"
    out = []
    for name, seq in records:
        enc = ref_encode(seq)
        if isinstance(enc, int):
            return "error"
        out.append((name, *enc))
    return out


def read_all(path):
    """[(name, ids, repeat)] from the reader's pieces, in record order."""
    out = []
    for piece in fasta.read_fasta(str(path)):
        if piece.record == len(out):
            out.append([piece.name, [], []])
        out[-1][1].append(piece.ids_L), out[-1][2].append(piece.repeat_L)
    return [(n, np.concatenate(i) if i else np.zeros(0, np.uint8),
             np.concatenate(r) if r else np.zeros(0, bool)) for n, i, r in out]


def check_reader(data: bytes, read_bytes: int, expected=None):
    """Read `data` from a file: the reference parse (`expected`, by default that of `data`)
    or one DataError line naming the file."""
    old = fasta.READ_BYTES
    fasta.READ_BYTES = read_bytes
    tmp = tempfile.mkdtemp()
    try:
        path = os.path.join(tmp, "x.fa")
        with open(path, "wb") as f:
            f.write(data)
        if expected is None:
            expected = ref_parse_fasta(data)
        try:
            got = read_all(path)
        except DataError as e:
            assert one_line(e) and str(e).startswith(path)
            assert expected == "error", (expected, str(e))
            return None
        assert expected != "error", data
        assert [g[0] for g in got] == [x[0] for x in expected]
        for (_, gi, gr), (_, ei, er) in zip(got, expected):
            np.testing.assert_array_equal(gi, ei)
            np.testing.assert_array_equal(gr, er)
        return got
    finally:
        fasta.READ_BYTES = old
        shutil.rmtree(tmp)


@FUZZ
@given(st.binary(max_size=300), st.sampled_from([1, 2, 5, 64, 1 << 20]))
def test_fasta_random_bytes(data, read_bytes):
    check_reader(data, read_bytes)


@st.composite
def fasta_files(draw):
    """Structured FASTA: records (some empty), IUPAC and mixed case, random line widths
    (including lines much longer than the read buffer), CR / LF / CRLF per line, blank lines,
    sometimes a stray illegal byte."""
    lines = []
    for _ in range(draw(st.integers(1, 4))):
        name = draw(st.text(alphabet="abcXYZ019._|", min_size=1, max_size=8))
        desc = draw(st.sampled_from(["", " desc", "\tx y"]))
        lines.append(f">{name}{desc}")
        seq = draw(st.text(alphabet=SEQ_ALPHABET, max_size=150))
        width = draw(st.integers(1, 160))
        lines += [seq[i : i + width] for i in range(0, len(seq), width)]
        if draw(st.booleans()):
            lines.append("")
    if draw(st.integers(0, 5)) == 0:  # a stray byte somewhere
        k = draw(st.integers(0, len(lines) - 1))
        lines[k] += draw(st.sampled_from(["!", "*", "1", "\x00", "é", "U"]))
    ends = draw(st.lists(st.sampled_from(["\n", "\r", "\r\n"]), min_size=len(lines),
                         max_size=len(lines)))
    return "".join(t + e for t, e in zip(lines, ends)).encode("utf-8")


@FUZZ
@given(fasta_files(), st.sampled_from([1, 3, 7, 16, 1 << 20]))
def test_fasta_structured(data, read_bytes):
    check_reader(data, read_bytes)


@settings(max_examples=25, deadline=None)
@given(fasta_files(), st.floats(0.0, 1.0), st.sampled_from([1, 64, 1 << 20]))
def test_fasta_gzip_and_truncated_gzip(data, keep, read_bytes):
    expected = ref_parse_fasta(data)
    assume(expected != "error")
    packed = gzip.compress(data)
    cut = packed[: max(int(len(packed) * keep), 2)]  # keeps the magic bytes: read as gzip
    # whole: parses like the plain file; cut short (even after all the text, before the
    # trailer): refused as truncated, one line
    got = check_reader(cut, read_bytes, expected if cut == packed else "error")
    assert (got is None) == (cut != packed)


@settings(max_examples=20, deadline=None)
@given(fasta_files())
def test_prepare_fasta_all_or_nothing(data):
    """prepare either writes a store that holds the reference parse, or raises one line and
    leaves no output folder."""
    tmp = tempfile.mkdtemp()
    try:
        path = os.path.join(tmp, "g.fa")
        with open(path, "wb") as f:
            f.write(data)
        out = os.path.join(tmp, "new", "store")
        expected = ref_parse_fasta(data)
        try:
            prepare.prepare_fasta([path], out, progress=False)
        except DataError as e:
            assert one_line(e)
            assert not os.path.exists(os.path.join(tmp, "new"))
            return
        assert expected != "error"
        names = [n for n, _, _ in expected]
        assert len(set(names)) == len(names)
        assert all(len(i) and (i != tokenizer.UNK).any() for _, i, _ in expected)
        tokens = np.load(os.path.join(out, "g.tokens.npy"))
        np.testing.assert_array_equal(tokens, np.concatenate([i for _, i, _ in expected]))
    finally:
        shutil.rmtree(tmp)


# --- evaluation tables ---------------------------------------------------------------------


@st.composite
def conservation_tables(draw):
    """(header columns, rows) of a conservation table. Most tables and rows are well formed
    (so the parse is checked, not only the refusal); some columns or cells are hostile."""
    columns = draw(st.sampled_from([["sequence", "label"]] * 3 + [["sequence", "label", "pos"]] * 3
                                   + [["sequence"], ["label", "pos"], ["seq", "label"]]))
    rows = []
    for _ in range(draw(st.integers(0, 6))):
        seq = draw(st.text(alphabet="ACGTacgtN", min_size=1, max_size=12))
        p = draw(st.integers(0, len(seq) - 1))
        seq = seq[:p] + draw(st.sampled_from("ACGTacgt")) + seq[p + 1 :]
        if "pos" not in columns:  # the centre convention
            seq = seq[: default_pos(len(seq))] + "A" + seq[default_pos(len(seq)) + 1 :] \
                if default_pos(len(seq)) >= 0 else seq
        row = {"sequence": seq, "seq": seq, "label": draw(st.sampled_from(["0", "1"])),
               "pos": str(p)}
        if draw(st.integers(0, 3)) == 0:  # one hostile cell
            field = draw(st.sampled_from(["sequence", "label", "pos"]))
            row[field] = draw({
                "sequence": st.text(alphabet=SEQ_ALPHABET + "xZ!", max_size=12),
                "label": st.sampled_from(["2", "-1", "yes", "", "0.5", "1.0", "true"]),
                "pos": st.sampled_from(["-1", "99", "1.5", "x", "", "0.0"]),
            }[field])
            row["seq"] = row["sequence"]
        rows.append(row)
    return columns, rows


def ref_read_conservation(columns, rows):
    """(seqs, pos, labels) or 'error', by the documented rules of evaluation/tables.py."""
    if "sequence" not in columns or "label" not in columns or not rows:
        return "error"
    out = []
    for r in rows:
        seq = r["sequence"]
        if not seq or isinstance(ref_encode(seq.encode()), int):
            return "error"
        if "pos" in columns:
            try:
                p = float(r["pos"])
            except ValueError:
                return "error"
            if not p.is_integer():
                return "error"
            p = int(p)
        else:
            p = default_pos(len(seq))
        if not 0 <= p < len(seq) or seq[p].upper() not in "ACGT":
            return "error"
        labels = {"0": 0, "1": 1, "1.0": 1, "0.0": 0, "true": 1, "false": 0}
        if r["label"] not in labels:
            return "error"
        out.append((seq, p, labels[r["label"]]))
    return out


@FUZZ
@given(conservation_tables(), st.sampled_from(["tsv", "csv"]))
def test_eval_table_reader(table, fmt):
    columns, rows = table
    sep = "\t" if fmt == "tsv" else ","
    tmp = tempfile.mkdtemp()
    try:
        path = os.path.join(tmp, f"t.{fmt}")
        with open(path, "w") as f:
            f.write(sep.join(columns) + "\n")
            for r in rows:
                f.write(sep.join(r[c] for c in columns) + "\n")
        expected = ref_read_conservation(columns, rows)
        try:
            got = read_table(path)
        except EvalTableError as e:
            assert one_line(e) and path in str(e)
            assert expected == "error", (columns, rows, str(e))
            return
        assert expected != "error", (columns, rows)
        assert [tokenizer.decode(x) for x in got.ids] == [
            tokenizer.decode(tokenizer.encode(s)[0]) for s, _, _ in expected]
        assert list(got.pos_R) == [p for _, p, _ in expected]
        assert list(got.label_R) == [y for _, _, y in expected]
        one_class = len({y for _, _, y in expected}) == 1
        if one_class:  # eval.py's check before scoring
            with pytest.raises(metrics.MetricsError, match="both classes"):
                metrics.check_labels(got.label_R)
        else:
            metrics.check_labels(got.label_R)
    finally:
        shutil.rmtree(tmp)


@st.composite
def variant_rows(draw):
    seq = draw(st.text(alphabet="ACGTacgtN", min_size=1, max_size=10))
    pos = draw(st.integers(-1, 11))
    ref = draw(st.sampled_from(["A", "C", "G", "T", "N", "a", "", "AC"]))
    alt = draw(st.sampled_from(["A", "C", "G", "T", "N", "x", ""]))
    return seq, pos, ref, alt


@FUZZ
@given(st.lists(variant_rows(), min_size=1, max_size=5))
def test_variant_table_reader(rows):
    tmp = tempfile.mkdtemp()
    try:
        path = os.path.join(tmp, "v.tsv")
        with open(path, "w") as f:
            f.write("sequence\tpos\tref\talt\n")
            for seq, pos, ref, alt in rows:
                f.write(f"{seq}\t{pos}\t{ref}\t{alt}\n")
        ok = all(
            0 <= pos < len(seq) and ref.strip().upper() in ("A", "C", "G", "T")
            and alt.strip().upper() in ("A", "C", "G", "T") and seq[pos].upper() == ref.upper()
            and alt.upper() != ref.upper()
            for seq, pos, ref, alt in rows
        )
        try:
            got = read_table(path, "variant")
        except EvalTableError as e:
            assert one_line(e) and not ok, (rows, str(e))
            return
        assert ok, rows
        assert list(got.pos_R) == [p for _, p, _, _ in rows]
        assert [tokenizer.ITOS[a].upper() for a in got.alt_R] == [a.upper() for *_, a in rows]
    finally:
        shutil.rmtree(tmp)


@settings(max_examples=40, deadline=None)
@given(conservation_tables())
def test_eval_cli_hostile_tables_exit_2_one_line_no_output(table):
    """eval.py refuses a bad table (or, past it, the missing checkpoint) with exit 2 and one
    `error:` line, and writes nothing."""
    columns, rows = table
    tmp = tempfile.mkdtemp()
    try:
        path = os.path.join(tmp, "t.tsv")
        with open(path, "w") as f:
            f.write("\t".join(columns) + "\n")
            for r in rows:
                f.write("\t".join(r[c] for c in columns) + "\n")
        out = os.path.join(tmp, "eval", "results.json")
        buf = io.StringIO()
        with contextlib.redirect_stderr(buf):
            rc = eval_cli.main(["--checkpoint", os.path.join(tmp, "no_run"), "--data", path,
                                "--out", out, "--bootstrap", "0"])
        errors = buf.getvalue().strip().splitlines()
        assert rc == 2 and len(errors) == 1 and errors[0].startswith("error: "), errors
        assert not os.path.exists(os.path.join(tmp, "eval"))
        if ref_read_conservation(columns, rows) != "error":
            labels = {y for *_, y in ref_read_conservation(columns, rows)}
            expected = "both classes" if len(labels) == 1 else "not a training workdir"
            assert expected in errors[0], errors
    finally:
        shutil.rmtree(tmp)
