"""The device mesh and where each array lives on it.

One mesh axis, "data": the batch is split over it; parameters and optimizer state are either
replicated on every device (plain data parallelism) or, with FSDP, each large array is split
along its largest dimension that the device count divides, and XLA inserts the all-gathers and
reduce-scatters.

The axis is of type Auto on purpose. Current JAX's `jax.make_mesh` defaults to Explicit axes,
where shardings become part of every array's type and each op must say how its output is
sharded; our models are written as ordinary single-device code, and Auto lets the compiler
(GSPMD / Shardy) propagate the input and output shardings we pin on the jitted step.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from nanodna.config import ConfigError
from nanodna.data.batch import Batch

DATA = "data"


def maybe_initialize_distributed(enabled: bool) -> None:
    """Join a multi-process job.

    On a cluster jax reads the coordinator, process count and index from its environment
    (SLURM, Open MPI, TPU pods). Set by hand (e.g. several processes on one machine):
    NANODNA_COORDINATOR=host:port, NANODNA_NUM_PROCESSES, NANODNA_PROCESS_ID. On CPUs the
    cross-process collectives go through gloo (jax's CPU default has none).
    """
    env = os.environ
    if not (enabled or env.get("NANODNA_DISTRIBUTED") == "1" or "NANODNA_COORDINATOR" in env):
        return
    if env.get("JAX_PLATFORMS", "").startswith("cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if "NANODNA_COORDINATOR" in env:
        jax.distributed.initialize(env["NANODNA_COORDINATOR"],
                                   num_processes=int(env["NANODNA_NUM_PROCESSES"]),
                                   process_id=int(env["NANODNA_PROCESS_ID"]))
    else:
        jax.distributed.initialize()


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh named "data" over the first `num_devices` devices (all if None)."""
    devices = jax.devices()
    n = len(devices) if num_devices is None else num_devices
    if not 1 <= n <= len(devices):
        raise ValueError(f"train.num_devices={n}, but {len(devices)} device(s) are available")
    return Mesh(np.array(devices[:n]), (DATA,), axis_types=(AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over "data", the rest whole."""
    return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def fsdp_spec(shape: tuple[int, ...], n_devices: int, min_size: int) -> P:
    """Shard the largest axis that n_devices divides; small or indivisible arrays: replicate."""
    if n_devices == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % n_devices == 0:
            spec = [None] * len(shape)
            spec[axis] = DATA
            return P(*spec)
    return P()


def state_shardings(abstract_tree, mesh: Mesh, fsdp: bool, min_size: int):
    """A NamedSharding for each array leaf of `abstract_tree` (ShapeDtypeStructs or arrays).

    The rule depends on the shape only, so AdamW's moments get the sharding of their parameter.
    """
    n = mesh.devices.size

    def one(x):
        return NamedSharding(mesh, fsdp_spec(x.shape, n, min_size) if fsdp else P())

    return jax.tree.map(one, abstract_tree)


def put_batch(batch: Batch, sharding: NamedSharding) -> Batch:
    """Host batch -> global device arrays. Each process passes its own slice of the global
    batch (the data stream yields per-process batches), so this works on one or many hosts."""
    return Batch(*(jax.make_array_from_process_local_data(sharding, x) for x in batch))


def check_batch(batch: Batch, mesh: Mesh, microbatches: int = 1) -> None:
    """One-line errors for batches the mesh cannot split (instead of a deep sharding error).

    Raises ConfigError when the per-process batch size is not divisible by the local devices
    (times train.microbatches), TypeError when the tokens are not integers.
    """
    n = mesh.devices.size // jax.process_count()
    B = batch.tokens_BL.shape[0]
    if B % n:
        raise ConfigError(f"batch size {B} per process is not divisible by its {n} local "
                          "device(s): change data.batch_size or train.num_devices")
    if microbatches < 1 or B % (n * microbatches):
        raise ConfigError(f"batch size {B} per process is not divisible by train.microbatches="
                          f"{microbatches} x {n} local device(s)")
    if not np.issubdtype(batch.tokens_BL.dtype, np.integer):
        raise TypeError(f"batch tokens must be integers, got {batch.tokens_BL.dtype}")
