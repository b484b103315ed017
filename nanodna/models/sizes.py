"""Named model sizes: the published PlantCAD1 Caduceus sizes, CPU-sized Caduceus, transformers.

`get(name, **overrides)` returns a fresh ModelConfig. Parameter counts (vocab 8) are in the
comments and checked in tests/test_sizes.py.
"""

from __future__ import annotations

import dataclasses

from nanodna.models.config import ModelConfig


def _caduceus(d_model: int, n_layers: int) -> ModelConfig:
    # PlantCAD1 / Caduceus-PS: BiMamba (add), tied in/out projections, RCPS; d_model per strand
    # (the HF config's d_model; the RCPS channel view has 2 * d_model channels).
    return ModelConfig(arch="caduceus", d_model=d_model, n_layers=n_layers, rcps=True,
                       bidirectional=True, tie_in_out_proj=True, d_state=16, d_conv=4, expand=2)


def _transformer(d_model: int, n_layers: int, n_heads: int, causal: bool = False,
                 d_ff: int | None = None) -> ModelConfig:
    return ModelConfig(arch="transformer", d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                       causal=causal, d_ff=d_ff)


SIZES: dict[str, ModelConfig] = {
    # PlantCaduceus (HF model cards): published ~20M / 40M / 112M / 225M.
    "plantcad_l20": _caduceus(384, 20),  # 20.87M
    "plantcad_l24": _caduceus(512, 24),  # 43.6M
    "plantcad_l28": _caduceus(768, 28),  # 112.1M
    "plantcad_l32": _caduceus(1024, 32),  # 225.3M
    # Small Caduceus-PS for CPU runs and tests.
    "caduceus_tiny": _caduceus(64, 4),  # 0.16M
    "caduceus_small": _caduceus(128, 8),  # 1.08M
    "caduceus_base": _caduceus(256, 12),  # 5.8M
    # Transformers: bidirectional MLM unless named _clm. SwiGLU hidden = 8/3 d rounded to 128.
    "transformer_1m": _transformer(128, 5, 4),  # 1.07M
    "transformer_10m": _transformer(256, 12, 4),  # 10.2M
    "transformer_30m": _transformer(384, 16, 6),  # 28.3M
    "transformer_100m": _transformer(768, 14, 12),  # 99.1M
    "transformer_300m": _transformer(1024, 24, 16),  # 308M
    # The marin DNA reproduction's causal Llama (24 x 1408, 22 heads of 64). Its MLP width is
    # not published with the numbers we have; the SwiGLU default (3840) gives ~580M.
    "transformer_600m_clm": _transformer(1408, 24, 22, causal=True),
    "transformer_100m_clm": _transformer(768, 14, 12, causal=True),
}


def get(name: str, **overrides) -> ModelConfig:
    """A copy of a named size, with fields overridden (e.g. compute_dtype="bfloat16")."""
    if name not in SIZES:
        raise ValueError(f"unknown model size {name!r}; known: {', '.join(SIZES)}")
    return dataclasses.replace(SIZES[name], **overrides)
