"""Command line for genome data: `python -m nanodna.data {prepare,simulate,stats} ...`.

    python -m nanodna.data prepare --fasta genomes/*.fa.gz --out data/store
    python -m nanodna.data prepare --table windows.parquet --out data/store
    python -m nanodna.data simulate --out data/sim        (nanodna.sim; same as python -m nanodna.sim)
    python -m nanodna.data stats data/store

Bad input or arguments print one line `error: ...` on stderr and exit with status 2
(nanodna.errors.fail). As a command line this module may import the simulator above it.
"""

from __future__ import annotations

import argparse
import sys
import time

from nanodna.data import DataError, prepare
from nanodna.data.genome import GenomeStore
from nanodna.errors import UserError, fail
from nanodna.sim import simulate
from nanodna.sim.simulate import ArgumentParser


def _prepare(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    if args.fasta:
        records = prepare.prepare_fasta(
            args.fasta,
            args.out,
            assembly=args.assembly,
            per_record=args.assembly_per_record,
            force=args.force,
            progress=not args.quiet,
        )
    else:
        if args.assembly or args.assembly_per_record:
            raise DataError("--assembly/--assembly-per-record apply to --fasta only")
        records = prepare.prepare_tables(
            args.table, args.out, force=args.force, progress=not args.quiet
        )
    seconds = time.perf_counter() - t0
    bp = sum(r["length"] for r in records)
    n_chrom = sum(len(r["chromosomes"]) for r in records)
    print(
        f"wrote {args.out}: {len(records)} assemblies, {n_chrom} records, {bp / 1e6:.2f} Mbp "
        f"in {seconds:.1f} s ({bp / 1e6 / max(seconds, 1e-9):.1f} Mbp/s)",
        file=sys.stderr,
    )


def _stats(args: argparse.Namespace) -> None:
    try:
        store = GenomeStore(args.store)
    except (FileNotFoundError, ValueError) as e:
        raise DataError(str(e)) from None
    rows = [("assembly", "chromosome", "length", "N %", "repeat %")]
    for a in store.manifest["assemblies"]:
        if not args.summary:
            for c in a["chromosomes"]:
                rows.append(_row(a["name"], c["name"], c))
        rows.append(_row(a["name"], f"(all {len(a['chromosomes'])})", a))
    total = sum(store.lengths.values())
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:  # names left-aligned, numbers right-aligned
        cells = [v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))]
        print("  ".join(cells))
    print(f"total: {len(store.assemblies)} assemblies, {total:,} bp")


def _row(assembly: str, name: str, entry: dict) -> tuple[str, ...]:
    return (
        assembly,
        name,
        f"{entry['length']:,}",
        f"{100 * entry['n_frac']:.2f}",
        f"{100 * entry['repeat_frac']:.2f}",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m nanodna.data",
        description="Prepare, simulate and inspect genome stores for nanodna.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "prepare",
        help="FASTA files or PlantCAD window tables -> genome store",
        description="Build a genome store (memory-mapped tokens + manifest) from FASTA files "
        "(plain or gzipped; one assembly per file by default) or from PlantCAD window tables "
        "(columns assembly, chrom, start, end, strand, seq; parquet, CSV or TSV). "
        "The output appears only if everything succeeds.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--fasta", nargs="+", metavar="FILE", help="FASTA files (.fa/.fasta/.fna, optionally .gz)"
    )
    src.add_argument(
        "--table", nargs="+", metavar="FILE", help="window tables (.parquet, .csv, .tsv)"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output store folder (new)")
    p.add_argument("--assembly", metavar="NAME", help="put all FASTA files into one assembly NAME")
    p.add_argument(
        "--assembly-per-record", action="store_true", help="make each FASTA record an assembly"
    )
    p.add_argument("--force", action="store_true", help="replace DIR if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_prepare)

    s = sub.add_parser("stats", help="print a store's manifest as a table")
    s.add_argument("store", metavar="DIR", help="genome store folder")
    s.add_argument("--summary", action="store_true", help="one line per assembly only")
    s.set_defaults(run=_stats)

    # `simulate` parses its own arguments (nanodna.sim.simulate.main); listed here for --help.
    sub.add_parser(
        "simulate", help="write the simulated genome set (see: simulate --help)", add_help=False
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv and argv[0] == "simulate":
            return simulate.main(argv[1:])
        args = build_parser().parse_args(argv)
        args.run(args)
    except UserError as e:
        return fail(e)
    except OSError as e:  # an output folder that cannot be made, a full disk: the user's to fix
        return fail(f"{e.filename or ''}: {e.strerror or e}".lstrip(": "))
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
