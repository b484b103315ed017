"""The CPU demo with PlantCAD's architecture: Caduceus-PS (BiMamba + RCPS) and the masked LM.

    python train.py --config configs/demo_caduceus.py

Same data, budget and schedule as configs/demo.py; only the model and objective change. On a
2-core CPU the selective scan limits it to ~3k tokens/s, too few for the model to leave the
base-composition plateau in 8 minutes (measured 2026-11-21: 321 steps, AUC 0.54); give it a GPU or a longer budget
(train.max_minutes=60) to see it learn.
"""

import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import demo  # noqa: E402  (configs/ is not a package: import the sibling file)

from nanodna.models import sizes  # noqa: E402


def get_config():
    cfg = demo.get_config()
    return dataclasses.replace(
        cfg,
        # Caduceus-PS, 64 channels per strand x 4 layers (0.16M params), d_state 16 as PlantCAD.
        model=sizes.get("caduceus_tiny", max_len=demo.SEQ_LEN),
        # PlantCAD's masked LM: 15% of positions, 80/10/10, repeats weighted 0.1.
        data=dataclasses.replace(cfg.data, mode="mlm"),
        optim=dataclasses.replace(cfg.optim, lr=2e-3),
    )
