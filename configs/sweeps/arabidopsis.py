"""The CPU sweep's grid on real genomes: three Arabidopsis species, scored on a real A. thaliana
conservation table.

    python -m nanodna.tasks.arabidopsis --out data/arabidopsis      # builds store + tables
    python -m nanodna.sweep --config configs/sweeps/arabidopsis.py --out runs/sweep_arabidopsis

Same architectures, recipes, sizes and WSD-S cycle as configs/sweeps/cpu.py; the data are the
genome store and held-out part of A. thaliana that nanodna.tasks.arabidopsis prepares (being
built alongside this sweep: if its output layout differs, change the four constants below and
nothing else). Not yet run: no time estimate is claimed here; per token it costs what cpu.py
costs (same models, windows and batch), plus reading a larger store.
"""

import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import cpu

# What `python -m nanodna.tasks.arabidopsis --out data/arabidopsis` writes (paths relative to the
# repository root, where train.py runs).
ARABIDOPSIS_DIR = "data/arabidopsis"
ARABIDOPSIS_STORE = os.path.join(ARABIDOPSIS_DIR, "store")  # genome store of the 3 species
ARABIDOPSIS_TABLE = os.path.join(ARABIDOPSIS_DIR, "eval", "conservation.tsv")  # A. thaliana
# The held-out part of A. thaliana for the validation loss (a chromosome name in the store).
ARABIDOPSIS_HOLDOUT_CHROMOSOMES = ("thaliana_chr1_holdout",)


def get_sweep():
    real_data = (
        "simulate.preset=None",
        f"data.store_dirs=('{ARABIDOPSIS_STORE}',)",
        "data.holdout_assemblies=()",
        f"data.holdout_chromosomes={ARABIDOPSIS_HOLDOUT_CHROMOSOMES!r}",
    )
    sweep = cpu.get_sweep()
    return dataclasses.replace(sweep, table=ARABIDOPSIS_TABLE,
                               extra_overrides=(*sweep.extra_overrides, *real_data))
