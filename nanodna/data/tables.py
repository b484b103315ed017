"""The one home for tabular files: parquet, CSV, TSV (text optionally .gz/.bz2/.zst/.lz4).

PlantCAD ships its training windows as tables (assembly, chrom, start, end, strand, seq) and
evaluation sets as (sequence, label, ...) tables. Training tables can be far larger than
memory, so `read_table_batches` yields rows in batches of columns; `read_columns` reads a whole
(evaluation-sized) table. Text columns are read as strings, never type-guessed: a chromosome
called "01" must not turn into the integer 1; parquet values come as stored. `write_tsv`
writes a TSV atomically (the simulator's tables).

Every problem is a one-line DataError naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from nanodna import atomic
from nanodna.data import DataError

BATCH_ROWS = 65536
COMPRESSED_EXT = (".gz", ".bz2", ".zst", ".lz4")  # text tables only; pyarrow detects the codec


def table_format(path: str) -> str:
    """'parquet', 'csv' or 'tsv', from the file name (a compression suffix is allowed for text)."""
    name = path
    for ext in COMPRESSED_EXT:
        name = name.removesuffix(ext)
    ext = os.path.splitext(name)[1].lower()
    if ext in (".parquet", ".pq"):
        return "parquet"
    if ext == ".csv":
        return "csv"
    if ext in (".tsv", ".tab", ".txt"):
        return "tsv"
    raise DataError(f"{path}: unknown table format {ext!r} (use .parquet, .csv or .tsv)")


def read_columns(
    path: str, required: Sequence[str], optional: Sequence[str] = ()
) -> dict[str, list]:
    """The whole table as {column: list of values}: every `required` column and those of
    `optional` that the file has. Text tables give strings, parquet the stored values.

    Raises DataError (one line) for a missing file, an unreadable table, missing required
    columns (named) or a table without rows.
    """
    out: dict[str, list] = {}
    for batch in read_table_batches(path, required, optional=optional):
        for c, values in batch.items():
            out.setdefault(c, []).extend(values)
    return out


def read_table_batches(
    path: str,
    columns: Sequence[str],
    batch_rows: int = BATCH_ROWS,
    *,
    optional: Sequence[str] = (),
) -> Iterator[dict[str, list]]:
    """Yield {column: list of values} for `columns` (and those of `optional` the file has),
    `batch_rows` rows at a time.

    Raises DataError (one line) for a missing file, an unreadable table, missing columns or a
    table without rows.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    fmt = table_format(path)
    try:
        if fmt == "parquet":
            pf = pq.ParquetFile(path)
            have = pf.schema_arrow.names
            _check_columns(path, columns, have)
            columns = [*columns, *(c for c in optional if c in have and c not in columns)]
            batches = pf.iter_batches(batch_size=batch_rows, columns=list(columns))
        else:
            header = _text_header(path, "," if fmt == "csv" else "\t")
            _check_columns(path, columns, header)
            columns = [*columns, *(c for c in optional if c in header and c not in columns)]
            batches = pa_csv.open_csv(
                path,
                read_options=pa_csv.ReadOptions(block_size=16 << 20),
                parse_options=pa_csv.ParseOptions(delimiter="," if fmt == "csv" else "\t"),
                convert_options=pa_csv.ConvertOptions(
                    include_columns=list(columns),
                    column_types={c: pa.string() for c in header},
                ),
            )
        n_rows = 0
        for batch in batches:
            if batch.num_rows == 0:
                continue
            n_rows += batch.num_rows
            yield {c: batch.column(c).to_pylist() for c in columns}
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: cannot read table ({fmt}: {first_line})") from None
    if n_rows == 0:
        raise DataError(f"{path}: empty table (no rows)")


def _text_header(path: str, delimiter: str) -> list[str]:
    """Column names from the first line of a (possibly compressed) CSV/TSV file."""
    try:
        with pa.input_stream(path, compression="detect") as f:
            head = b""
            while b"\n" not in head and (chunk := f.read(1 << 16)):
                head += chunk
        first = head.split(b"\n", 1)[0].decode("utf-8")
    except (pa.ArrowInvalid, OSError, EOFError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read table ({e})") from None
    if not first.strip():
        raise DataError(f"{path}: empty file")
    return [c.strip() for c in first.rstrip("\r\n").split(delimiter)]


def _check_columns(path: str, wanted: Sequence[str], have: Sequence[str]) -> None:
    missing = [c for c in wanted if c not in have]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(have)})"
        )


def write_tsv(path: str, columns: Mapping[str, Sequence]) -> None:
    """Write {column: values} as a TSV with a header line, atomically (values via str()).

    Raises DataError if the columns differ in length or a value holds a tab or newline.
    """
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise DataError(f"{path}: columns differ in length ({sorted(lengths)})")
    lines = ["\t".join(columns)]
    for row in zip(*columns.values()):
        cells = [str(v) for v in row]
        if any("\t" in c or "\n" in c for c in cells):
            raise DataError(f"{path}: a value holds a tab or newline: {cells!r}")
        lines.append("\t".join(cells))
    atomic.write_text(path, "\n".join(lines) + "\n")
