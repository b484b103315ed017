"""Zero-shot evaluation of a checkpoint on a conservation (or variant) table.

    python eval.py --checkpoint runs/demo --data data/sim_demo/eval/conservation.tsv \
        --out runs/demo/eval/results.json

--checkpoint is a training workdir (its latest checkpoint) or one step's folder. Writes
results.json (ROC AUC, AUPRC with bootstrap 95% intervals, n, step, arch, speed, strand mode),
scores.tsv and roc.png / hist.png beside it. The logic lives in nanodna.evaluation; this file
only parses the command line. A bad table or checkpoint path (any nanodna.errors.UserError)
ends with one `error: ...` line on stderr and exit code 2. With --vcf and --fasta instead of
--data it scores a VCF's SNVs against the genome (nanodna.vep) and writes per-allele scores to
--out.
"""
# ruff: noqa: E402 - the huge-page restart (nanodna.hugepages) must run before jax is imported

import argparse
import logging
import sys

from nanodna.hugepages import restart_with_huge_pages

if __name__ == "__main__":  # before jax loads: glibc reads its tunables only at process start
    restart_with_huge_pages()

from nanodna import vep
from nanodna.errors import UserError, fail
from nanodna.evaluation import metrics, report, tables


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--checkpoint", required=True, help="training workdir (latest step) or one step's folder"
    )
    p.add_argument("--data", help="eval table: .parquet, .csv or .tsv (optionally .gz)")
    vep.add_arguments(p)  # --vcf / --fasta: score a VCF's SNVs instead (nanodna.vep)
    p.add_argument("--task", choices=("conservation", "variant"), default="conservation")
    p.add_argument(
        "--out", default="results.json", help="results JSON; scores.tsv and roc.png go beside it"
    )
    p.add_argument("--batch-size", type=int, default=None,
                   help="windows per forward pass (default: 8 on CPU, 64 on GPU/TPU; "
                        "64 with --inference-path old)")
    p.add_argument("--inference-path", choices=("fast", "old"), default="fast",
                   help="old: the pre-issue-10 scoring path, for comparisons (same scores)")
    p.add_argument("--matmul-dtype", choices=("float32", "bfloat16"), default=None,
                   help="the projections' matmul input dtype (default: the checkpoint's); "
                        "bfloat16 keeps float32 accumulation and ran PlantCAD l20 scoring "
                        "~1.5x faster on a CPU with AMX; scores move by bfloat16 rounding")
    p.add_argument("--max-rows", type=int, default=None, help="score only the first N rows")
    p.add_argument(
        "--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CIs (0: none)"
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    args = p.parse_args(argv)

    if args.batch_size is not None and args.batch_size < 1:
        p.error("--batch-size must be >= 1")
    if args.bootstrap < 0:
        p.error("--bootstrap must be >= 0")
    if args.vcf or args.fasta:  # VCF + FASTA: per-allele scores, no metrics (nanodna.vep)
        if not (args.vcf and args.fasta) or args.data:
            p.error("give --data, or --vcf with --fasta")
        args.out = "scores.tsv" if args.out == p.get_default("out") else args.out
        return vep.run_cli(args)
    if not args.data:
        p.error("--data (or --vcf with --fasta) is required")
    # Orbax logs its read-only restore settings as warnings through absl: not news to a user.
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        table = tables.read_table(args.data, args.task, args.max_rows)  # before the model loads
        if table.label_R is not None:  # one label class has no AUC: say so before any work
            metrics.check_labels(table.label_R)
        results = report.evaluate_checkpoint(
            args.checkpoint, table, args.out, args.batch_size, args.bootstrap, args.seed,
            inference_path=args.inference_path, matmul_dtype=args.matmul_dtype,
        )
    except UserError as e:
        return fail(e)
    print(report.summary_line(results))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
