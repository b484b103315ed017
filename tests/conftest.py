"""Test setup: shape checking on, a persistent compilation cache, CPU only.

jaxtyping's import hook must be installed before nanodna is imported, so that every annotated
public function (`Float[Array, "B L D"]`) is checked with beartype during the tests.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# 8 simulated CPU devices, so sharding tests run on one machine. Must precede `import jax`.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

from jaxtyping import install_import_hook  # noqa: E402

_hook = install_import_hook(["nanodna", "kernels"], "beartype.beartype")

import jax  # noqa: E402

_cache = os.environ.get(
    "NANODNA_JAX_CACHE", os.path.join(os.path.dirname(__file__), "..", ".jax_cache")
)
jax.config.update("jax_compilation_cache_dir", os.path.abspath(_cache))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
