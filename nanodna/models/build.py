"""Building a model from its config, and counting its parameters."""

from __future__ import annotations

import copy

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

from nanodna.models.caduceus import Caduceus
from nanodna.models.config import ModelConfig
from nanodna.models.mamba import SelectiveSSM
from nanodna.models.transformer import Transformer


def build_model(cfg: ModelConfig, key: PRNGKeyArray) -> eqx.Module:
    """A freshly initialised model for `cfg` (float32 parameters)."""
    if cfg.arch == "caduceus":
        return Caduceus(cfg, key=key)
    if cfg.arch == "transformer":
        return Transformer(cfg, key=key)
    raise ValueError(f"unknown arch {cfg.arch!r}")


def count_params(model: eqx.Module) -> int:
    """Number of trainable scalars (every floating-point array leaf)."""
    # Works on real models and on jax.eval_shape'd ones (ShapeDtypeStruct leaves).
    leaves = jax.tree.leaves(model)
    return int(sum(np.prod(a.shape) for a in leaves
                   if hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.inexact)))


def with_scan_impl(model: eqx.Module, impl: str) -> eqx.Module:
    """The same model (same arrays) with every selective scan run by `impl` (nanodna.ops.scan
    impls), e.g. "fwd" for inference. A model without scans is returned unchanged."""

    def swap(node):
        if not isinstance(node, SelectiveSSM):
            return node
        new = copy.copy(node)
        object.__setattr__(new, "scan_impl", impl)  # a static field: not reachable by tree_at
        return new

    return jax.tree.map(swap, model, is_leaf=lambda x: isinstance(x, SelectiveSSM))
