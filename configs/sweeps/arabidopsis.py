"""The CPU sweep's grid on real genomes: three Arabidopsis species, scored on a real A. thaliana
conservation table.

    python -m nanodna.tasks.arabidopsis --out data/arabidopsis      # builds store + tables
    python -m nanodna.sweep --config configs/sweeps/arabidopsis.py --out runs/sweep_arabidopsis

Same architectures, recipes, sizes and WSD-S cycle as configs/sweeps/cpu.py; the data are the
genome stores that nanodna.tasks.arabidopsis prepares (training genomes; the held-out tail of
A. thaliana chr1 for the validation loss) and its conservation table of that tail. Run end to
end on 2026-11-29/30 in 2 h 26 min on the 2-core CPU (EXPERIMENTS.md, section 2: every model
sits at chance on the real table at this budget); per token it costs what cpu.py costs.
"""

import dataclasses
import os

from nanodna.sweep.config import load_sweep

# What `python -m nanodna.tasks.arabidopsis --out data/arabidopsis` writes (paths relative to the
# repository root, where train.py runs): the training genomes, the held-out tail of A. thaliana
# chr1 as its own store (one assembly), and the real conservation table of that tail.
ARABIDOPSIS_DIR = "data/arabidopsis"
ARABIDOPSIS_STORE = os.path.join(ARABIDOPSIS_DIR, "store")
ARABIDOPSIS_HELDOUT_STORE = os.path.join(ARABIDOPSIS_DIR, "store_heldout")
ARABIDOPSIS_HELDOUT_ASSEMBLY = "Atha_TAIR10_chr1_heldout"  # validation loss only
ARABIDOPSIS_TABLE = os.path.join(ARABIDOPSIS_DIR, "tables", "conservation.parquet")


def get_sweep():
    real_data = (
        "simulate.preset=None",
        f"data.store_dirs=('{ARABIDOPSIS_STORE}', '{ARABIDOPSIS_HELDOUT_STORE}')",
        f"data.holdout_assemblies=('{ARABIDOPSIS_HELDOUT_ASSEMBLY}',)",
    )
    sweep = load_sweep(os.path.join(os.path.dirname(__file__), "cpu.py"))
    return dataclasses.replace(sweep, table=ARABIDOPSIS_TABLE,
                               extra_overrides=(*sweep.extra_overrides, *real_data))
