"""Loss, sharded train step (8 simulated CPU devices vs 1) and FSDP placement."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nanodna.config import OptimConfig
from nanodna.training import mesh as mesh_lib
from nanodna.training import step as step_lib
from nanodna.training.optim import make_optimizer
from tests._fakes import FakeIterator, TinyConfig, build_tiny


def test_weighted_loss_matches_numpy():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 5, 8)).astype(np.float32)
    targets = rng.integers(0, 8, size=(3, 5)).astype(np.int32)
    weights = rng.choice([0.0, 0.1, 1.0], size=(3, 5)).astype(np.float32)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    expected = (weights * nll).sum() / weights.sum()
    got = step_lib.weighted_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights))
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_zero_weights_give_zero_loss_not_nan():
    logits = jax.random.normal(jax.random.key(0), (2, 4, 8))
    loss = step_lib.weighted_loss(logits, jnp.ones((2, 4), jnp.int32), jnp.zeros((2, 4)))
    assert float(loss) == 0.0


def _run_steps(num_devices, fsdp=False, n_steps=3):
    mesh = mesh_lib.make_mesh(num_devices)
    opt = make_optimizer(OptimConfig(weight_decay=0.1))
    build = build_tiny(TinyConfig(d_model=16))
    state, static, shardings = step_lib.init_train_state(
        build, opt, jax.random.key(3), mesh, fsdp=fsdp, fsdp_min_size=64
    )
    train_step = step_lib.make_train_step(static, opt, shardings, mesh)
    it = FakeIterator(batch_size=8, seq_len=16, seed=7)
    losses = []
    for _ in range(n_steps):
        batch = mesh_lib.put_batch(next(it), mesh_lib.batch_sharding(mesh))
        state, metrics = train_step(state, batch, 1e-2)
        losses.append(float(metrics["loss"]))
    return state, losses


def test_sharded_step_equals_single_device():
    assert jax.device_count() == 8, "conftest should simulate 8 CPU devices"
    state1, losses1 = _run_steps(1)
    state8, losses8 = _run_steps(8)
    np.testing.assert_allclose(losses8, losses1, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(state8.params), jax.tree.leaves(state1.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    assert int(state8.step) == 3
    # The loss actually moved: the step trains.
    assert losses1[-1] < losses1[0]


def test_fsdp_step_equals_replicated_and_shards_big_arrays():
    state_r, losses_r = _run_steps(8, fsdp=False, n_steps=2)
    state_f, losses_f = _run_steps(8, fsdp=True, n_steps=2)
    np.testing.assert_allclose(losses_f, losses_r, rtol=1e-5)
    # mlp weight is 16 x 16 = 256 >= 64 elements and 16 % 8 == 0: split along a "data" axis.
    w = state_f.params.mlp.weight
    assert mesh_lib.DATA in w.sharding.spec
    assert w.addressable_shards[0].data.shape[0] * 8 == w.shape[0] or \
        w.addressable_shards[0].data.shape[1] * 8 == w.shape[1]
    # The norm weight (16 elements) stays replicated; Adam's moment follows its parameter.
    assert state_f.params.norm.weight.sharding.spec == jax.sharding.PartitionSpec()
    mu = state_f.opt_state[1].mu.mlp.weight  # (clip, adam, decay) chain: adam is [1]
    assert mu.sharding.spec == w.sharding.spec
    assert state_r.params.mlp.weight.sharding.spec == jax.sharding.PartitionSpec()


@pytest.mark.parametrize(
    "shape,expected",
    [((64, 48), ("data", None)), ((6, 40), (None, "data")), ((7, 9), ()), ((8,), ())],
)
def test_fsdp_spec_picks_largest_divisible_axis(shape, expected):
    spec = mesh_lib.fsdp_spec(shape, n_devices=8, min_size=16)
    assert tuple(spec) == expected


def test_make_mesh_rejects_too_many_devices():
    with pytest.raises(ValueError, match="num_devices"):
        mesh_lib.make_mesh(jax.device_count() + 1)


def _one_step(batch, microbatches, num_devices, skip_nonfinite=False):
    mesh = mesh_lib.make_mesh(num_devices)
    opt = make_optimizer(OptimConfig(weight_decay=0.1))
    state, static, shardings = step_lib.init_train_state(
        build_tiny(TinyConfig(d_model=16)), opt, jax.random.key(3), mesh)
    train_step = step_lib.make_train_step(static, opt, shardings, mesh, microbatches=microbatches,
                                          skip_nonfinite=skip_nonfinite)
    before = jax.tree.map(np.asarray, state.params)
    state, metrics = train_step(state, mesh_lib.put_batch(batch, mesh_lib.batch_sharding(mesh)),
                                1e-2)
    return before, state, {k: float(v) for k, v in metrics.items()}


@pytest.mark.parametrize("num_devices", [1, 2])
def test_microbatches_give_the_whole_batch_result(num_devices):
    """Gradient accumulation over 4 microbatches = one batch of 16, also when the microbatches
    carry very different loss weights (normalised by the whole batch's weight)."""
    rng = np.random.default_rng(5)
    batch = next(FakeIterator(batch_size=16, seq_len=16, seed=int(rng.integers(1 << 30))))
    # Microbatch m holds rows m, m+4, ...: give them weights 0, 0.1, 1 and 3.
    scale = np.array([0.0, 0.1, 1.0, 3.0], np.float32)[np.arange(16) % 4][:, None]
    batch = batch._replace(weights_BL=(batch.weights_BL + 0.2) * scale)
    _, whole, m_whole = _one_step(batch, 1, num_devices)
    _, micro, m_micro = _one_step(batch, 4, num_devices)
    np.testing.assert_allclose(m_micro["loss"], m_whole["loss"], rtol=1e-5)
    np.testing.assert_allclose(m_micro["grad_norm"], m_whole["grad_norm"], rtol=1e-5)
    assert m_micro["loss_weight"] == pytest.approx(float(batch.weights_BL.sum()), rel=1e-6)
    for a, b in zip(jax.tree.leaves(micro.params), jax.tree.leaves(whole.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    # A float64 reference of the whole-batch loss, from the logits.
    model = eqx.combine(jax.tree.map(jnp.asarray, _one_step(batch, 1, 1)[0]),
                        step_lib.model_static(build_tiny(TinyConfig(d_model=16)),
                                              jax.random.key(3)))
    logits = np.asarray(model(jnp.asarray(batch.tokens_BL)), np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, batch.targets_BL[..., None], -1)[..., 0]
    ref = (batch.weights_BL * nll).sum() / batch.weights_BL.sum()
    np.testing.assert_allclose(m_micro["loss"], ref, rtol=1e-5)


def test_skip_nonfinite_leaves_the_state_unchanged():
    batch = next(FakeIterator(batch_size=8, seq_len=16, seed=2))
    bad = batch._replace(weights_BL=batch.weights_BL * np.float32("nan"))
    before, state, metrics = _one_step(bad, 1, 1, skip_nonfinite=True)
    assert metrics["skipped"] == 1 and int(state.step) == 1
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(before)):
        np.testing.assert_array_equal(np.asarray(a), b)
    before, state, metrics = _one_step(batch, 1, 1, skip_nonfinite=True)
    assert metrics["skipped"] == 0
    assert any(not np.array_equal(np.asarray(a), b)
               for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(before)))
