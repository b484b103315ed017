"""nanodna.ops.compile_options: the CPU train step's XLA options change speed, not results, and
an XLA that does not know them gets none."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from nanodna.models import build_model, sizes
from nanodna.ops import compile_options


def test_unknown_option_falls_back_to_none(monkeypatch):
    monkeypatch.setitem(compile_options.CPU_OPTIONS, "xla_cpu_experimental_ynn_fusion_type",
                        "NOT_A_FUSION_TYPE")
    compile_options._accepted.cache_clear()
    try:
        assert compile_options.cpu_compiler_options() == {}
    finally:
        compile_options._accepted.cache_clear()


def test_bfloat16_models_get_none():
    """A lone bfloat16 dot lost AMX under the option (BENCHMARKS.md, "YNNPACK dot fusions")."""
    assert compile_options.cpu_compiler_options("bfloat16") == {}


def test_options_keep_the_gradient():
    """A transformer's loss and gradient compiled with and without the options agree to float32
    rounding (the options only regroup XLA's fusions)."""
    options = compile_options.cpu_compiler_options()
    if jax.default_backend() == "cpu":
        # This jax (the one CI installs) takes the option: a rename would silently drop it.
        assert options == compile_options.CPU_OPTIONS
    cfg = sizes.get("transformer_1m", d_model=32, n_layers=1)
    model = eqx.filter_jit(lambda k: build_model(cfg, k))(jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 32), 3, 7)

    def loss(m, t):
        logp = jax.nn.log_softmax(m(t))
        return -jnp.mean(jnp.take_along_axis(logp, t[..., None], -1))

    grad = eqx.filter_value_and_grad(loss)
    got = eqx.filter_jit(grad, compiler_options=options)(model, tokens)
    want = eqx.filter_jit(grad)(model, tokens)
    got_leaves, want_leaves = jax.tree.leaves(got), jax.tree.leaves(want)
    assert len(got_leaves) == len(want_leaves) > 5
    for g, w in zip(got_leaves, want_leaves):
        scale = float(jnp.max(jnp.abs(w))) + 1e-12
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=0, atol=1e-5 * scale)
