"""Streaming FASTA reader: plain or gzipped, many records, memory independent of genome size.

Genomes are large (a plant chromosome is 10-300 Mbp), so the reader never holds a record
whole: it decompresses in chunks with zlib, cuts each chunk at header lines, and turns the
sequence between them into token ids and lowercase flags with two `bytes.translate` calls
that also drop the newlines. Everything per base runs in C; Python touches only chunks.

A record's name is the first word of its header line (`>NC_003070.9 Arabidopsis ...` gives
`NC_003070.9`). Whitespace inside sequence lines is ignored; any other byte that is not a
base or an IUPAC code is an error that names the file, the record and the line. Line ends may
be LF, CRLF or old Mac CR, even mixed: each of them ends a line (so line numbers count them).
Every error names the file and, where the fault has one, the line.

Glossary: L length of one sequence piece.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np
from jaxtyping import Bool, UInt8

from nanodna import tokenizer
from nanodna.data import DataError

READ_BYTES = 1 << 20  # file bytes per read (1 MiB: fast, and keeps memory small)
MAX_CHUNK = 8 << 20  # most decompressed bytes handed out at once
_WHITESPACE = b" \t\r\n"
_GZIP_MAGIC = b"\x1f\x8b"


def _byte_tables() -> tuple[bytes, bytes]:
    """The tokenizer's byte -> id and byte -> is-lowercase maps as `bytes.translate` tables.

    translate runs at memory speed, several times faster than NumPy fancy indexing, and is
    derived from the tokenizer itself so the two can never disagree. Illegal bytes map to 255.
    """
    ids, lower = bytearray(256), bytearray(256)
    for b in range(256):
        try:
            i, r = tokenizer.encode_bytes(bytes([b]))
            ids[b], lower[b] = int(i[0]), int(r[0])
        except tokenizer.IllegalCharacterError:
            ids[b] = 255
    return bytes(ids), bytes(lower)


_ID_TABLE, _LOWER_TABLE = _byte_tables()
_ILLEGAL = b"\xff"


class Piece(NamedTuple):
    """A run of one record's sequence, in file order.

    Each record starts with an empty piece that stands for its header line (so an empty
    record is still seen), followed by its sequence in one or more non-empty pieces.
    """

    record: int  # index of the record in the file, from 0
    name: str  # first word of the header
    ids_L: UInt8[np.ndarray, " L"]
    repeat_L: Bool[np.ndarray, " L"]  # lowercase (soft-masked) bases
    line: int = 0  # 1-based line of the record's header (header pieces; 0 = unknown)


def read_chunks(path: str, progress: Callable[[int], None] | None = None) -> Iterator[bytes]:
    """Decompressed content of a plain or gzip file (detected by its magic bytes), in chunks.

    Handles multi-member gzip (bgzip) files. `progress(n)` is called with the number of file
    bytes consumed after each read, for a progress bar over compressed input.
    """
    with open(path, "rb") as f:
        data = f.read(max(READ_BYTES, len(_GZIP_MAGIC)))
        gzipped = data.startswith(_GZIP_MAGIC)
        inflater = zlib.decompressobj(wbits=31)  # 31: expect a gzip header
        if progress:
            progress(len(data))
        while data:
            if not gzipped:
                yield data
            else:
                try:
                    # Bounded output: a highly compressible file must not blow up memory.
                    out = inflater.decompress(data, MAX_CHUNK)
                except zlib.error as e:
                    raise DataError(f"{path}: corrupt gzip data ({e})") from None
                if out:
                    yield out
                if inflater.unconsumed_tail:
                    data = inflater.unconsumed_tail
                    continue
                # A finished member followed by more bytes is the next member (bgzip, cat a b).
                if inflater.eof and inflater.unused_data.strip(b"\0"):
                    data = inflater.unused_data
                    inflater = zlib.decompressobj(wbits=31)
                    continue
            data = f.read(READ_BYTES)
            if progress:
                progress(len(data))
        if gzipped and not inflater.eof:
            raise DataError(f"{path}: truncated gzip file (the data ends mid-stream)")


def read_fasta(path: str, progress: Callable[[int], None] | None = None) -> Iterator[Piece]:
    """Yield the sequence of every record of a FASTA file as encoded pieces.

    Raises DataError for an empty file, sequence before the first header, a header without a
    name, illegal characters, and truncated or corrupt gzip data.
    """
    record, name = -1, ""
    line = 1  # 1-based line number at the start of `block`
    at_line_start = True  # does `block` start at the beginning of a line?
    pending = b""  # an incomplete header line carried over to the next chunk
    seen_anything = False

    def emit(segment: bytes, first_line: int) -> Piece:
        # One C pass each drops the whitespace and maps bytes to ids / lowercase flags.
        ids = segment.translate(_ID_TABLE, _WHITESPACE)
        bad = ids.find(_ILLEGAL)
        if bad >= 0:
            char = chr(segment.translate(None, _WHITESPACE)[bad])
            bad_line = _line_of_offset(segment, bad, first_line)
            raise DataError(f"{path}: record {name!r}, line {bad_line}: illegal character {char!r}")
        repeat = segment.translate(_LOWER_TABLE, _WHITESPACE)
        return Piece(record, name, np.frombuffer(ids, np.uint8), np.frombuffer(repeat, bool))

    chunks = _unix_line_ends(read_chunks(path, progress))
    # the lambda reads `line` when a gzip error surfaces: the line the parser had reached
    for chunk in _with_end_marker(chunks, lambda: line, path):  # noqa: B023
        at_eof = chunk is None
        block = pending + (chunk or b"")
        pending = b""
        pos = 0
        while pos < len(block):
            if at_line_start and block[pos : pos + 1] == b">":
                eol = block.find(b"\n", pos)
                if eol < 0 and not at_eof:  # header continues in the next chunk
                    pending = block[pos:]
                    break
                eol = len(block) if eol < 0 else eol
                words = block[pos + 1 : eol].split()
                if not words:
                    raise DataError(f"{path}: line {line}: header '>' without a record name")
                record, name = record + 1, words[0].decode("ascii", errors="replace")
                seen_anything = True
                yield Piece(record, name, np.zeros(0, np.uint8), np.zeros(0, bool), line)
                line, pos, at_line_start = line + 1, eol + 1, True
                continue
            # Sequence runs up to the next header line (or the end of the block).
            nxt = block.find(b"\n>", pos)
            end = len(block) if nxt < 0 else nxt + 1
            segment = block[pos:end]
            if record < 0:
                if segment.strip():
                    bad_line = line + _leading_blank_lines(segment)
                    raise DataError(
                        f"{path}: line {bad_line}: sequence before the first '>' header "
                        "(not a FASTA file?)"
                    )
            else:
                piece = emit(segment, line)
                if len(piece.ids_L):
                    yield piece
            line += segment.count(b"\n")
            pos, at_line_start = end, segment.endswith(b"\n")
    if not seen_anything:
        raise DataError(f"{path}: empty file (no FASTA records)")


def _with_end_marker(
    chunks: Iterator[bytes], line: Callable[[], int], path: str
) -> Iterator[bytes | None]:
    """The chunks, then None: the parser needs one last call to finish a trailing header.
    A gzip error on the way is reported with the line the parser had reached."""
    try:
        yield from chunks
    except DataError as e:
        raise DataError(f"{e}, after line {line()}") from None
    yield None


def _unix_line_ends(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The chunks with CRLF and lone CR (old Mac) line ends turned into LF.

    A CR at the end of a chunk is held back until the next chunk shows whether an LF follows,
    so a CRLF cut by a chunk boundary is still one line end."""
    held = b""
    for chunk in chunks:
        chunk = held + chunk
        held = b""
        if chunk.endswith(b"\r"):
            chunk, held = chunk[:-1], b"\r"
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if chunk:
            yield chunk
    if held:
        yield b"\n"


def _leading_blank_lines(segment: bytes) -> int:
    n = 0
    for text in segment.split(b"\n"):
        if text.strip():
            return n
        n += 1
    return n


def _line_of_offset(segment: bytes, offset: int, first_line: int) -> int:
    """Line number of the `offset`-th non-whitespace byte of `segment` (error path only)."""
    for k, text in enumerate(segment.split(b"\n")):
        n = len(text.translate(None, _WHITESPACE))
        if offset < n:
            return first_line + k
        offset -= n
    return first_line + segment.count(b"\n")


def assembly_name_from_path(path: str) -> str:
    """File stem without .gz and a FASTA extension: `TAIR10.fa.gz` -> `TAIR10`."""
    name = os.path.basename(path)
    for ext in (".gz", ".bgz"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    for ext in (".fa", ".fasta", ".fna", ".fas"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    return name
