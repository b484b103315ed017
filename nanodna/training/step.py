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


def make_train_step(static, optimizer: optax.GradientTransformation, state_shardings, mesh):
    """jit(state, batch, lr) -> (state, metrics), batch split over "data", old state donated.

    `optimizer` gives the update direction (optim.make_optimizer); the step scales it by -lr.
    """

    def train_step(state: TrainState, batch: Batch, lr: jax.Array) -> tuple[TrainState, dict]:
        def loss_fn(params):
            total, weight = _forward_sums(params, static, batch)
            return total / jnp.maximum(weight, EPS), weight

        (loss, weight), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        updates = jax.tree.map(lambda u: -lr * u, updates)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": global_norm(grads), "loss_weight": weight}
        return TrainState(params, opt_state, state.step + 1), metrics

    return jax.jit(
        train_step,
        in_shardings=(state_shardings, mesh_lib.batch_sharding(mesh), mesh_lib.replicated(mesh)),
        out_shardings=(state_shardings, mesh_lib.replicated(mesh)),
        donate_argnums=(0,),
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
