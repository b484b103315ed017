"""Build a genome store (see genome.py) from FASTA files or PlantCAD window tables.

FASTA: one assembly per file (named after the file stem), or all files into one named
assembly (`assembly=`), or one assembly per record (`per_record=True`). Each record becomes a
chromosome.

Tables (PlantCAD's format: assembly, chrom, start, end, strand, seq): each row is one window
and becomes its own record named `chrom:start-end` in its assembly. Rows on the '-' strand are
reverse-complemented back to '+' before storing, so the store always holds forward sequence
(strand augmentation belongs to the data stream). Overlapping windows are stored as they
come, not merged; this keeps the format trivial at the price of one manifest entry per window.

The store is built in a hidden temp folder next to the output and renamed into place only
when everything succeeded: bad input never leaves a partial store behind. Tokens stream
straight to disk, so memory stays flat whatever the genome size.
"""

from __future__ import annotations

import io
import os
import re
import sys
from collections.abc import Callable, Sequence

import numpy as np
from jaxtyping import Bool, Int64, UInt8
from tqdm import tqdm

from nanodna import atomic, tokenizer
from nanodna.data import DataError, genome
from nanodna.data.fasta import assembly_name_from_path, read_fasta
from nanodna.data.tables import read_table_batches

TABLE_COLUMNS = ("assembly", "chrom", "start", "end", "strand", "seq")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


def safe_name(name: str) -> str:
    """An assembly name usable as a file name: anything but [A-Za-z0-9._+-] becomes '_'."""
    safe = _UNSAFE.sub("_", name).lstrip(".")
    return safe or "_"


class _NpyAppender:
    """A 1-D uint8 .npy file that grows by appending; the header is fixed up on close.

    numpy pads .npy headers so that the shape can grow in place, so writing the header for
    length 0 first and rewriting it at the end costs no copy of the data.
    """

    def __init__(self, path: str):
        self.path, self.length = path, 0
        self.file = open(path, "wb")
        self.header_size = self._write_header(0)

    def _write_header(self, length: int) -> int:
        buf = io.BytesIO()
        header = {"descr": "|u1", "fortran_order": False, "shape": (length,)}
        np.lib.format.write_array_header_1_0(buf, header)
        self.file.write(buf.getvalue())
        return len(buf.getvalue())

    def append(self, data: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(data, dtype=np.uint8).data)
        self.length += len(data)

    def close(self) -> None:
        self.file.seek(0)
        if self._write_header(self.length) != self.header_size:  # cannot happen with numpy>=1.24
            raise RuntimeError(f"{self.path}: .npy header size changed")
        self.file.close()


class AssemblyWriter:
    """Streams one assembly's chromosomes into `<name>.tokens.npy` and `<name>.repeat.npy`.

    FASTA records arrive piece by piece (start_chromosome, append..., finish_chromosome);
    table windows arrive many at once (add_records).
    """

    def __init__(self, store_dir: str, name: str):
        self.name = name
        self.tokens = _NpyAppender(os.path.join(store_dir, f"{name}.tokens.npy"))
        self.repeat = _NpyAppender(os.path.join(store_dir, f"{name}.repeat.npy"))
        self.bits_tail = np.zeros(0, bool)  # repeat flags not yet packed into a whole byte
        self.chromosomes: list[dict] = []
        self.names: set[str] = set()
        self.current: dict | None = None  # the FASTA record being written

    def _write(self, ids_L: UInt8[np.ndarray, " L"], repeat_L: Bool[np.ndarray, " L"]) -> None:
        self.tokens.append(ids_L)
        bits = np.concatenate([self.bits_tail, repeat_L])
        whole = len(bits) // 8 * 8
        self.repeat.append(np.packbits(bits[:whole]))
        self.bits_tail = bits[whole:]

    def _add_entry(self, where: str, name: str, offset: int, length: int, n: int, r: int):
        """Check a finished record and list it in the manifest."""
        if name in self.names:
            raise DataError(f"{where}: duplicate record name {name!r} in assembly {self.name!r}")
        if length == 0:
            raise DataError(f"{where}: record {name!r} has no sequence")
        if n == length:
            raise DataError(f"{where}: record {name!r} is all N (no A/C/G/T)")
        self.names.add(name)
        self.chromosomes.append(
            {
                "name": name,
                "offset": offset,
                "length": length,
                "n_frac": n / length,
                "repeat_frac": r / length,
            }
        )

    def start_chromosome(self, name: str, where: str) -> None:
        self.finish_chromosome()
        if name in self.names:  # checked here too, to fail before reading the whole record
            raise DataError(f"{where}: duplicate record name {name!r} in assembly {self.name!r}")
        self.current = {"name": name, "offset": self.tokens.length, "where": where, "n": 0, "r": 0}

    def append(self, ids_L: UInt8[np.ndarray, " L"], repeat_L: Bool[np.ndarray, " L"]) -> None:
        self.current["n"] += int(np.count_nonzero(ids_L == tokenizer.UNK))
        self.current["r"] += int(np.count_nonzero(repeat_L))
        self._write(ids_L, repeat_L)

    def finish_chromosome(self) -> None:
        c, self.current = self.current, None
        if c is not None:
            length = self.tokens.length - c["offset"]
            self._add_entry(c["where"], c["name"], c["offset"], length, c["n"], c["r"])

    def add_records(
        self,
        names: list[str],
        lengths: Int64[np.ndarray, " R"],
        ids_L: UInt8[np.ndarray, " L"],
        repeat_L: Bool[np.ndarray, " L"],
        where: Callable[[int], str],
    ) -> None:
        """Append R whole records laid end to end in ids_L / repeat_L; where(i) names record i."""
        empty = np.flatnonzero(lengths == 0)
        if len(empty):  # checked first: reduceat below needs every record non-empty
            raise DataError(f"{where(int(empty[0]))}: empty or missing seq")
        firsts = np.cumsum(lengths) - lengths
        n_counts = np.add.reduceat(ids_L == tokenizer.UNK, firsts, dtype=np.int64)
        r_counts = np.add.reduceat(repeat_L, firsts, dtype=np.int64)
        base = self.tokens.length
        for i, name in enumerate(names):
            offset, length = base + int(firsts[i]), int(lengths[i])
            self._add_entry(where(i), name, offset, length, int(n_counts[i]), int(r_counts[i]))
        self._write(ids_L, repeat_L)

    def close(self) -> dict:
        """Finish the files and return the assembly's manifest entry."""
        self.finish_chromosome()
        self.repeat.append(np.packbits(self.bits_tail))  # zero-padded last byte
        self.tokens.close()
        self.repeat.close()
        return genome.assembly_record(self.name, self.chromosomes)


def _staging_dir(out_dir: str, force: bool):
    """The store's temp folder (nanodna.atomic.staging_dir); DataError if it exists unforced."""
    if os.path.exists(out_dir) and not force:
        raise DataError(f"{os.path.abspath(out_dir)}: already exists (pass --force to replace it)")
    return atomic.staging_dir(out_dir, replace=force)


def _progress_bar(total: int, desc: str, show: bool) -> tqdm:
    return tqdm(
        total=total, desc=desc, unit="B", unit_scale=True, file=sys.stderr, disable=not show
    )


def prepare_fasta(
    paths: Sequence[str],
    out_dir: str,
    *,
    assembly: str | None = None,
    per_record: bool = False,
    force: bool = False,
    progress: bool = True,
) -> list[dict]:
    """FASTA files -> genome store at `out_dir`. Returns the manifest's assembly entries.

    assembly: put every file into this one assembly (e.g. one FASTA file per chromosome).
    per_record: make every record its own assembly, named after the record.
    """
    if not paths:
        raise DataError("no FASTA files given")
    if assembly is not None and per_record:
        raise DataError("--assembly and --assembly-per-record exclude each other")
    for p in paths:
        if not os.path.isfile(p):
            raise DataError(f"{p}: no such file")
    if assembly is None and not per_record:
        names = [safe_name(assembly_name_from_path(p)) for p in paths]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise DataError(f"duplicate assembly name {dupes[0]!r} from several files (rename one)")

    records: list[dict] = []
    total = sum(os.path.getsize(p) for p in paths)
    with _staging_dir(out_dir, force) as tmp, _progress_bar(total, "prepare", progress) as bar:
        writers: dict[str, AssemblyWriter] = {}
        for path in paths:
            if per_record:
                writer = None
            else:
                name = safe_name(assembly or assembly_name_from_path(path))
                if name not in writers:
                    writers[name] = AssemblyWriter(tmp, name)
                writer = writers[name]
            for piece in read_fasta(path, progress=bar.update):
                if len(piece.ids_L) == 0:  # a header: a new record starts
                    if per_record:
                        if writer is not None:
                            records.append(writer.close())
                        name = safe_name(piece.name)
                        if name in writers:
                            raise DataError(
                                f"{path}: line {piece.line}: duplicate assembly name {name!r}"
                            )
                        writer = writers[name] = AssemblyWriter(tmp, name)
                    # Errors about the record (empty, all N, duplicate) name its header line.
                    writer.start_chromosome(piece.name, f"{path}: line {piece.line}")
                else:
                    writer.append(piece.ids_L, piece.repeat_L)
            if per_record:
                records.append(writer.close())
            else:
                writer.finish_chromosome()  # check the file's last record now, naming its file
        if not per_record:
            records = [w.close() for w in writers.values()]
        genome.write_manifest(tmp, records)
    return records


def prepare_tables(
    paths: Sequence[str], out_dir: str, *, force: bool = False, progress: bool = True
) -> list[dict]:
    """PlantCAD window tables -> genome store at `out_dir` (see the module docstring)."""
    if not paths:
        raise DataError("no table files given")
    with _staging_dir(out_dir, force) as tmp, tqdm(
        desc="prepare", unit=" rows", file=sys.stderr, disable=not progress
    ) as bar:
        writers: dict[str, AssemblyWriter] = {}
        for path in paths:
            first_row = 1
            for batch in read_table_batches(path, TABLE_COLUMNS, batch_rows=8192):
                where = lambda i, r=first_row: f"{path}: row {r + i}"  # noqa: E731
                _add_table_batch(tmp, writers, batch, where)
                first_row += len(batch["seq"])
                bar.update(len(batch["seq"]))
        records = [w.close() for w in writers.values()]
        genome.write_manifest(tmp, records)
    return records


def _add_table_batch(
    store_dir: str,
    writers: dict[str, AssemblyWriter],
    batch: dict[str, list],
    where: Callable[[int], str],
) -> None:
    """Encode a batch of window rows in one go and hand each assembly its rows."""
    seqs = [s if isinstance(s, str) else "" for s in batch["seq"]]
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    firsts = np.cumsum(lengths) - lengths
    # Non-ASCII characters become '?' (one byte each), so offsets stay aligned with rows.
    try:
        ids_L, repeat_L = tokenizer.encode_bytes("".join(seqs).encode("ascii", errors="replace"))
    except tokenizer.IllegalCharacterError as e:
        i = int(np.searchsorted(firsts, e.position, side="right")) - 1
        offset = e.position - int(firsts[i])
        raise DataError(f"{where(i)}: illegal character {e.char!r} at offset {offset}") from None
    for i, strand in enumerate(batch["strand"]):
        if strand == "-":  # back to the forward strand
            row = slice(firsts[i], firsts[i] + lengths[i])
            ids_L[row] = tokenizer.reverse_complement(ids_L[row])
            repeat_L[row] = repeat_L[row][::-1]
        elif strand != "+":
            raise DataError(f"{where(i)}: strand must be '+' or '-', got {strand!r}")
    names = [
        f"{chrom}:{_int(where(i), start)}-{_int(where(i), end)}"
        for i, (chrom, start, end) in enumerate(zip(batch["chrom"], batch["start"], batch["end"]))
    ]
    assemblies = [safe_name(str(a)) for a in batch["assembly"]]
    for name in dict.fromkeys(assemblies):  # in order of first appearance
        if name not in writers:
            writers[name] = AssemblyWriter(store_dir, name)
        rows = np.array([a == name for a in assemblies])
        bases = np.repeat(rows, lengths)
        writers[name].add_records(
            [n for n, keep in zip(names, rows) if keep],
            lengths[rows],
            ids_L[bases],
            repeat_L[bases],
            lambda i, rows_i=np.flatnonzero(rows): where(int(rows_i[i])),
        )


def _int(where: str, value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: start/end {value!r} is not an integer") from None
