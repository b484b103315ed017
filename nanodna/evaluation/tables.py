"""Zero-shot evaluation tables: read, validate, tokenise.

The format is PlantCAD2's: one row per site, the site's genomic context in `sequence`.

    conservation   sequence, label [, pos]          label 1 = conserved, 0 = not
    variant        sequence, pos, ref, alt [, label]

`pos` is the 0-based index of the target base in `sequence`; without it the target is the
centre, index len//2 - 1 (255 of 512 bp, 4095 of 8192 bp), which is where PlantCAD puts it.
Rows may differ in length: the scorer groups them by length.

Every problem is reported as ONE line naming the file and the row (rows count from 0, header
excluded), because a traceback from deep inside the scorer says nothing about which of 100,000
rows was bad.

Glossary: R rows of the table, L length of one row's sequence.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from jaxtyping import Int

from nanodna import tokenizer
from nanodna.data import DataError
from nanodna.data import tables as data_tables
from nanodna.errors import UserError

TASKS = ("conservation", "variant")
BASES = tokenizer.BASES

_COLUMNS = ("sequence", "label", "pos", "ref", "alt")


class EvalTableError(UserError):
    """A table that cannot be scored; the message is one line naming the file (and row)."""


@dataclasses.dataclass(frozen=True)
class EvalTable:
    """A validated table. `ids[i]` is row i's tokenised sequence (uint8, length L_i)."""

    path: str
    task: str
    ids: list[np.ndarray]
    pos_R: Int[np.ndarray, " R"]
    ref_R: Int[np.ndarray, " R"]  # token id of the reference base (A=3 .. T=6)
    alt_R: Int[np.ndarray, " R"] | None  # variant task only
    label_R: Int[np.ndarray, " R"] | None  # 0/1; None where the table has no labels

    def __len__(self) -> int:
        return len(self.ids)


def default_pos(length: int) -> int:
    """PlantCAD's centre convention: the base just left of the middle (255 of 512)."""
    return length // 2 - 1


def read_table(
    path: str | os.PathLike, task: str = "conservation", max_rows: int | None = None
) -> EvalTable:
    """Read and validate a parquet / CSV / TSV table (optionally gzipped text) for `task`."""
    path = os.fspath(path)
    if task not in TASKS:
        raise EvalTableError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if max_rows is not None and max_rows < 1:
        raise EvalTableError(f"max_rows must be at least 1, got {max_rows}")
    columns = _read_columns(path)
    required = (
        ["sequence", "label"] if task == "conservation" else ["sequence", "pos", "ref", "alt"]
    )
    missing = [c for c in required if c not in columns]
    if missing:
        raise EvalTableError(
            f"{path}: missing column(s) {', '.join(missing)} for the {task} task "
            f"(found: {', '.join(columns) or 'none'})"
        )
    n_rows = len(columns["sequence"])
    if max_rows is not None:
        n_rows = min(n_rows, max_rows)
    if n_rows == 0:
        raise EvalTableError(f"{path}: the table has no rows")

    rows = [_parse_row(columns, i, task, f"{path}: row {i}") for i in range(n_rows)]
    ids, pos, ref, alt, label = zip(*rows)
    return EvalTable(
        path=path,
        task=task,
        ids=list(ids),
        pos_R=np.array(pos, dtype=np.int64),
        ref_R=np.array(ref, dtype=np.int64),
        alt_R=np.array(alt, dtype=np.int64) if task == "variant" else None,
        label_R=np.array(label, dtype=np.int64) if "label" in columns else None,
    )


def encode_sequence(value, where: str, error: type[UserError] = EvalTableError):
    """A table cell's `sequence` -> (text, token ids), or `error` with one line naming `where`
    (an empty cell, or a character that is neither a base nor an IUPAC code)."""
    seq = value.decode("ascii", errors="replace") if isinstance(value, bytes) else value
    if not isinstance(seq, str) or not seq:
        raise error(f"{where}: empty sequence")
    try:
        ids, _ = tokenizer.encode(seq)
    except tokenizer.IllegalCharacterError as e:
        raise error(f"{where}: illegal character {seq[e.position]!r} at offset {e.position} "
                    "of the sequence") from None
    return seq, ids


def _parse_row(columns: dict[str, list], i: int, task: str, where: str) -> tuple:
    """Row i -> (ids, pos, ref id, alt id or None, label or None), or a one-line error."""
    seq, ids = encode_sequence(columns["sequence"][i], where)
    pos = _parse_pos(columns["pos"][i], where) if "pos" in columns else default_pos(len(seq))
    if not 0 <= pos < len(seq):
        raise EvalTableError(f"{where}: pos {pos} is outside the sequence (length {len(seq)})")
    base = seq[pos].upper()
    alt = None
    if task == "conservation":
        if base not in BASES:
            raise EvalTableError(f"{where}: target base {seq[pos]!r} at pos {pos} is not A/C/G/T")
    else:
        ref_base = _parse_base(columns["ref"][i], "ref", where)
        alt_base = _parse_base(columns["alt"][i], "alt", where)
        if ref_base != base:
            raise EvalTableError(
                f"{where}: ref {ref_base!r} does not match the sequence base {seq[pos]!r} "
                f"at pos {pos}"
            )
        if alt_base == ref_base:
            raise EvalTableError(f"{where}: alt equals ref ({ref_base!r})")
        alt = tokenizer.ACGT[BASES.index(alt_base)]
    label = _parse_label(columns["label"][i], where) if "label" in columns else None
    return ids, pos, ids[pos], alt, label


def _read_columns(path: str) -> dict[str, list]:
    """File -> {column name: list of values} for the columns a task may use (data.tables)."""
    try:
        return data_tables.read_columns(path, required=(), optional=_COLUMNS)
    except DataError as e:
        raise EvalTableError(str(e)) from None


def _parse_pos(value, where: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise EvalTableError(f"{where}: pos {value!r} is not an integer") from None
    if not number.is_integer():
        raise EvalTableError(f"{where}: pos {value!r} is not an integer")
    return int(number)


def _parse_label(value, where: str) -> int:
    text = str(value).strip().lower() if value is not None else ""
    if text in ("1", "1.0", "true"):
        return 1
    if text in ("0", "0.0", "false"):
        return 0
    raise EvalTableError(f"{where}: label {value!r} is not 0 or 1")


def _parse_base(value, column: str, where: str) -> str:
    text = str(value).strip().upper() if value is not None else ""
    if len(text) != 1 or text not in BASES:
        raise EvalTableError(f"{where}: {column} {value!r} is not one of A/C/G/T")
    return text
