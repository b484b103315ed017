"""The train state, the loss, and the jitted train / eval steps.

An Equinox model is split into `params` (its floating-point arrays: what the optimizer moves)
and `static` (everything else: structure, Python settings, integer tables). Only params travel
through jit, get sharded, donated and checkpointed; static is closed over as a constant.

Glossary: B batch, L sequence length, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int

from nanodna.checkpoint import model_static
from nanodna.data.batch import Batch
from nanodna.ops.compile_options import cpu_compiler_options
from nanodna.training import mesh as mesh_lib

EPS = 1e-8  # floor of the loss-weight sum: a batch with no weighted token has loss 0, not NaN


class TrainState(NamedTuple):
    params: Any  # the model's float arrays (a model pytree with None where static)
    opt_state: Any  # optax state, same sharding rule as params
    step: jax.Array  # int32 scalar: updates made so far


def cross_entropy_sums(
    logits_BLV: Float[Array, "B L V"],
    targets_BL: Int[Array, "B L"],
    weights_BL: Float[Array, "B L"],
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """(sum of weight * cross-entropy, sum of weights), in float32 whatever the compute dtype."""
    logp_BLV = jax.nn.log_softmax(logits_BLV.astype(jnp.float32), axis=-1)
    nll_BL = -jnp.take_along_axis(logp_BLV, targets_BL[..., None], axis=-1)[..., 0]
    w_BL = weights_BL.astype(jnp.float32)
    return jnp.sum(w_BL * nll_BL), jnp.sum(w_BL)


def weighted_loss(
    logits_BLV: Float[Array, "B L V"],
    targets_BL: Int[Array, "B L"],
    weights_BL: Float[Array, "B L"],
) -> Float[Array, ""]:
    """sum(w * CE) / max(sum(w), eps): the mean loss over the tokens that carry weight."""
    total, weight = cross_entropy_sums(logits_BLV, targets_BL, weights_BL)
    return total / jnp.maximum(weight, EPS)


# ---------------------------------------------------------------------------------------------
# Building the model from shapes


def _init_fn(build: Callable, optimizer: optax.GradientTransformation) -> Callable:
    def init(key):
        params = eqx.filter(build(key), eqx.is_inexact_array)
        return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))

    return init


def state_shapes(build: Callable, optimizer: optax.GradientTransformation, key: jax.Array):
    """ShapeDtypeStructs of the train state, computed without allocating it."""
    return jax.eval_shape(_init_fn(build, optimizer), key)


def init_train_state(build: Callable, optimizer: optax.GradientTransformation, key: jax.Array,
                     mesh, fsdp: bool = False, fsdp_min_size: int = 2**16):
    """Initialise (state, static, state_shardings) directly into their shardings.

    `build(key) -> eqx.Module` makes the model. It runs under jit with out_shardings taken from
    jax.eval_shape, so each device only ever holds its own shard of a large model.
    """
    init = _init_fn(build, optimizer)
    shardings = mesh_lib.state_shardings(jax.eval_shape(init, key), mesh, fsdp, fsdp_min_size)
    state = jax.jit(init, out_shardings=shardings)(key)
    return state, model_static(build, key), shardings


def restore_target(shapes, shardings):
    """ShapeDtypeStructs carrying their target shardings: what a checkpoint restores into."""
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, shardings)


# ---------------------------------------------------------------------------------------------
# Steps


def global_norm(tree) -> jax.Array:
    """L2 norm of all leaves together (before clipping: what the log should show)."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def _forward_sums(params, static, batch: Batch):
    model = eqx.combine(params, static)
    logits_BLV = model(batch.tokens_BL)
    return cross_entropy_sums(logits_BLV, batch.targets_BL, batch.weights_BL)


def split_microbatches(batch: Batch, n: int) -> Batch:
    """(B, L) arrays -> (n, B // n, L): microbatch m holds rows m, m + n, m + 2n, ...

    Strided, not contiguous, so that every device keeps contributing its own rows to each
    microbatch (a device's contiguous slice of the batch splits evenly into n parts).
    """
    return Batch(*(x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1) for x in batch))


def _grad_sums(params, static, batch: Batch, microbatches: int, mesh):
    """(sum of weighted CE, sum of weights, gradient of the CE sum), over the whole batch.

    With microbatches > 1 the batch runs as a lax.scan of sequential forward/backward passes
    whose sums (and gradient sums) add up: one big batch's numbers, to float32 round-off, in
    the memory of one microbatch. Normalising by the weight of the WHOLE batch afterwards keeps
    this exact when microbatches carry different weights.
    """
    sums = jax.value_and_grad(lambda p, b: _forward_sums(p, static, b), has_aux=True)
    if microbatches == 1:
        (total, weight), grads = sums(params, batch)
        return total, weight, grads
    micro = split_microbatches(batch, microbatches)
    micro = jax.lax.with_sharding_constraint(
        micro, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, mesh_lib.DATA)))

    def body(carry, mb):
        total, weight, grads = carry
        (t, w), g = sums(params, mb)
        return (total + t, weight + w, jax.tree.map(jnp.add, grads, g)), None

    zero = jnp.zeros((), jnp.float32)
    init = (zero, zero, jax.tree.map(jnp.zeros_like, params))
    (total, weight, grads), _ = jax.lax.scan(body, init, micro)
    return total, weight, grads


def make_train_step(static, optimizer: optax.GradientTransformation, state_shardings, mesh, *,
                    microbatches: int = 1, skip_nonfinite: bool = False,
                    matmul_dtype: str = "float32"):
    """jit(state, batch, lr) -> (state, metrics), batch split over "data", old state donated.

    `optimizer` gives the update direction (optim.make_optimizer); the step scales it by -lr.
    microbatches: gradient accumulation (see _grad_sums); the batch size must divide by it
    times the local device count. skip_nonfinite: an update whose loss or gradient norm is NaN
    or infinite is dropped (params, optimizer state unchanged; metrics["skipped"] = 1).
    Metrics: loss (weighted mean CE; 0 when loss_weight is 0), grad_norm, loss_weight, skipped.
    matmul_dtype: the dtype of the model's matmul inputs (ModelConfig.dot_dtype), which picks
    XLA's CPU options (ops.compile_options).
    """

    def train_step(state: TrainState, batch: Batch, lr: jax.Array) -> tuple[TrainState, dict]:
        total, weight, grad_sums = _grad_sums(state.params, static, batch, microbatches, mesh)
        scale = 1.0 / jnp.maximum(weight, EPS)
        loss = total * scale
        grads = jax.tree.map(lambda g: g * scale, grad_sums)
        grad_norm = global_norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        updates = jax.tree.map(lambda u: -lr * u, updates)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        if skip_nonfinite:
            keep = lambda new, old: jnp.where(finite, new, old)
            params = jax.tree.map(keep, params, state.params)
            opt_state = jax.tree.map(keep, opt_state, state.opt_state)
        metrics = {"loss": loss, "grad_norm": grad_norm, "loss_weight": weight,
                   "skipped": jnp.logical_not(finite).astype(jnp.int32) if skip_nonfinite
                   else jnp.zeros((), jnp.int32)}
        return TrainState(params, opt_state, state.step + 1), metrics

    return jax.jit(
        train_step,
        in_shardings=(state_shardings, mesh_lib.batch_sharding(mesh), mesh_lib.replicated(mesh)),
        out_shardings=(state_shardings, mesh_lib.replicated(mesh)),
        donate_argnums=(0,),
        compiler_options=cpu_compiler_options(matmul_dtype),
    )


def make_eval_step(static, params_shardings, mesh):
    """jit(params, batch) -> (sum of weighted CE, sum of weights), to average over batches."""

    def eval_step(params, batch: Batch):
        return _forward_sums(params, static, batch)

    return jax.jit(
        eval_step,
        in_shardings=(params_shardings, mesh_lib.batch_sharding(mesh)),
        out_shardings=mesh_lib.replicated(mesh),
    )
