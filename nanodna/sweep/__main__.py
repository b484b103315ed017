"""python -m nanodna.sweep --config configs/sweeps/NAME.py --out DIR   (train, score, plot)
python -m nanodna.sweep plot DIR                                      (plots and results.json)"""

from __future__ import annotations

import argparse
import sys

from nanodna.errors import UserError, fail
from nanodna.sweep.config import load_sweep, substitute
from nanodna.sweep.driver import run_sweep
from nanodna.sweep.plot import make_plots


def _report(results: dict, out: str) -> None:
    print(f"target AUC {results['target_auc']:.4f} ({results['target_rule']})")
    for arch, p in results["parity"].items():
        print(f"parity {arch}: {p['statement']}")
    print(f"wrote {out}/results.json, auc_vs_flops.png, loss_vs_auc.png, hot_cold.png")


def main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["plot"]:
            p = argparse.ArgumentParser(prog="python -m nanodna.sweep plot")
            p.add_argument("out", help="a sweep's output folder (holds results.tsv)")
            args = p.parse_args(argv[1:])
            _report(make_plots(args.out), args.out)
            return 0
        p = argparse.ArgumentParser(prog="python -m nanodna.sweep", description=__doc__)
        p.add_argument("--config", required=True, help="configs/sweeps/*.py defining get_sweep()")
        p.add_argument("--out", required=True, help="output folder (reuse it to resume)")
        p.add_argument("--no-plot", action="store_true", help="train and score only")
        args = p.parse_args(argv)
        sweep = substitute(load_sweep(args.config), args.out)
        run_sweep(sweep, args.out)
        if not args.no_plot:
            _report(make_plots(args.out), args.out)
        return 0
    except UserError as e:
        return fail(e)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
