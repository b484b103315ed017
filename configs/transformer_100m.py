"""A 100M-parameter transformer (14 x 768, 12 heads), masked LM, on PlantCAD1's data.

    python train.py --config configs/transformer_100m.py --workdir runs/transformer_100m
    # causal instead:  model.causal=True data.mode=clm

Between PlantCAD1 l28 (112M) and the l20 comparison; uses Caduceus's pretraining optimiser
(betas 0.9/0.95, clip 1.0) with a WSD schedule so the end of the run is a proper cooldown.
"""

import dataclasses
import os

from nanodna.config import Config, OptimConfig, load_config
from nanodna.models import sizes


def get_config() -> Config:
    cfg = load_config(os.path.join(os.path.dirname(__file__), "transformer_mlm_small.py"))
    return dataclasses.replace(
        cfg,
        model=sizes.get("transformer_100m", max_len=512, compute_dtype="bfloat16"),
        optim=OptimConfig(
            lr=3e-4,  # a common choice at this size (marin used 3e-4 at 600M)
            b1=0.9,
            b2=0.95,  # Caduceus / marin
            weight_decay=0.1,  # Caduceus / marin
            grad_clip=1.0,
            schedule="wsd",  # warmup, stable, linear decay to 0.1 lr over the last 20%
            warmup_steps=2000,
            decay_fraction=0.2,
            decay_shape="linear",
        ),
        train=dataclasses.replace(cfg.train, fsdp=True),  # shard params + Adam over "data"
    )
