"""ModelConfig.matmul_dtype="bfloat16": layers.mixed_dot rounds its operands to bfloat16 and
nothing else, its backward's dots take bfloat16 operands and return float32 gradients, and both
model families built with it stay float32 everywhere but in their projections' dots."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nanodna.models import build_model, sizes
from nanodna.models.layers import Linear, mixed_dot
from nanodna.ops.compile_options import cpu_compiler_options

BF = jnp.bfloat16


def bf16_round(x) -> np.ndarray:
    """x rounded to bfloat16, as float64."""
    return np.asarray(jnp.asarray(x, jnp.float32).astype(BF).astype(jnp.float32), np.float64)


def operands(seed, lead=(3, 5), I=37, O=29):
    kx, kw, kg = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, (*lead, I))
    w = jax.random.normal(kw, (O, I)) / np.sqrt(I)
    g = jax.random.normal(kg, (*lead, O))  # the output's cotangent
    return x, w, g


def test_forward_is_the_float64_dot_of_bfloat16_rounded_operands():
    x, w, _ = operands(0)
    y = mixed_dot(x, w)
    assert y.dtype == jnp.float32 and y.shape == (3, 5, 29)
    want = bf16_round(x) @ bf16_round(w).T  # float64
    exact = np.asarray(x, np.float64) @ np.asarray(w, np.float64).T
    err = np.abs(np.asarray(y, np.float64) - want)
    # float32 accumulation of exact products: error ~1e-7 relative; the rounding of the operands
    # moves the result ~1e-3, so the output is the rounded operands' dot, not the original one
    np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=1e-5, atol=1e-5)
    assert np.abs(exact - want).max() > 100 * err.max()


@pytest.mark.parametrize("lead", [(3, 5), (4, 6)])  # odd and even row counts (_transposed_copy)
def test_gradients_are_float32_dots_of_bfloat16_operands(lead):
    x, w, g = operands(1, lead)
    dx, dw = jax.grad(lambda x, w: jnp.sum(g * mixed_dot(x, w)), argnums=(0, 1))(x, w)
    assert dx.dtype == dw.dtype == jnp.float32 and dx.shape == x.shape and dw.shape == w.shape
    g_MO, x_MI = bf16_round(g).reshape(-1, 29), bf16_round(x).reshape(-1, 37)
    np.testing.assert_allclose(np.asarray(dx, np.float64).reshape(-1, 37),
                               g_MO @ bf16_round(w), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dw, np.float64), g_MO.T @ x_MI, rtol=1e-5, atol=1e-5)
    # the weight gradient keeps float32 precision: most of it is not representable in bfloat16
    assert np.mean(bf16_round(dw) != np.asarray(dw, np.float64)) > 0.9


def test_every_dot_of_the_gradient_takes_bfloat16_operands():
    """The point of the custom VJP: JAX's own transpose of a bfloat16 -> float32 dot pairs the
    float32 cotangent with a bfloat16 operand, which XLA runs as a float32 dot."""
    x, w, g = operands(2)
    jaxpr = jax.make_jaxpr(jax.grad(lambda x, w: jnp.sum(g * mixed_dot(x, w)), (0, 1)))(x, w)

    def dots(jxpr):  # every dot_general, nested jaxprs (pjit, custom_vjp) included
        for eqn in jxpr.eqns:
            if eqn.primitive.name == "dot_general":
                yield eqn
            for p in eqn.params.values():
                inner = getattr(p, "jaxpr", p)
                if hasattr(inner, "eqns"):
                    yield from dots(inner)

    found = list(dots(jaxpr.jaxpr))
    assert len(found) == 3  # forward, dx, dw
    for eqn in found:
        assert [v.aval.dtype for v in eqn.invars] == [BF, BF]
        assert eqn.outvars[0].aval.dtype == jnp.float32


def test_linear_with_and_without_mixed_dots():
    lin = Linear(37, 29, key=jax.random.key(3), bias=True)
    mixed = Linear(37, 29, key=jax.random.key(3), bias=True, dot_dtype="bfloat16")
    x, _, _ = operands(4)
    np.testing.assert_array_equal(np.asarray(lin.weight), np.asarray(mixed.weight))
    want = bf16_round(x) @ bf16_round(lin.weight).T + np.asarray(lin.bias, np.float64)
    np.testing.assert_allclose(np.asarray(mixed(x), np.float64), want, rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(lin(x)) - np.asarray(mixed(x))).max() > 1e-4  # not the float32 path


@pytest.mark.parametrize("size", ["caduceus_tiny", "transformer_1m"])
def test_models_with_bfloat16_matmuls(size):
    """Same parameters (float32, same draw), logits and gradients within bfloat16 rounding of
    the float32 model's, and differing from them: the option reaches every projection."""
    cfg = dataclasses.replace(sizes.get(size), d_model=32, n_layers=2)
    if cfg.arch == "caduceus":
        cfg = dataclasses.replace(cfg, d_state=4, scan_impl="ref")
    mixed_cfg = dataclasses.replace(cfg, matmul_dtype="bfloat16")
    assert mixed_cfg.dot_dtype == "bfloat16" and cfg.dot_dtype == "float32"
    f32 = eqx.filter_jit(lambda k: build_model(cfg, k))(jax.random.key(0))
    mixed = eqx.filter_jit(lambda k: build_model(mixed_cfg, k))(jax.random.key(0))
    p32, pmx = (jax.tree.leaves(eqx.filter(m, eqx.is_array)) for m in (f32, mixed))
    assert all(a.dtype == jnp.float32 for a in pmx)
    for a, b in zip(p32, pmx):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    tokens = jax.random.randint(jax.random.key(5), (2, 24), 3, 7)

    def loss(m):
        logp = jax.nn.log_softmax(m(tokens))
        return -jnp.mean(jnp.take_along_axis(logp, tokens[..., None], -1))

    l32, g32 = eqx.filter_jit(eqx.filter_value_and_grad(loss))(f32)
    lmx, gmx = eqx.filter_jit(eqx.filter_value_and_grad(loss))(mixed)
    assert lmx.dtype == jnp.float32 and float(lmx) != float(l32)
    np.testing.assert_allclose(float(lmx), float(l32), rtol=2e-2)
    g32, gmx = jax.tree.leaves(g32), jax.tree.leaves(gmx)
    assert all(g.dtype == jnp.float32 for g in gmx)
    a, b = np.concatenate([np.ravel(g) for g in g32]), np.concatenate([np.ravel(g) for g in gmx])
    cos = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    assert 0.99 < cos < 1.0


def test_bad_matmul_dtype_is_a_clear_error():
    cfg = sizes.get("caduceus_tiny")
    with pytest.raises(ValueError, match="matmul_dtype"):
        dataclasses.replace(cfg, matmul_dtype="fp8")
    with pytest.raises(ValueError, match="matmul_dtype"):  # float32 dots in a bfloat16 model
        dataclasses.replace(cfg, compute_dtype="bfloat16", matmul_dtype="float32")
    assert dataclasses.replace(cfg, compute_dtype="bfloat16", matmul_dtype="bfloat16")


def test_bfloat16_matmuls_get_no_cpu_options():
    """XLA's YNNPACK dot fusions take bfloat16 dots off AMX (BENCHMARKS.md)."""
    cfg = dataclasses.replace(sizes.get("caduceus_tiny"), matmul_dtype="bfloat16")
    assert cpu_compiler_options(cfg.dot_dtype) == {}
