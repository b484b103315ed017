"""ModelConfig: every architecture choice of the two model families, in one dataclass."""

from __future__ import annotations

import dataclasses
import math

ARCHS = ("caduceus", "transformer")
COMPUTE_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass
class ModelConfig:
    arch: str = "caduceus"  # "caduceus" (BiMamba, PlantCAD1) | "transformer" (Llama-style)
    d_model: int = 128  # residual width; with RCPS this is per strand (the published convention)
    n_layers: int = 4
    vocab_size: int = 8  # 7 tokens padded to 8 (nanodna.tokenizer)
    max_len: int = 512  # longest window the model is meant for (bp)
    # --- Caduceus / Mamba v1 ---
    d_state: int = 16  # N, SSM state per channel
    d_conv: int = 4  # depthwise causal conv width
    expand: int = 2  # d_inner = expand * d_model
    rcps: bool = True  # Caduceus-PS (RC parameter sharing); False = Caduceus-Ph
    bidirectional: bool = True  # BiMamba: forward + reverse mixer, outputs added
    tie_in_out_proj: bool = True  # the reverse mixer shares in_proj / out_proj
    # Caduceus-PS's fused_add_norm=True path (kuleshov-group/caduceus modeling_rcps.py,
    # RCPSMambaBlock.forward, fused branch): before every block the two strand streams exchange
    # places, each flipped along length and channels (h_x <- flip_LC(h_rc), h_rc <- flip_LC(h_x));
    # embedding, final norm and head unchanged. Still RC-equivariant, but a different function
    # from the unfused path; the released PlantCaduceus checkpoints were trained with it. Needs
    # rcps=True (for Caduceus-Ph the official fused and unfused paths are the same function).
    rcps_swap_strands: bool = False
    scan_impl: str = "auto"  # nanodna.ops.selective_scan impl
    # --- Transformer ---
    n_heads: int = 4
    d_ff: int | None = None  # SwiGLU hidden; None -> 8/3 d_model rounded up to a multiple of 128
    causal: bool = False  # True: causal LM (next token); False: bidirectional MLM
    rope_theta: float = 10000.0
    # --- both ---
    # Params stay float32; the blocks' activations run in this dtype, and so do the matmuls
    # unless matmul_dtype says otherwise.
    compute_dtype: str = "float32"
    # The dtype of the projections' matmul inputs when it differs from compute_dtype; None: the
    # same. Only "bfloat16" with compute_dtype "float32" differs: each projection rounds its
    # input and weight to bfloat16 and accumulates and returns float32 (layers.mixed_dot), its
    # backward's dots likewise, and everything else stays float32. For CPUs with bfloat16
    # matmul units (Intel AMX, Sapphire Rapids and later), where XLA's bfloat16 dots run several
    # times faster than its float32 ones while its bfloat16 elementwise ops are slow
    # (BENCHMARKS.md, "bfloat16 matmuls in a float32 model"); elsewhere it may be slower.
    matmul_dtype: str | None = None
    remat: bool = False  # jax.checkpoint each block: recompute activations in the backward
    # A Python loop over the blocks instead of lax.scan: no stacked per-layer residuals to copy,
    # ~13% faster Caduceus-PS steps on CPU at caduceus_tiny sizes (BENCHMARKS.md), but compile
    # time grows with depth. Same parameters, same function.
    unroll_layers: bool = False

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"ModelConfig.arch must be one of {ARCHS}, got {self.arch!r}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(
                f"ModelConfig.compute_dtype must be one of {COMPUTE_DTYPES}, "
                f"got {self.compute_dtype!r}"
            )
        if self.matmul_dtype not in (None, self.compute_dtype) and not (
                self.compute_dtype == "float32" and self.matmul_dtype == "bfloat16"):
            raise ValueError(
                f"ModelConfig.matmul_dtype {self.matmul_dtype!r} with compute_dtype "
                f"{self.compute_dtype!r}: use None (the compute dtype), 'bfloat16' (with "
                "compute_dtype 'float32': bfloat16 matmul inputs in a float32 model) or "
                "'float32' (with compute_dtype 'float32'); float32 matmuls in a bfloat16 model "
                "are not supported"
            )
        for name in ("d_model", "n_layers", "vocab_size", "max_len", "d_state", "d_conv", "expand"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"ModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.rcps_swap_strands and not (self.arch == "caduceus" and self.rcps):
            raise ValueError("ModelConfig.rcps_swap_strands needs arch='caduceus' and rcps=True")
        if self.arch == "transformer":
            if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
                raise ValueError(
                    f"transformer d_model {self.d_model} must split into {self.n_heads} heads "
                    "of even size (rotary embeddings rotate pairs)"
                )

    @property
    def dot_dtype(self) -> str:
        """The dtype the projections' matmuls take their inputs in."""
        return self.matmul_dtype or self.compute_dtype

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def dt_rank(self) -> int:
        return math.ceil(self.d_model / 16)

    @property
    def ff_dim(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        return 128 * math.ceil(8 * self.d_model / 3 / 128)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads
