"""The l20-sized transformer as a causal (next-token) LM, on PlantCAD1's data and recipe.

    python train.py --config configs/transformer_clm_small.py --workdir runs/transformer_clm_small

Conservation is then scored with the causal 4-allele rule (nanodna.evaluation.scoring): the
window's log-likelihood with each base at the target, normalised across the four.
"""

import dataclasses
import os

from nanodna.config import Config, load_config
from nanodna.models import sizes


def get_config() -> Config:
    cfg = load_config(os.path.join(os.path.dirname(__file__), "transformer_mlm_small.py"))
    return dataclasses.replace(
        cfg,
        model=sizes.get("transformer_30m", n_layers=12, max_len=512, causal=True,
                        compute_dtype="bfloat16"),
        # Next-token targets on every position (repeats still weigh 0.1 / 0.0).
        data=dataclasses.replace(cfg.data, mode="clm"),
    )
