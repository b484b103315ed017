"""A standard transformer at PlantCAD1-l20 size (12 x 384, ~21M params), masked LM.

    python train.py --config configs/transformer_mlm_small.py --workdir runs/transformer_mlm_small

The data, objective and recipe of plantcad_small.py, so the two runs differ only in the
architecture: bidirectional Llama-style blocks (RoPE, SwiGLU, RMSNorm) instead of Caduceus-PS.
"""

import dataclasses
import os

from nanodna.config import Config, load_config
from nanodna.models import sizes


def get_config() -> Config:
    cfg = load_config(os.path.join(os.path.dirname(__file__), "plantcad_small.py"))
    return dataclasses.replace(
        cfg,
        # 384 wide like l20, 12 layers to match its ~21M parameters; 6 heads of 64.
        model=sizes.get("transformer_30m", n_layers=12, max_len=512, compute_dtype="bfloat16"),
        # Not RC-equivariant by construction: reverse-complement half the windows instead.
        data=dataclasses.replace(cfg.data, rc_augment=True),
    )
