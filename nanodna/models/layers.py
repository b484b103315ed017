"""Small layers shared by both model families, and the scan-over-layers machinery.

Glossary: B batch, L length, D model width, I input features, O output features, V vocabulary.

Parameters are float32; `dtype` (a static string) is the compute dtype the matmuls run in.
Layers are built once per key with `eqx.filter_vmap`, giving one module whose arrays carry a
leading layer axis; `scan_layers` runs it with `lax.scan`, so compile time does not grow with
depth (the trick MaxText calls scan_layers).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray


class Linear(eqx.Module):
    """y = x W^T (+ b), W stored (O, I) as in PyTorch so published weights map one to one."""

    weight: Array
    bias: Array | None
    dtype: str = eqx.field(static=True)

    def __init__(self, d_in: int, d_out: int, *, key: PRNGKeyArray, bias: bool = False,
                 std: float | None = None, dtype: str = "float32"):
        # Default: PyTorch's nn.Linear init, U(+-1/sqrt(d_in)), which mamba-ssm relies on.
        # With `std`: a normal init (transformers).
        kw, kb = jax.random.split(key)
        bound = 1.0 / math.sqrt(d_in)
        if std is None:
            self.weight = jax.random.uniform(kw, (d_out, d_in), minval=-bound, maxval=bound)
        else:
            self.weight = std * jax.random.normal(kw, (d_out, d_in))
        self.bias = jax.random.uniform(kb, (d_out,), minval=-bound, maxval=bound) if bias else None
        self.dtype = dtype

    def __call__(self, x_I: Float[Array, "*batch I"]) -> Float[Array, "*batch O"]:
        cdt = jnp.dtype(self.dtype)
        y = jnp.einsum("...i,oi->...o", x_I.astype(cdt), self.weight.astype(cdt))
        if self.bias is not None:
            y = y + self.bias.astype(cdt)
        return y


class RMSNorm(eqx.Module):
    """x / rms(x) * w, computed in float32 whatever the input dtype (the residual stream is f32)."""

    weight: Array
    eps: float = eqx.field(static=True)

    def __init__(self, d: int, *, eps: float = 1e-5):
        self.weight = jnp.ones((d,), jnp.float32)
        self.eps = eps

    def __call__(self, x_D: Float[Array, "*batch D"]) -> Float[Array, "*batch D"]:
        x = x_D.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
        return x * self.weight


def stack_layers(make_layer: Callable[[PRNGKeyArray], eqx.Module], n_layers: int,
                 key: PRNGKeyArray) -> eqx.Module:
    """Build n_layers independent layers as ONE module whose arrays have a leading layer axis."""
    return eqx.filter_vmap(make_layer)(jax.random.split(key, n_layers))


def n_stacked(layers: eqx.Module) -> int:
    """Number of layers in a stacked module."""
    return jax.tree.leaves(eqx.filter(layers, eqx.is_array))[0].shape[0]


def layer_at(layers: eqx.Module, i: int) -> eqx.Module:
    """The i-th layer of a stacked module, as an ordinary module (for loops and inspection)."""
    params, static = eqx.partition(layers, eqx.is_array)
    return eqx.combine(jax.tree.map(lambda a: a[i], params), static)


def scan_layers(layers: eqx.Module, x: Array, remat: bool = False, unroll: bool = False) -> Array:
    """x -> layer_{n-1}(... layer_0(x)) with lax.scan over the stacked parameters, or with a
    Python loop when unroll (ModelConfig.unroll_layers: faster steps, longer compiles)."""
    params, static = eqx.partition(layers, eqx.is_array)

    def body(x, layer_params):
        return eqx.combine(layer_params, static)(x), None

    if remat:  # keep only each block's input; recompute its insides in the backward pass
        body = jax.checkpoint(body)
    if unroll:
        for i in range(n_stacked(layers)):
            x, _ = body(x, jax.tree.map(lambda a: a[i], params))
        return x
    x, _ = jax.lax.scan(body, x, params)
    return x
