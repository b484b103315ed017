"""The README's first command: PlantCAD's architecture, Caduceus-PS (BiMamba + RCPS), trained
with PlantCAD's masked LM on the embedded simulated genomes, on a CPU.

    python train.py --config configs/demo_caduceus.py     # ~14 min on a 2-core CPU (2026-12-02)

Same data, fixed step count (1,515) and WSD schedule as configs/demo.py (the causal-transformer
demo, the second example); only the model and objective change. Two layers, not four: the
AUC depends on tokens seen (probes over lr 2e-3 to 1.2e-2, batch 16 or 32 and width 64 to 128
all ended near 0.54 after ~1.8M tokens), and 64 x 2 learns as much per step as 64 x 4 did
(AUC 0.578 vs 0.574 at step 1,100, 0.651 vs 0.653 at 1,515) at 1.9x the tokens/s.
Measured from a fresh clone: 13 min 39 s in all, ending at conservation ROC AUC 0.651 on the
400-row table (0.633 on the full table with eval.py); the AUC sits at 0.52-0.58 for the first
1,100 steps and climbs in the decay (BENCHMARKS.md, "Training: the demo"). The layers run as a
Python loop (unroll_layers: faster CPU steps), and the selective scan uses the fused CPU kernel
(kernels/cpu) when a C++ compiler is there. A wall-clock budget stays available
(train.max_minutes=10): the WSD run is then fitted to it once and the fit kept for resumes.
"""

import dataclasses
import os

from nanodna.config import Config, load_config
from nanodna.models import sizes


def get_config() -> Config:
    cfg = load_config(os.path.join(os.path.dirname(__file__), "demo.py"))
    return dataclasses.replace(
        cfg,
        # Caduceus-PS, 64 channels per strand x 2 layers (0.08M params), d_state 16 as PlantCAD.
        model=sizes.get("caduceus_tiny", n_layers=2, max_len=cfg.data.seq_len,
                        unroll_layers=True),
        # PlantCAD's masked LM: 15% of positions, 80/10/10, repeats weighted 0.1.
        data=dataclasses.replace(cfg.data, mode="mlm"),
        optim=dataclasses.replace(cfg.optim, lr=2e-3),
    )
