"""Checkpoints: save/restore round trip (state, iterator state, RNG), retention, labels."""


import jax
import numpy as np
import pytest

from nanodna.checkpoint import CheckpointError, resolve
from nanodna.config import OptimConfig
from nanodna.training import mesh as mesh_lib
from nanodna.training import step as step_lib
from nanodna.training.checkpoint import Checkpointer, read_labels
from nanodna.training.optim import make_optimizer
from tests._fakes import FakeIterator, build_tiny


def _trained_state(mesh, n_steps=2, seed=5, fsdp=False):
    opt = make_optimizer(OptimConfig())
    build = build_tiny()
    state, static, shardings = step_lib.init_train_state(
        build, opt, jax.random.key(seed), mesh, fsdp=fsdp, fsdp_min_size=64)
    train_step = step_lib.make_train_step(static, opt, shardings, mesh)
    it = FakeIterator(seed=seed)
    for _ in range(n_steps):
        batch = mesh_lib.put_batch(next(it), mesh_lib.batch_sharding(mesh))
        state, _ = train_step(state, batch, 1e-2)
    return state, shardings, it, build, opt


def test_round_trip_restores_state_iterator_and_rng(tmp_path):
    mesh = mesh_lib.make_mesh(8)
    state, shardings, it, build, opt = _trained_state(mesh, fsdp=True)
    assert mesh_lib.DATA in state.params.mlp.weight.sharding.spec  # restored shard by shard
    rng = jax.random.key(np.random.randint(1 << 30))
    ckpt = Checkpointer(str(tmp_path / "ckpt"), keep=2)
    ckpt.save(2, state, it.get_state(), rng, total_steps=77)
    ckpt.wait()

    shapes = step_lib.state_shapes(build, opt, jax.random.key(0))
    target = step_lib.restore_target(shapes, shardings)
    restored, data_state, rng2, meta = ckpt.restore(2, target)
    ckpt.close()
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert a.sharding == b.sharding
    assert int(restored.step) == 2
    assert data_state == it.get_state()
    assert meta["step"] == 2 and meta["total_steps"] == 77
    np.testing.assert_array_equal(jax.random.key_data(rng), jax.random.key_data(rng2))
    # The restored iterator continues with the batch the original would have produced next.
    it2 = FakeIterator(seed=0)
    it2.set_state(data_state)
    np.testing.assert_array_equal(next(it2).tokens_BL, next(it).tokens_BL)


def test_keeps_last_n_plus_labelled_steps(tmp_path):
    mesh = mesh_lib.make_mesh(1)
    state, *_ = _trained_state(mesh, n_steps=1)
    ckpt = Checkpointer(str(tmp_path / "checkpoints"), keep=2, labels={3: "hot", 4: "cold"})
    for s in range(1, 8):
        ckpt.save(s, state, {"index": s}, jax.random.key(0))
    ckpt.close()
    assert ckpt.all_steps() == [3, 4, 6, 7]
    assert read_labels(str(tmp_path)) == {3: "hot", 4: "cold"}


def test_resolve_workdir_and_step_folder(tmp_path):
    for s in (5, 120, 40):
        (tmp_path / "checkpoints" / str(s)).mkdir(parents=True)
    (tmp_path / "checkpoints" / "130.orbax-checkpoint-tmp-1").mkdir()  # still being written
    (tmp_path / "config.json").write_text("{}")
    assert resolve(tmp_path) == (str(tmp_path), 120)  # a workdir: its latest finished step
    assert resolve(str(tmp_path / "checkpoints" / "40") + "/") == (str(tmp_path), 40)
    with pytest.raises(CheckpointError, match="not a training workdir"):
        resolve(tmp_path / "checkpoints")
    with pytest.raises(CheckpointError, match="no checkpoint at step 7"):
        resolve(tmp_path / "checkpoints" / "7")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no checkpoint saved yet"):
        resolve(tmp_path / "empty")
