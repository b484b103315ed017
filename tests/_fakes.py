"""Stand-ins for the training tests: a tiny Equinox model and a resumable batch iterator.

They follow the shared contracts (model(tokens_BL) -> logits_BLV float32; Batch(tokens_BL, targets_BL, weights_BL)
batches with get_state / set_state) so the training code is tested on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from nanodna.data.batch import Batch

VOCAB = 8


@dataclass(frozen=True)
class TinyConfig:
    d_model: int = 16
    vocab_size: int = VOCAB


class TinyModel(eqx.Module):
    """Embedding -> one residual MLP with a norm -> tied-free output head."""

    embed_VD: jax.Array
    norm: eqx.nn.RMSNorm
    mlp: eqx.nn.Linear
    head: eqx.nn.Linear
    lookup: jax.Array  # an integer table: exercises the non-float-array path of model_static

    def __init__(self, cfg: TinyConfig, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.embed_VD = jax.random.normal(k1, (cfg.vocab_size, cfg.d_model)) * 0.5
        self.norm = eqx.nn.RMSNorm(cfg.d_model)
        self.mlp = eqx.nn.Linear(cfg.d_model, cfg.d_model, key=k2)
        self.head = eqx.nn.Linear(cfg.d_model, cfg.vocab_size, key=k3)
        self.lookup = jnp.arange(cfg.vocab_size, dtype=jnp.int32)

    def __call__(self, tokens_BL):
        x_BLD = self.embed_VD[self.lookup[tokens_BL]]
        h_BLD = jax.vmap(jax.vmap(self.norm))(x_BLD)
        x_BLD = x_BLD + jax.nn.gelu(jax.vmap(jax.vmap(self.mlp))(h_BLD))
        return jax.vmap(jax.vmap(self.head))(x_BLD).astype(jnp.float32)


def build_tiny(cfg: TinyConfig = TinyConfig()):
    return lambda key: TinyModel(cfg, key)


class FakeIterator:
    """Deterministic random MLM-like batches; batch i depends only on (seed, i)."""

    def __init__(self, batch_size: int = 8, seq_len: int = 16, seed: int = 0):
        self.batch_size, self.seq_len, self.seed, self.index = batch_size, seq_len, seed, 0

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        rng = np.random.default_rng([self.seed, self.index])
        self.index += 1
        targets = rng.integers(3, 7, size=(self.batch_size, self.seq_len)).astype(np.int32)
        masked = rng.random(targets.shape) < 0.3
        tokens = np.where(masked, 1, targets).astype(np.int32)
        weights = masked.astype(np.float32)
        return Batch(tokens, targets, weights)

    def get_state(self) -> dict:
        return {"index": self.index, "seed": self.seed}

    def set_state(self, state: dict) -> None:
        self.index, self.seed = int(state["index"]), int(state["seed"])
