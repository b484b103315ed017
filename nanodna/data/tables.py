"""Read tabular files (parquet, CSV, TSV; optionally gzipped text) in batches of rows.

PlantCAD ships its training windows as tables (assembly, chrom, start, end, strand, seq) and
evaluation sets as (sequence, label, ...) tables. Both can be far larger than memory, so rows
come in batches of columns. Text columns are read as strings, never type-guessed: a
chromosome called "01" must not turn into the integer 1.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from nanodna.data import DataError

BATCH_ROWS = 65536


def table_format(path: str) -> str:
    """'parquet', 'csv' or 'tsv', from the file name (a trailing .gz is allowed for text)."""
    name = path[:-3] if path.endswith(".gz") else path
    ext = os.path.splitext(name)[1].lower()
    if ext in (".parquet", ".pq"):
        return "parquet"
    if ext == ".csv":
        return "csv"
    if ext in (".tsv", ".tab", ".txt"):
        return "tsv"
    raise DataError(f"{path}: unknown table format {ext!r} (use .parquet, .csv or .tsv)")


def read_table_batches(
    path: str, columns: Sequence[str], batch_rows: int = BATCH_ROWS
) -> Iterator[dict[str, list]]:
    """Yield {column: list of values} for the given columns, `batch_rows` rows at a time.

    Raises DataError (one line) for a missing file, an unreadable table, missing columns or a
    table without rows.
    """
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    fmt = table_format(path)
    try:
        if fmt == "parquet":
            pf = pq.ParquetFile(path)
            _check_columns(path, columns, pf.schema_arrow.names)
            batches = pf.iter_batches(batch_size=batch_rows, columns=list(columns))
        else:
            header = _text_header(path, "," if fmt == "csv" else "\t")
            _check_columns(path, columns, header)
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
        raise DataError(f"{path}: unreadable {fmt} table ({first_line})") from None
    if n_rows == 0:
        raise DataError(f"{path}: empty table (no rows)")


def _text_header(path: str, delimiter: str) -> list[str]:
    """Column names from the first line of a (possibly gzipped) CSV/TSV file."""
    import gzip

    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", newline="") as f:
            first = f.readline()
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable table ({e})") from None
    if not first.strip():
        raise DataError(f"{path}: empty file")
    return [c.strip() for c in first.rstrip("\r\n").split(delimiter)]


def _check_columns(path: str, wanted: Sequence[str], have: Sequence[str]) -> None:
    missing = [c for c in wanted if c not in have]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(have)})"
        )
