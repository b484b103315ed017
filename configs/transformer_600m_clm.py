"""The marin DNA reproduction (experiment 1729): a ~580M causal Llama with WSD-S.

    python train.py --config configs/transformer_600m_clm.py --workdir runs/marin_600m

24 layers x 1408, 22 heads of 64, 512-token windows, AdamW lr 3e-4 wd 0.1 betas (0.9, 0.95),
clip 1.0, bf16 compute (marin experiment 1729, https://github.com/marin-community/marin). Trained with WSD-S: every cycle ends in a
short decay whose end is a "cold" checkpoint (kept and labelled in checkpoints/labels.json,
next to the "hot" one it branched from), so the hot/cold gap in eval loss can be measured.
"""

import dataclasses
import os

from nanodna.config import Config, EvalConfig, OptimConfig, load_config
from nanodna.models import sizes

CYCLE = 10_000  # WSD-S cycle length in steps


def get_config() -> Config:
    cfg = load_config(os.path.join(os.path.dirname(__file__), "transformer_clm_small.py"))
    return dataclasses.replace(
        cfg,
        model=sizes.get("transformer_600m_clm", max_len=512, compute_dtype="bfloat16",
                        remat=True),  # recompute block activations: 24 wide layers
        # 10 epochs of PlantCAD1's 5.49M windows at 256 windows a step (batch size is ours).
        data=dataclasses.replace(cfg.data, batch_size=256),
        optim=OptimConfig(
            lr=3e-4,
            b1=0.9,
            b2=0.95,
            weight_decay=0.1,
            grad_clip=1.0,
            schedule="wsds",
            warmup_steps=1000,  # first cycle only
            cycle_steps=CYCLE,
            decay_fraction=0.1,  # the last 1,000 steps of each cycle decay ...
            decay_shape="inv",  # ... with Levanter's inverse-time shape, to 0.1 lr
        ),
        train=dataclasses.replace(cfg.train, steps=21 * CYCLE, checkpoint_every=CYCLE,
                                  fsdp=True),
        # Evaluate at every cold checkpoint (the end of each cycle).
        eval=EvalConfig(every=CYCLE, val_batches=32, table=None, batch_size=64),
    )
