"""XLA compile options for nanodna's jitted train step, per backend.

On CPU, XLA hands matmuls to YNNPACK, by default each dot as a library call of its own, with
the transposes, pads and adds around it left to XLA's own (single-threaded) loops.
`LIBRARY_FUSION_TYPE_DOT` groups the ops around each dot into YNNPACK fusions instead.
Measured with `benchmarks/bench_model.py --xla-options nanodna default` (rows timed
round-robin; BENCHMARKS.md, "YNNPACK dot fusions in the CPU train step"): in two of three runs
the demo-size train steps ran 1.15-1.3x faster for the transformer and 1.01-1.16x for
Caduceus-PS (the third, on a VM running 2-3x slow, read 0.86-2.0x); the PlantCAD l20 train step
and the l20 forward (scoring) did not change, so only the train step asks for it. Only models
with float32 matmuls ask: a lone bfloat16 2048^3 dot ran 466 GFLOP/s without the option and 73
with it (AMX is reached only outside the fusions; same section). The bfloat16-input,
float32-output dots of `ModelConfig.matmul_dtype="bfloat16"` lose AMX under it too: 761 -> 97
GFLOP/s at 2048^3 ("bfloat16 matmuls in a float32 model").

The option is experimental in XLA and its spelling may change, so `cpu_compiler_options` first
checks that this jax accepts it, and otherwise asks for nothing: the step then compiles as
before.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}


@functools.cache
def _accepted() -> bool:
    """Whether this jax compiles a small dot under CPU_OPTIONS (default backend: CPU)."""
    x = jnp.ones((8, 8), jnp.float32)
    try:
        jax.jit(jnp.dot).lower(x, x).compile(dict(CPU_OPTIONS))
    except Exception:  # noqa: BLE001 - an unknown option or value: fall back to XLA's defaults
        return False
    return True


def cpu_compiler_options(matmul_dtype: str = "float32") -> dict[str, str]:
    """The options for `jax.jit(..., compiler_options=...)` of a model whose matmuls take
    matmul_dtype inputs (ModelConfig.dot_dtype): CPU_OPTIONS when the default backend is CPU,
    the matmuls are float32 and this jax accepts the options, else {} (GPU, TPU, bfloat16
    matmuls, or an XLA without the option)."""
    if matmul_dtype != "float32" or jax.default_backend() != "cpu" or not _accepted():
        return {}
    return dict(CPU_OPTIONS)
