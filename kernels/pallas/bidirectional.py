"""BiMamba's two scans (forward and reverse), for both RCPS strands, in one kernel launch.

Glossary: S scan direction (0 forward, 1 reverse), B batch, L length, D channels, N state size.

Caduceus runs, per layer, a forward scan and a reverse scan on the sequence x and on its reverse
complement rc(x): four scans. Folding the strands into the batch axis (rows 0..B/2 are x, the
rest rc(x)) and the directions into a leading axis S makes them one launch whose grid has an
extra direction axis: direction 1 walks its chunks and rows backwards by index arithmetic, so
nothing is flipped in memory. All inputs are in the sequence's own coordinates, including the
reverse direction's (its conv output and projections are not flipped).

What the two directions share is read by both without a copy: the gate z (BiMamba ties in_proj,
so both directions gate with the same z) and the output, which is the sum of the two scans (the
tied out_proj is linear, so out_proj(y_fwd) + out_proj(y_rev) == out_proj(y_fwd + y_rev)); the
backward reads that one cotangent for both directions.
"""

from __future__ import annotations

from typing import Literal

from jaxtyping import Array, Float

from kernels.pallas.plan import Backend, check_inputs, make_plan
from kernels.pallas.selective_scan import scan_stacked


def check_stacked(u, delta, A, B, C, D, z, delta_bias):
    """One-line ValueErrors for inputs without a leading direction axis of 2, or wrong layouts."""
    if u.ndim != 4 or u.shape[0] != 2:
        raise ValueError(f"u must be (2 directions, batch, length, channels), got {u.shape}")
    for name, x in (("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D),
                    ("delta_bias", delta_bias)):  # fmt: skip
        if x is not None and x.shape[0] != 2:
            raise ValueError(f"{name} needs a leading direction axis of 2, got shape {x.shape}")
    pick = lambda x: None if x is None else x[0]  # noqa: E731
    check_inputs(u[0], delta[0], A[0], B[0], C[0], pick(D), z, pick(delta_bias))


def bidirectional_scan_pallas(
    u: Float[Array, "2 B L D"],
    delta: Float[Array, "2 B L D"],
    A: Float[Array, "2 D N"],
    B: Float[Array, "2 B L N"],
    C: Float[Array, "2 B L N"],
    D: Float[Array, "2 D"] | None = None,
    z: Float[Array, "B L D"] | None = None,
    delta_bias: Float[Array, "2 D"] | None = None,
    delta_softplus: bool = False,
    *,
    chunk: int | None = None,
    block_d: int | None = None,
    backend: Backend | None = None,
    backward: Literal["kernel", "reference"] = "kernel",
) -> Float[Array, "B L D"]:
    """scan(direction 0, forward) + scan(direction 1, reverse), gated by the shared z.

    Same contract as `nanodna.ops.scan.bidirectional_scan_ref`; `backend`, `chunk`, `block_d`
    and `backward` as in selective_scan_pallas. Raises ValueError for wrong shapes."""
    check_stacked(u, delta, A, B, C, D, z, delta_bias)
    plan = make_plan(
        n_dir=2, reverse=False, L=u.shape[2], D=u.shape[3], softplus=bool(delta_softplus),
        has_D=D is not None, has_z=z is not None, has_bias=delta_bias is not None,
        chunk=chunk, block_d=block_d, backend=backend, backward=backward,
    )  # fmt: skip
    return scan_stacked(plan, u, delta, A, B, C, D, z, delta_bias)
