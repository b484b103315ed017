"""The simulated genome set as the training default: where its parts live, and making it.

A config that names a simulator preset trains on `<sim_dir>/store` and evaluates on the small
conservation table `<sim_dir>/eval/conservation_small.tsv`; the set is generated the first time
it is asked for. No JAX here: with several hosts the caller lets one host generate (`leader`)
and makes the others wait at a barrier.
"""

from __future__ import annotations

import os

from nanodna.sim.simulate import simulate


def simulated_paths(sim_dir: str) -> tuple[str, str]:
    """(genome store folder, small conservation eval table) of the simulated set in sim_dir."""
    return os.path.join(sim_dir, "store"), os.path.join(sim_dir, "eval", "conservation_small.tsv")


def ensure_simulated(sim_dir: str, preset: str, seed: int, *, leader: bool = True) -> bool:
    """Generate the simulated set in sim_dir if its store manifest is missing and this process
    is the `leader`; print one line saying so. Returns whether it generated the set.

    Raises a UserError (one line) for an unknown preset or a non-empty sim_dir that is not a
    simulated data set.
    """
    store_dir, _ = simulated_paths(sim_dir)
    if os.path.exists(os.path.join(store_dir, "manifest.json")) or not leader:
        return False
    print(f"simulated genome set '{preset}' (seed {seed}) not found in {sim_dir}: generating it")
    simulate(sim_dir, seed=seed, preset=preset, overwrite=True)
    return True
