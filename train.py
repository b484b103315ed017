"""Train a model from a config file.

    python train.py --config configs/demo.py [--workdir DIR] [--restart] [key=value ...]

Overrides are dotted config keys with Python-literal values, e.g. `optim.lr=3e-4
model.n_layers=4 train.steps=2000`. Re-running with the same workdir resumes from its latest
checkpoint; a config the saved run cannot continue under (another model shape, data layout,
sequence length...) is refused before anything in the workdir changes, and `--restart` starts
over in that workdir (deleting its checkpoints). This file wires the pieces together: it
provisions the data (the simulated set when `simulate.preset` is set), checks the evaluation
table, and hands the real model, data streams and table evaluation to
nanodna.training.loop.train. Any mistake a user can fix (config, data, table, a NaN loss) ends
with one `error: ...` line on stderr and exit code 2.
"""
# ruff: noqa: E402 - the huge-page restart (nanodna.hugepages) must run before jax is imported

import argparse
import dataclasses
import os
import sys

from nanodna.hugepages import restart_with_huge_pages

if __name__ == "__main__":  # before jax loads: glibc reads its tunables only at process start
    restart_with_huge_pages()

import jax
from jax.experimental import multihost_utils

from nanodna.config import Config, apply_overrides, format_config, load_config
from nanodna.data.stream import make_eval_iterator, make_train_iterator
from nanodna.errors import UserError, fail
from nanodna.evaluation.conservation import evaluate_table, load_table
from nanodna.models import build_model
from nanodna.sim.provision import ensure_simulated, simulated_paths
from nanodna.training.loop import train
from nanodna.training.mesh import maybe_initialize_distributed


def provision(cfg: Config) -> Config:
    """With simulate.preset set: fill an empty data.store_dirs and an unset eval.table from the
    simulated set, and generate that set (on process 0) if it is missing. The resolved config
    is the one saved in the workdir."""
    sim = cfg.simulate
    if not sim.preset:
        return cfg
    store_dir, table = simulated_paths(sim.dir)
    data = cfg.data if cfg.data.store_dirs else dataclasses.replace(cfg.data,
                                                                    store_dirs=(store_dir,))
    ev = cfg.eval if cfg.eval.table else dataclasses.replace(cfg.eval, table=table)
    ensure_simulated(sim.dir, sim.preset, sim.seed, leader=jax.process_index() == 0)
    if jax.process_count() > 1:  # the other hosts wait for it (on a shared file system)
        multihost_utils.sync_global_devices("nanodna: simulated data ready")
    return dataclasses.replace(cfg, data=data, eval=ev)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="a configs/*.py file defining get_config()")
    p.add_argument("--workdir", help="run folder (default: runs/<config name>)")
    p.add_argument("--restart", action="store_true",
                   help="start over in --workdir, deleting its checkpoints and metrics")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = p.parse_args(argv)
    name = os.path.splitext(os.path.basename(args.config))[0]
    workdir = args.workdir or os.path.join("runs", name)
    try:
        cfg = apply_overrides(load_config(args.config), args.overrides)
        maybe_initialize_distributed(cfg.train.distributed)
        cfg = provision(cfg)
        if cfg.eval.score_table and cfg.eval.table:  # a bad table fails now, not mid-run
            load_table(cfg.eval.table, "conservation", cfg.eval.max_rows)
        print(format_config(cfg))
        print(f"workdir: {workdir}")
        process = {"process_index": jax.process_index(), "process_count": jax.process_count()}
        print(f"data: process {jax.process_index()} of {jax.process_count()} reads "
              f"{cfg.data.batch_size} of each global batch of "
              f"{cfg.data.batch_size * jax.process_count()} windows")
        summary = train(
            cfg, workdir,
            build=lambda key: build_model(cfg.model, key),
            train_iter=lambda c: make_train_iterator(c.data, **process),
            eval_iter=lambda c: make_eval_iterator(c.data, **process),
            evaluate_table=evaluate_table if cfg.eval.score_table else None,
            restart=args.restart,
        )
    except UserError as e:
        return fail(e)
    print("final: " + "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                for k, v in summary.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
