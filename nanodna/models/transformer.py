"""Llama-style transformer over DNA: bidirectional masked LM or causal LM.

Glossary: B batch, L length, D d_model, H heads, P head dim (Mamba-2's letter), F SwiGLU hidden,
V vocabulary.

    tokens -> embedding -> n_layers x [h + Attn(RMSNorm(h)); h + SwiGLU(RMSNorm(h))] -> RMSNorm -> head

Rotary positions, no biases, residual stream in float32. The head is NOT tied to the
embedding (Llama / the marin DNA reproduction leave them separate; with V = 8 it costs 8*D
parameters). Attention goes through jax.nn.dot_product_attention with implementation=None, so
XLA picks cuDNN flash attention on GPU where it can and a plain kernel elsewhere.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, Key, PRNGKeyArray

from nanodna.models.config import ModelConfig
from nanodna.models.layers import Linear, RMSNorm, scan_layers, stack_layers

INIT_STD = 0.02  # GPT-2 / Llama init for projections and the embedding


def out_std(cfg: ModelConfig) -> float:
    """Init std of the output projections (wo, w_down): INIT_STD / sqrt(2 n_layers), as GPT-2
    scales them, since every block writes the residual stream twice."""
    return INIT_STD / math.sqrt(2 * cfg.n_layers)


def rope(x_BLHP: Float[Array, "B L H P"], theta: float) -> Float[Array, "B L H P"]:
    """Rotary position embedding: rotate channel pairs (p, p + P/2) by angle pos * theta^(-2p/P)."""
    L, P = x_BLHP.shape[1], x_BLHP.shape[3]
    inv_freq = theta ** (-jnp.arange(0, P // 2, dtype=jnp.float32) * 2 / P)
    angle_LP = jnp.arange(L, dtype=jnp.float32)[:, None] * inv_freq[None, :]
    cos, sin = jnp.cos(angle_LP)[None, :, None, :], jnp.sin(angle_LP)[None, :, None, :]
    x = x_BLHP.astype(jnp.float32)
    x1, x2 = x[..., : P // 2], x[..., P // 2 :]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BLHP.dtype)


def _split_unless_batch(key: Array, n: int) -> Array:
    """n keys: `key` split n ways if it is one key, else `key` itself (already n keys).

    One key is a typed key of shape () or a raw uint32 key of shape (2,) (jax.random.PRNGKey);
    both kinds gain one leading axis when split."""
    one_key_ndim = 0 if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else 1
    return jax.random.split(key, n) if key.ndim == one_key_ndim else key


class Attention(eqx.Module):
    wq: Linear
    wk: Linear
    wv: Linear
    wo: Linear
    n_heads: int = eqx.field(static=True)
    causal: bool = eqx.field(static=True)
    rope_theta: float = eqx.field(static=True)

    def __init__(self, cfg: ModelConfig, *, key: PRNGKeyArray | Key[Array, " 4"]):
        """key: one PRNG key, or 4 keys (q, k, v, o) as TransformerBlock hands them down."""
        D, cdt, ddt = cfg.d_model, cfg.compute_dtype, cfg.dot_dtype
        kq, kk, kv, ko = _split_unless_batch(key, 4)
        self.wq = Linear(D, D, key=kq, std=INIT_STD, dtype=cdt, dot_dtype=ddt)
        self.wk = Linear(D, D, key=kk, std=INIT_STD, dtype=cdt, dot_dtype=ddt)
        self.wv = Linear(D, D, key=kv, std=INIT_STD, dtype=cdt, dot_dtype=ddt)
        self.wo = Linear(D, D, key=ko, std=out_std(cfg), dtype=cdt, dot_dtype=ddt)
        self.n_heads, self.causal, self.rope_theta = cfg.n_heads, cfg.causal, cfg.rope_theta

    def __call__(self, x_BLD: Float[Array, "B L D"]) -> Float[Array, "B L D"]:
        Bsz, L, Dm = x_BLD.shape
        H = self.n_heads
        q, k, v = (w(x_BLD).reshape(Bsz, L, H, Dm // H) for w in (self.wq, self.wk, self.wv))
        q, k = rope(q, self.rope_theta), rope(k, self.rope_theta)
        o_BLHP = jax.nn.dot_product_attention(q, k, v, is_causal=self.causal, implementation=None)
        return self.wo(o_BLHP.reshape(Bsz, L, Dm))


class SwiGLU(eqx.Module):
    w_gate: Linear
    w_up: Linear
    w_down: Linear

    def __init__(self, cfg: ModelConfig, *, key: PRNGKeyArray | Key[Array, " 3"]):
        """key: one PRNG key, or 3 keys (gate, up, down) as TransformerBlock hands them down."""
        D, F, cdt, ddt = cfg.d_model, cfg.ff_dim, cfg.compute_dtype, cfg.dot_dtype
        k_gate, k_up, k_down = _split_unless_batch(key, 3)
        self.w_gate = Linear(D, F, key=k_gate, std=INIT_STD, dtype=cdt, dot_dtype=ddt)
        self.w_up = Linear(D, F, key=k_up, std=INIT_STD, dtype=cdt, dot_dtype=ddt)
        self.w_down = Linear(F, D, key=k_down, std=out_std(cfg), dtype=cdt, dot_dtype=ddt)

    def __call__(self, x_BLD: Float[Array, "B L D"]) -> Float[Array, "B L D"]:
        return self.w_down(jax.nn.silu(self.w_gate(x_BLD)) * self.w_up(x_BLD))


class TransformerBlock(eqx.Module):
    attn_norm: RMSNorm
    attn: Attention
    mlp_norm: RMSNorm
    mlp: SwiGLU
    compute_dtype: str = eqx.field(static=True)

    def __init__(self, cfg: ModelConfig, *, key: PRNGKeyArray):
        # One 7-way split, 4 keys to attention and 3 to the MLP: the draw every saved run and
        # BENCHMARKS figure of the transformer was made with (same seed, same weights).
        ks = jax.random.split(key, 7)
        self.attn_norm, self.attn = RMSNorm(cfg.d_model), Attention(cfg, key=ks[:4])
        self.mlp_norm, self.mlp = RMSNorm(cfg.d_model), SwiGLU(cfg, key=ks[4:])
        self.compute_dtype = cfg.compute_dtype

    def __call__(self, h_BLD: Float[Array, "B L D"]) -> Float[Array, "B L D"]:
        cdt = self.compute_dtype
        h_BLD = h_BLD + self.attn(self.attn_norm(h_BLD).astype(cdt)).astype(jnp.float32)
        return h_BLD + self.mlp(self.mlp_norm(h_BLD).astype(cdt)).astype(jnp.float32)


class Transformer(eqx.Module):
    embed: Array  # (V, D)
    blocks: TransformerBlock  # stacked: every array has a leading n_layers axis
    norm_f: RMSNorm
    head: Array  # (V, D), untied
    remat: bool = eqx.field(static=True)
    unroll_layers: bool = eqx.field(static=True)

    def __init__(self, cfg: ModelConfig, *, key: PRNGKeyArray):
        k_emb, k_blocks, k_head = jax.random.split(key, 3)
        self.embed = INIT_STD * jax.random.normal(k_emb, (cfg.vocab_size, cfg.d_model))
        self.blocks = stack_layers(lambda k: TransformerBlock(cfg, key=k), cfg.n_layers, k_blocks)
        self.norm_f = RMSNorm(cfg.d_model)
        self.head = INIT_STD * jax.random.normal(k_head, (cfg.vocab_size, cfg.d_model))
        self.remat, self.unroll_layers = cfg.remat, cfg.unroll_layers

    def trunk(self, h_BLD: Float[Array, "B L D"]) -> Float[Array, "B L D"]:
        """Embeddings -> final normed hidden states: the blocks and the final norm."""
        return self.norm_f(scan_layers(self.blocks, h_BLD, remat=self.remat,
                                       unroll=self.unroll_layers))

    def hidden(self, tokens_BL: Int[Array, "B L"]) -> Float[Array, "B L D"]:
        return self.trunk(self.embed[tokens_BL])

    def __call__(self, tokens_BL: Int[Array, "B L"]) -> Float[Array, "B L V"]:
        # The head runs in float32: V = 8 makes it free, and logits feed a softmax.
        return jnp.einsum("bld,vd->blv", self.hidden(tokens_BL), self.head)

    def logits_at(self, tokens_BL: Int[Array, "B L"], pos_B: Int[Array, " B"]) -> Float[Array, "B V"]:
        """self(tokens_BL)[b, pos_B[b]], the head run at that one position per row only."""
        return self.hidden(tokens_BL)[jnp.arange(tokens_BL.shape[0]), pos_B] @ self.head.T
