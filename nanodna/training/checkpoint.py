"""Training checkpoints: Orbax, asynchronous, with the data iterator's position saved alongside.

    workdir/
      config.json                 the resolved Config (nanodna.checkpoint.write_config; a
                                  resume is checked against it first: check_resume)
      schedule.json               the run length fitted to train.max_minutes, if one was
                                  (training/loop.py): resumed runs continue it
      checkpoints/<step>/         one Orbax checkpoint after <step> updates, items:
          params                  the model's float arrays (what eval needs)
          opt_state               AdamW moments and counters
          data                    the data iterator's state (JSON): resume at the same batch
          meta                    {"step", "rng", "total_steps"} (JSON)
      checkpoints/labels.json     {"<step>": "hot" | "cold"} for WSD-S branch points

Retention is ours, not Orbax's: the newest `keep` checkpoints plus every labelled one. (Orbax's
preservation-policy API has changed between versions; deleting by hand is stable.)

Loading a model for evaluation, and which step a path stands for, live one level down in
nanodna/checkpoint.py (eval.py uses them without importing the training code).

Saving is asynchronous: `save` returns once the arrays are copied off the live state, and files
are written in the background while training continues. Killed mid-write (kill -9, power loss),
a checkpoint is left as a temporary folder that resuming ignores and deletes: the run resumes
from the last complete checkpoint (tests/test_resume.py).
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from nanodna import atomic
from nanodna.checkpoint import CHECKPOINTS
from nanodna.training.step import TrainState


class Checkpointer:
    """Periodic async checkpoints of a TrainState + iterator state under `directory`."""

    def __init__(self, directory: str, keep: int = 3, labels: dict[int, str] | None = None):
        self.directory = os.path.abspath(directory)
        self.keep = keep
        self.labels = dict(labels or {})  # step -> "hot" / "cold": never deleted
        # A write killed mid-way leaves only Orbax's temporary folder (<step>.orbax-checkpoint-
        # tmp...: the rename to <step> is the last act of a write); it is never a step that
        # latest_step() returns, and cleanup_tmp_directories deletes it when the run restarts.
        options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=True,
                                               cleanup_tmp_directories=True)
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
        path = os.path.join(self.directory, "labels.json")
        atomic.write_text(path, json.dumps(done, indent=1))


def read_labels(workdir: str) -> dict[int, str]:
    """{step: "hot" | "cold"} of a workdir's labelled checkpoints ({} if none)."""
    path = os.path.join(workdir, CHECKPOINTS, "labels.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return {int(k): v for k, v in json.load(f).items()}
