"""Train a model from a config file.

    python train.py --config configs/demo.py [--workdir DIR] [key=value ...]

Overrides are dotted config keys with Python-literal values, e.g. `optim.lr=3e-4
model.n_layers=4 train.steps=2000`. Re-running with the same workdir resumes from its latest
checkpoint. All the logic lives in nanodna.training; this file only parses the command line.
"""

import argparse
import os
import sys

from nanodna.config import ConfigError, apply_overrides, format_config, load_config
from nanodna.data import DataError
from nanodna.training.loop import train


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="a configs/*.py file defining get_config()")
    p.add_argument("--workdir", help="run folder (default: runs/<config name>)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = p.parse_args(argv)
    try:
        cfg = apply_overrides(load_config(args.config), args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    name = os.path.splitext(os.path.basename(args.config))[0]
    workdir = args.workdir or os.path.join("runs", name)
    print(format_config(cfg))
    print(f"workdir: {workdir}")
    try:
        summary = train(cfg, workdir)
    except (ConfigError, DataError, FloatingPointError, FileNotFoundError) as e:  # user-facing
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("final: " + "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                for k, v in summary.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
