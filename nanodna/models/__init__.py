"""Models: Caduceus (BiMamba, RCPS / post-hoc conjoining) and a Llama-style transformer.

    cfg = nanodna.models.sizes.get("plantcad_l20")
    model = nanodna.models.build_model(cfg, jax.random.key(0))
    logits_BLV = model(tokens_BL)            # float32, V = 8

One way to build a module: model-level modules (Caduceus, MambaBlock, BiMamba, Mamba,
SelectiveSSM, Transformer, TransformerBlock, Attention, SwiGLU) take the config,
`Module(cfg, *, key)`; leaf layers with no config (Linear, RMSNorm) take their sizes, with the
key keyword-only, `Linear(d_in, d_out, *, key, ...)`.

`ModelConfig`, `sizes` and `flops_per_token` are plain Python and load at once; the JAX-built
parts (the models, `build_model`, `count_params`, the strand average) load from their modules on
first use (PEP 562), so that reading a saved config (nanodna.config) does not import JAX.
"""

from __future__ import annotations

import importlib

from nanodna.models import sizes
from nanodna.models.config import ModelConfig
from nanodna.models.flops import flops_per_token

_JAX_PARTS = {
    "Caduceus": "nanodna.models.caduceus",
    "conjoined_logits": "nanodna.models.caduceus",
    "strand_mean": "nanodna.models.caduceus",
    "Transformer": "nanodna.models.transformer",
    "build_model": "nanodna.models.build",
    "count_params": "nanodna.models.build",
}


def __getattr__(name: str):
    if name in _JAX_PARTS:
        return getattr(importlib.import_module(_JAX_PARTS[name]), name)
    raise AttributeError(f"module 'nanodna.models' has no attribute {name!r}")


__all__ = ["Caduceus", "ModelConfig", "Transformer", "build_model", "conjoined_logits",
           "count_params", "flops_per_token", "sizes", "strand_mean"]
