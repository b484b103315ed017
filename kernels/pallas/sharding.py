"""The Pallas scans under a sharded jit: shard_map over the batch axis of a Mesh.

Glossary: S directions, B batch, L length, D channels, N state size.

A pallas_call is one device's program; XLA cannot partition it. shard_map hands each device
its slice of the batch (the scan never mixes batch rows) and the replicated parameters, so the
kernel runs unchanged per device; the parameter gradients are summed across devices by
shard_map's transpose.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from jax.sharding import AbstractMesh, Mesh
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Float

from kernels.pallas.bidirectional import bidirectional_scan_pallas
from kernels.pallas.selective_scan import selective_scan_pallas

ARG_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def shards(mesh, axis_name: str | tuple[str, ...]) -> int:
    """Devices along `axis_name` (one name or several) of `mesh`; ValueError if one is absent."""
    n = 1
    for name in (axis_name,) if isinstance(axis_name, str) else axis_name:
        if name not in mesh.shape:
            raise ValueError(f"mesh has axes {tuple(mesh.shape)}, not {name!r}")
        n *= mesh.shape[name]
    return n


def _shard_batch(kernel: Callable, mesh, axis_name, arrays: dict, batch_dim: dict, **flags):
    """kernel(**arrays, **flags) with each array split along batch_dim[name] (None: replicated).

    The output (B L D) is split along its batch axis. None arrays stay out of the mapped call
    (shard_map wants a spec per array).
    """
    present = {k: v for k, v in arrays.items() if v is not None}
    n = shards(mesh, axis_name)
    Bz = present["u"].shape[batch_dim["u"]]
    if Bz % n:
        raise ValueError(f"batch {Bz} does not split over {n} devices")
    spec = lambda d: P() if d is None else P(*([None] * d + [axis_name]))  # noqa: E731
    mapped = jax.shard_map(
        lambda arrays: kernel(**arrays, **flags),
        mesh=mesh,
        in_specs=({k: spec(batch_dim[k]) for k in present},),
        out_specs=P(axis_name),
        check_vma=False,  # pallas_call has no replication rule; the specs above say it all
    )
    return mapped(present)


def sharded_selective_scan(
    mesh: Mesh | AbstractMesh,  # AbstractMesh: under jit, as nanodna.ops passes it
    axis_name: str | tuple[str, ...],
    u: Float[Array, "B L D"],
    delta: Float[Array, "B L D"],
    A: Float[Array, "D N"],
    B: Float[Array, "B L N"],
    C: Float[Array, "B L N"],
    D: Float[Array, " D"] | None = None,
    z: Float[Array, "B L D"] | None = None,
    delta_bias: Float[Array, " D"] | None = None,
    delta_softplus: bool = False,
    reverse: bool = False,
    **kernel_kw,
) -> Float[Array, "B L D"]:
    """`selective_scan_pallas` with the batch split over mesh axis `axis_name`."""
    arrays = dict(zip(ARG_NAMES, (u, delta, A, B, C, D, z, delta_bias)))
    batch_dim = dict(u=0, delta=0, A=None, B=0, C=0, D=None, z=0, delta_bias=None)
    return _shard_batch(selective_scan_pallas, mesh, axis_name, arrays, batch_dim,
                        delta_softplus=delta_softplus, reverse=reverse, **kernel_kw)  # fmt: skip


def sharded_bidirectional_scan(
    mesh: Mesh | AbstractMesh,  # AbstractMesh: under jit, as nanodna.ops passes it
    axis_name: str | tuple[str, ...],
    u: Float[Array, "2 B L D"],
    delta: Float[Array, "2 B L D"],
    A: Float[Array, "2 D N"],
    B: Float[Array, "2 B L N"],
    C: Float[Array, "2 B L N"],
    D: Float[Array, "2 D"] | None = None,
    z: Float[Array, "B L D"] | None = None,
    delta_bias: Float[Array, "2 D"] | None = None,
    delta_softplus: bool = False,
    **kernel_kw,
) -> Float[Array, "B L D"]:
    """`bidirectional_scan_pallas` with the batch split over mesh axis `axis_name`."""
    arrays = dict(zip(ARG_NAMES, (u, delta, A, B, C, D, z, delta_bias)))
    batch_dim = dict(u=1, delta=1, A=None, B=1, C=1, D=None, z=0, delta_bias=None)
    return _shard_batch(bidirectional_scan_pallas, mesh, axis_name, arrays, batch_dim,
                        delta_softplus=delta_softplus, **kernel_kw)  # fmt: skip
