"""The Pallas scan under a sharded jit: shard_map over the batch axis of a Mesh.

Glossary: B batch, L length, D channels, N state size.

A pallas_call is one device's program; XLA cannot partition it. shard_map hands each device
its slice of the batch (the scan never mixes batch rows) and the replicated parameters, so the
kernel runs unchanged per device; the parameter gradients are summed across devices by
shard_map's transpose.
"""

from __future__ import annotations


import jax
from jax.sharding import Mesh, PartitionSpec as P
from jaxtyping import Array, Float

from kernels.pallas.selective_scan import selective_scan_pallas


def sharded_selective_scan(
    mesh: Mesh,
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
    n_shards = 1
    for name in (axis_name,) if isinstance(axis_name, str) else axis_name:
        if name not in mesh.shape:
            raise ValueError(f"mesh has axes {tuple(mesh.shape)}, not {name!r}")
        n_shards *= mesh.shape[name]
    if u.shape[0] % n_shards:
        raise ValueError(f"batch {u.shape[0]} does not split over {n_shards} devices")
    batch, rep = P(axis_name), P()
    # None inputs stay out of the mapped call: shard_map wants a spec per array.
    named = dict(D=D, z=z, delta_bias=delta_bias)
    present = {k: v for k, v in named.items() if v is not None}
    specs = dict(D=rep, z=batch, delta_bias=rep)

    def local(u, delta, A, B, C, extra):
        return selective_scan_pallas(
            u, delta, A, B, C, **extra, delta_softplus=delta_softplus, reverse=reverse,
            **kernel_kw,
        )  # fmt: skip

    mapped = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(batch, batch, rep, batch, batch, {k: specs[k] for k in present}),
        out_specs=batch,
        check_vma=False,  # pallas_call has no replication rule; the specs above say it all
    )
    return mapped(u, delta, A, B, C, present)
