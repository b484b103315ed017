"""Small layers shared by both model families, and the scan-over-layers machinery.

Glossary: B batch, L length, D model width, I input features, O output features, V vocabulary.

Parameters are float32; `dtype` (a static string) is the compute dtype the matmuls run in, and
`dot_dtype` the dtype of their inputs where it differs (`mixed_dot`: bfloat16 in, float32 out).
Layers are built once per key with `eqx.filter_vmap`, giving one module whose arrays carry a
leading layer axis; `scan_layers` runs it with `lax.scan`, so compile time does not grow with
depth (the trick MaxText calls scan_layers).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray


_NT = (((1,), (1,)), ((), ()))  # a (M, K) . b (N, K) -> (M, N)
_NN = (((1,), (0,)), ((), ()))  # a (M, K) . b (K, N) -> (M, N)


def _dot_f32(a: Array, b: Array, dims) -> Array:
    """lax.dot_general of a and b, accumulated and returned in float32."""
    return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _mixed_dot_2d(x_MI: Array, w_OI: Array, dot_dtype: str) -> Array:
    return _mixed_dot_2d_fwd(x_MI, w_OI, dot_dtype)[0]


def _mixed_dot_2d_fwd(x_MI, w_OI, dot_dtype):
    xd_MI, wd_OI = x_MI.astype(dot_dtype), w_OI.astype(dot_dtype)
    return _dot_f32(xd_MI, wd_OI, _NT), (xd_MI, wd_OI)


def _transposed_copy(a_MN: Array) -> Array:
    """a.T as a new row-major array, for the weight gradient's dot g^T x.

    XLA folds a plain a.T into the dot that reads it (the dot then reads `a` with a transposed
    layout), and its CPU bfloat16 dot with a transposed left operand ran 136 GFLOP/s at
    in_proj's l20 shape, against 412 with a row-major one; the copy took 1.65 ms of the 8.9 ms
    dot (BENCHMARKS.md, "bfloat16 matmuls in a float32 model"). A transpose of pairs of rows
    is not folded. Odd M: a.T.
    """
    M, N = a_MN.shape
    if M % 2:
        return a_MN.T
    return a_MN.reshape(M // 2, 2, N).transpose(2, 0, 1).reshape(N, M)


def _mixed_dot_2d_bwd(dot_dtype, residuals, g_MO):
    xd_MI, wd_OI = residuals
    gd_MO = g_MO.astype(dot_dtype)
    dx_MI = _dot_f32(gd_MO, wd_OI, _NN)
    dw_OI = _dot_f32(_transposed_copy(gd_MO), xd_MI, _NN)  # g^T x
    return dx_MI, dw_OI


_mixed_dot_2d.defvjp(_mixed_dot_2d_fwd, _mixed_dot_2d_bwd)


def mixed_dot(x_I: Float[Array, "*batch I"], w_OI: Float[Array, "O I"],
              dot_dtype: str = "bfloat16") -> Float[Array, "*batch O"]:
    """x W^T with both operands rounded to dot_dtype, accumulated and returned in float32.

    The backward's two dots likewise take dot_dtype inputs (the cotangent rounded to it, as
    mixed-precision training does on GPUs) and return float32 gradients. Without the custom
    VJP, JAX's autodiff of such a dot would pair a float32 cotangent with a bfloat16 operand,
    which XLA runs as a float32 dot, and would round the weight gradient to bfloat16.
    """
    y_MO = _mixed_dot_2d(x_I.reshape(-1, x_I.shape[-1]).astype(jnp.float32), w_OI, dot_dtype)
    return y_MO.reshape(*x_I.shape[:-1], w_OI.shape[0])


class Linear(eqx.Module):
    """y = x W^T (+ b), W stored (O, I) as in PyTorch so published weights map one to one.

    dtype: the compute dtype of x, W and y. dot_dtype (default dtype): where it differs
    (float32 dtype, bfloat16 dot_dtype), the product is `mixed_dot`'s: bfloat16 operands,
    float32 accumulation.
    """

    weight: Array
    bias: Array | None
    dtype: str = eqx.field(static=True)
    dot_dtype: str = eqx.field(static=True)

    def __init__(self, d_in: int, d_out: int, *, key: PRNGKeyArray, bias: bool = False,
                 std: float | None = None, dtype: str = "float32",
                 dot_dtype: str | None = None):
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
        self.dot_dtype = dot_dtype or dtype

    def matmul(self, x_I: Float[Array, "*batch I"]) -> Float[Array, "*batch O"]:
        """x W^T without the bias, returned in `dtype` (operands in `dot_dtype`)."""
        if self.dot_dtype != self.dtype:
            return mixed_dot(x_I, self.weight, self.dot_dtype).astype(self.dtype)
        # A 2-D dot on the rows flattened: its autodiff weight gradient is then a 2-D dot that
        # contracts the rows, which XLA's CPU dot runs as it is. On the (B, L, I) einsum XLA's
        # dot canonicalisation first copied the cotangent transposed (single-threaded, ~70 ms
        # of a ~500 ms Caduceus-PS 128 x 3 demo step; BENCHMARKS.md, "Contiguous passes in the
        # gated backward, and weight gradients without transposes").
        cdt = jnp.dtype(self.dtype)
        x_MI = x_I.reshape(-1, x_I.shape[-1]).astype(cdt)
        y_MO = jnp.einsum("mi,oi->mo", x_MI, self.weight.astype(cdt))
        return y_MO.reshape(*x_I.shape[:-1], self.weight.shape[0])

    def __call__(self, x_I: Float[Array, "*batch I"]) -> Float[Array, "*batch O"]:
        y = self.matmul(x_I)
        if self.bias is not None:
            y = y + self.bias.astype(self.dtype)
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
