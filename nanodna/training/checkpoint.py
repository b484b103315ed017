"""Checkpoints: Orbax, asynchronous, with the data iterator's position saved alongside.

    workdir/
      config.json                 the resolved Config (nanodna.config.to_dict)
      checkpoints/<step>/         one Orbax checkpoint after <step> updates, items:
          params                  the model's float arrays (what eval needs)
          opt_state               AdamW moments and counters
          data                    the data iterator's state (JSON): resume at the same batch
          meta                    {"step", "rng", "total_steps"} (JSON)
      checkpoints/labels.json     {"<step>": "hot" | "cold"} for WSD-S branch points

Retention is ours, not Orbax's: the newest `keep` checkpoints plus every labelled one. (Orbax's
preservation-policy API has changed between versions; deleting by hand is stable.)

Saving is asynchronous: `save` returns once the arrays are copied off the live state, and files
are written in the background while training continues.
"""

from __future__ import annotations

import json
import os

import equinox as eqx
import jax
import numpy as np
import orbax.checkpoint as ocp

from nanodna.training.step import TrainState, _is_float, model_static


class Checkpointer:
    """Periodic async checkpoints of a TrainState + iterator state under `directory`."""

    def __init__(self, directory: str, keep: int = 3, labels: dict[int, str] | None = None):
        self.directory = os.path.abspath(directory)
        self.keep = keep
        self.labels = dict(labels or {})  # step -> "hot" / "cold": never deleted
        options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: TrainState, data_state: dict, rng: jax.Array,
             total_steps: int | None = None) -> None:
        self._prune(incoming=1)
        # The train step donates the state's buffers, and on CPU Orbax's "copy to host" can
        # alias them; a fresh on-device copy keeps the background write safe.
        state = jax.tree.map(lambda x: x.copy(), state)
        meta = {"step": int(step), "rng": np.asarray(jax.random.key_data(rng)).tolist(),
                "total_steps": total_steps}  # the schedule's length (may be fitted to a budget)
        self.manager.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(state.params),
                opt_state=ocp.args.StandardSave((state.opt_state, state.step)),
                data=ocp.args.JsonSave(data_state),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )
        if step in self.labels and jax.process_index() == 0:
            self._write_labels(upto=step)

    def restore(self, step: int, target: TrainState) -> tuple[TrainState, dict, jax.Array, dict]:
        """Restore into `target` (ShapeDtypeStructs with shardings):
        (state, data iterator state, RNG key, meta dict)."""
        r = self.manager.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(target.params),
                opt_state=ocp.args.StandardRestore((target.opt_state, target.step)),
                data=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore(),
            ),
        )
        opt_state, step_array = r.opt_state
        rng = jax.random.wrap_key_data(np.asarray(r.meta["rng"], dtype=np.uint32))
        return TrainState(r.params, opt_state, step_array), r.data, rng, dict(r.meta)

    def wait(self) -> None:
        """Block until every background write has finished."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self._prune(incoming=0)
        self.manager.close()

    def _prune(self, incoming: int) -> None:
        """Delete unlabelled checkpoints beyond the newest `keep` (counting `incoming` new ones)."""
        self.manager.wait_until_finished()
        periodic = [s for s in self.all_steps() if s not in self.labels]
        n_drop = len(periodic) + incoming - self.keep
        for s in periodic[: max(n_drop, 0)]:
            self.manager.delete(s)

    def _write_labels(self, upto: int) -> None:
        done = {str(s): label for s, label in sorted(self.labels.items()) if s <= upto}
        with open(os.path.join(self.directory, "labels.json"), "w") as f:
            json.dump(done, f, indent=1)


def read_labels(workdir: str) -> dict[int, str]:
    """{step: "hot" | "cold"} of a workdir's labelled checkpoints ({} if none)."""
    path = os.path.join(workdir, "checkpoints", "labels.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return {int(k): v for k, v in json.load(f).items()}


def _resolve(path: str) -> tuple[str, int | None]:
    """(workdir, step or None) of a workdir or of one of its step folders."""
    path = os.path.abspath(path.rstrip("/"))
    if os.path.exists(os.path.join(path, "config.json")):
        return path, None
    workdir = os.path.dirname(os.path.dirname(path))
    name = os.path.basename(path)
    if name.isdigit() and os.path.exists(os.path.join(workdir, "config.json")):
        return workdir, int(name)
    raise FileNotFoundError(
        f"{path}: not a training workdir (no config.json) nor a checkpoints/<step> folder of one"
    )


def load_for_eval(path: str):
    """(model, Config) from a workdir (its latest checkpoint) or a checkpoints/<step> folder.

    Only the params are read; the model is rebuilt from the saved config.json on one device.
    """
    from nanodna.config import from_dict  # noqa: PLC0415 (keep config's lazy imports lazy)
    from nanodna.models import build_model  # noqa: PLC0415

    workdir, step = _resolve(path)
    with open(os.path.join(workdir, "config.json")) as f:
        cfg = from_dict(json.load(f))
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                                    options=ocp.CheckpointManagerOptions(read_only=True))
    step = manager.latest_step() if step is None else step
    if step is None or step not in manager.all_steps():
        raise FileNotFoundError(f"{workdir}: no checkpoint" + (f" at step {step}" if step else ""))

    def build(key):
        return build_model(cfg.model, key)

    key = jax.random.key(cfg.train.seed)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = eqx.filter(eqx.filter_eval_shape(build, key), _is_float)
    target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                          abstract)
    restored = manager.restore(
        step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target))
    )
    manager.close()
    return eqx.combine(restored.params, model_static(build, key)), cfg
