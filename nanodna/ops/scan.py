"""Selective scan (Mamba v1): one entry point, several implementations.

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t        (per channel d, state n)
    y_t = sum_n C_t[n] h_t[n] + D * u_t ;  y_t *= silu(z_t) if z is given

Layout is (batch, length, channels), mamba-ssm's semantics otherwise. The state is float32
for float32 / bfloat16 inputs (float64 stays float64, for gradient checks); the output has
u's dtype.

Glossary: B batch, L length, D channels (d_inner), N state size (d_state), T chunk length,
K number of chunks, S scan direction (0 forward, 1 reverse).
Note the clash mamba-ssm makes us live with: the arrays B (input matrix, B L N) and D (skip,
D) are named after the paper; the axis letters in names like u_BLD are the glossary above.

Implementations (`impl=`):
    "ref"      lax.scan over time; the ground truth every other path is tested against.
    "chunked"  XLA path: the sequence is cut into chunks, each chunk scanned in parallel with
               an associative scan, the state carried between chunks by lax.scan.
    "chunked_seq"  the same chunks, each run as a short unrolled loop: fewer passes over
               memory than the associative scan, which makes it the fastest form on CPU.
    "chunked_vjp"  chunked_seq's forward with a hand-written backward (ops/scan_vjp.py): only
               chunk-boundary states are saved, the adjoint recurrence runs in reverse.
    "fwd"      inference only (ops/scan_fwd.py): one plain loop over the whole sequence that
               keeps nothing for a backward pass; what scoring runs on CPU without the kernel.
    "cpu"      the fused C++ kernel in kernels/cpu (XLA FFI, forward and hand-written backward,
               a group of channels' states in registers), built on first use with the
               machine's C++ compiler; under shard_map when the batch is split over a mesh.
               BiMamba's whole block (bias + softplus, both scans, skip, gate) is one kernel
               pass, and its backward one kernel call (`_gated_cpu`).
    "assoc"    one associative scan over the whole sequence (for benchmarks).
    "pallas"   the Pallas kernel in kernels/pallas (GPU / TPU, or interpret mode on CPU); when
               the inputs are split over a multi-device mesh it runs per device under shard_map.
    "auto"     pallas on GPU/TPU; on CPU "cpu", or chunked_vjp when the kernel cannot be built
               (no C++ compiler: kernels.cpu.error() says why).

The references the kernels are tested against live here: `selective_scan_ref` and
`bidirectional_scan_ref`; `random_scan_inputs` makes inputs for every scan test and benchmark.

Both chunked paths rematerialise each chunk in the backward pass, so training memory is
~ (B, T, D, N) for the scan instead of the reference's (B, L, D, N).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jaxtyping import Array, Float

from kernels import cpu as cpu_kernel
from kernels.pallas import (
    bidirectional_scan_pallas,
    selective_scan_pallas,
    sharded_bidirectional_scan,
    sharded_selective_scan,
)
from nanodna.ops import scan_fwd, scan_vjp

ARG_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")  # the scans' array arguments


def state_dtype(dtype) -> jnp.dtype:
    """float32 for float32 / bfloat16 / float16 inputs; float64 stays float64 (gradient checks)."""
    return jnp.promote_types(dtype, jnp.float32)


def _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """Cast to the state dtype and apply the delta bias / softplus, as every implementation does."""
    f32 = state_dtype(u.dtype)
    delta = delta.astype(f32)
    if delta_bias is not None:
        delta = delta + delta_bias.astype(f32)
    if delta_softplus:
        delta = jax.nn.softplus(delta)
    return u.astype(f32), delta, A.astype(f32), B.astype(f32), C.astype(f32)


def _finish(y_BLD, u, D, z, out_dtype):
    """Skip connection and gate, shared by every implementation."""
    f32 = y_BLD.dtype
    if D is not None:
        y_BLD = y_BLD + u.astype(f32) * D.astype(f32)
    if z is not None:
        y_BLD = y_BLD * jax.nn.silu(z.astype(f32))
    return y_BLD.astype(out_dtype)


def selective_scan_ref(
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
) -> Float[Array, "B L D"]:
    """Reference: lax.scan over time, state h_BDN in float32. Slow but obviously right."""
    u32, delta32, A32, B32, C32 = _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    Bsz, _, Dch = u.shape
    N = A.shape[-1]

    def step(h_BDN, xs):
        u_BD, dt_BD, B_BN, C_BN = xs
        dA_BDN = jnp.exp(dt_BD[:, :, None] * A32[None])
        h_BDN = dA_BDN * h_BDN + (dt_BD * u_BD)[:, :, None] * B_BN[:, None, :]
        y_BD = jnp.einsum("bdn,bn->bd", h_BDN, C_BN)
        return h_BDN, y_BD

    xs = tuple(jnp.swapaxes(a, 0, 1) for a in (u32, delta32, B32, C32))  # time-major
    h0 = jnp.zeros((Bsz, Dch, N), u32.dtype)
    _, y_LBD = jax.lax.scan(step, h0, xs, reverse=reverse)
    return _finish(jnp.swapaxes(y_LBD, 0, 1), u, D, z, u.dtype)


# ---------------------------------------------------------------------------------------------
# Parallel forms. The recurrence h_t = a_t * h_{t-1} + b_t composes associatively:
# (a1, b1) then (a2, b2) is (a1 * a2, a2 * b1 + b2), so prefixes can be computed in log depth.


def _combine(left, right):
    a_l, b_l = left
    a_r, b_r = right
    return a_l * a_r, a_r * b_l + b_r


def _chunk_states(dt_BTD, u_BTD, A_DN, B_BTN, h0_BDN):
    """All states of one chunk, h_BTDN, from the state before it: the (B, T, D, N) working set."""
    dA_BTDN = jnp.exp(dt_BTD[..., None] * A_DN)
    dBu_BTDN = (dt_BTD * u_BTD)[..., None] * B_BTN[:, :, None, :]
    decay_BTDN, h_BTDN = jax.lax.associative_scan(_combine, (dA_BTDN, dBu_BTDN), axis=1)
    return h_BTDN + decay_BTDN * h0_BDN[:, None]


def _scan_assoc(u32, delta32, A32, B32, C32):
    """One associative scan over the whole sequence: materialises (B, L, D, N). Benchmarks only."""
    h0_BDN = jnp.zeros((u32.shape[0], u32.shape[2], A32.shape[1]), u32.dtype)
    h_BLDN = _chunk_states(delta32, u32, A32, B32, h0_BDN)
    return jnp.einsum("bldn,bln->bld", h_BLDN, C32)


def _split_chunks(arrays, T):
    """(B, L, X) arrays -> (n_chunks, B, T, X), zero-padded at the end.

    Padding with delta = 0 is a no-op step (decay 1, input 0) that only touches outputs past
    L, which are dropped.
    """
    Bsz, L = arrays[0].shape[:2]
    n_chunks = -(-L // T)
    pad = n_chunks * T - L
    out = []
    for a in arrays:
        a = jnp.pad(a, ((0, 0), (0, pad), (0, 0)))
        out.append(jnp.moveaxis(a.reshape(Bsz, n_chunks, T, a.shape[-1]), 1, 0))
    return out


def _merge_chunks(y_KBTD, L):
    K, Bsz, T, Dch = y_KBTD.shape
    return jnp.moveaxis(y_KBTD, 0, 1).reshape(Bsz, K * T, Dch)[:, :L]


def _scan_chunked(u32, delta32, A32, B32, C32, chunk: int, sequential: bool):
    """Chunks of T steps, the state carried across chunks by lax.scan.

    Inside a chunk the recurrence runs either in parallel (associative scan: log-depth, the
    form accelerators like) or as a short unrolled loop (fewest passes over memory: the form a
    CPU likes). Either way the chunk body is rematerialised in the backward pass, as
    mamba-ssm's kernel recomputes its chunks, so autodiff stores only chunk-boundary states:
    memory ~ (B, T, D, N) live at once, never (B, L, D, N).
    """
    Bsz, L, Dch = u32.shape
    T = min(chunk, L)
    xs = _split_chunks((u32, delta32, B32, C32), T)

    def step(h_BDN, xs_t):
        u_BD, dt_BD, B_BN, C_BN = xs_t
        h_BDN = jnp.exp(dt_BD[..., None] * A32) * h_BDN + (dt_BD * u_BD)[..., None] * B_BN[:, None]
        return h_BDN, jnp.einsum("bdn,bn->bd", h_BDN, C_BN)

    @jax.checkpoint
    def chunk_step(h_BDN, xs_chunk):
        u_BTD, dt_BTD, B_BTN, C_BTN = xs_chunk
        if sequential:
            xs_T = tuple(jnp.swapaxes(a, 0, 1) for a in xs_chunk)  # time-major
            h_BDN, y_TBD = jax.lax.scan(step, h_BDN, xs_T, unroll=SEQ_UNROLL)
            return h_BDN, jnp.swapaxes(y_TBD, 0, 1)
        h_BTDN = _chunk_states(dt_BTD, u_BTD, A32, B_BTN, h_BDN)
        return h_BTDN[:, -1], jnp.einsum("btdn,btn->btd", h_BTDN, C_BTN)

    h0_BDN = jnp.zeros((Bsz, Dch, A32.shape[1]), u32.dtype)
    _, y_KBTD = jax.lax.scan(chunk_step, h0_BDN, tuple(xs))
    return _merge_chunks(y_KBTD, L)


DEFAULT_CHUNK = 64  # chunk length T; see benchmarks/results_models.md for the sweep
SEQ_UNROLL = 4  # time steps per loop iteration in "chunked_seq"
IMPLS = ("auto", "ref", "chunked", "chunked_seq", "chunked_vjp", "fwd", "assoc", "pallas", "cpu")


def resolve_impl(impl: str) -> str:
    """'auto' -> 'pallas' on GPU/TPU; on CPU 'cpu' (the fused kernel, fastest there:
    benchmarks/bench_scan_vjp.py), or 'chunked_vjp' when the kernel cannot be built. Raises
    ValueError for an unknown name."""
    if impl not in IMPLS:
        raise ValueError(f"unknown selective-scan impl {impl!r}; choose one of {IMPLS}")
    if impl != "auto":
        return impl
    if jax.default_backend() in ("gpu", "cuda", "rocm", "tpu"):
        return "pallas"
    return "cpu" if cpu_kernel.available() else "chunked_vjp"


def _gated_cpu(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """BiMamba's whole scan block as kernels/cpu's gated op (one pass; its backward one call),
    or None where it does not apply: no skip, gate, bias or softplus, a batch split over a
    mesh, a state dtype other than float32, or shapes the gated kernel does not take."""
    if D is None or z is None or delta_bias is None or not delta_softplus:
        return None
    if state_dtype(u.dtype) != jnp.float32 or batch_mesh(u, batch_axis=1) is not None:
        return None
    args = [x.astype(jnp.float32) for x in (u, delta, A, B, C, delta_bias, D, z)]
    if not cpu_kernel.gated_supported(args[0], args[2]):
        return None
    return cpu_kernel.bidirectional_gated_scan_cpu(*args).astype(u.dtype)


def _scan_cpu(u, dt, A, B, C, reverse: bool = False, bidirectional: bool = False):
    """kernels/cpu's scan on (S, B, L, D) inputs, per device when the batch is split."""
    on_mesh = batch_mesh(u, batch_axis=1)
    if on_mesh is not None:
        return cpu_kernel.sharded_selective_scan_cpu(*on_mesh, u, dt, A, B, C, reverse,
                                                     bidirectional)
    return cpu_kernel.selective_scan_cpu(u, dt, A, B, C, reverse, bidirectional)


def batch_mesh(x: Array, batch_axis: int = 0):
    """(mesh, axis names) that x's batch axis is split over, or None on one device.

    A concrete array tells by its NamedSharding. A tracer under jit carries the (abstract) mesh
    its inputs were placed on, and its spec only for Explicit mesh axes: the batch is split
    over the axes the spec names or, when it names none (Auto axes, as training's mesh has),
    over every axis of that mesh, which is how training lays out its batches (data
    parallelism). A batch that does not divide over those devices stays whole (None).
    """
    sharding = getattr(x, "sharding", None)
    if sharding is None:  # a tracer
        sharding = jax.typeof(x).sharding
    if not isinstance(sharding, NamedSharding) or sharding.mesh.size <= 1:
        return None
    spec = tuple(sharding.spec) + (None,) * x.ndim
    axes = spec[batch_axis]
    if axes is None:
        if not isinstance(x, jax.core.Tracer):
            return None  # a concrete array replicated along its batch: nothing to split
        axes = tuple(sharding.mesh.axis_names)
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    # Axes already mapped by an enclosing shard_map are this program's own: not split again.
    axes = tuple(a for a in axes if a not in getattr(sharding.mesh, "manual_axes", ()))
    n = 1
    for name in axes:
        n *= sharding.mesh.shape[name]
    if n <= 1 or x.shape[batch_axis] % n:
        return None
    return sharding.mesh, axes


def selective_scan(
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
    impl: str = "auto",
    chunk: int = DEFAULT_CHUNK,
) -> Float[Array, "B L D"]:
    """The selective scan every model calls; `impl` picks the implementation (module docstring)."""
    impl = resolve_impl(impl)
    if impl == "ref":
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)
    if impl == "pallas":
        kw = dict(D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus, reverse=reverse)
        on_mesh = batch_mesh(u)
        if on_mesh is not None:
            return sharded_selective_scan(*on_mesh, u, delta, A, B, C, **kw)
        return selective_scan_pallas(u, delta, A, B, C, **kw)
    u32, delta32, A32, B32, C32 = _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if impl in ("chunked_vjp", "fwd", "cpu"):  # one direction: S = 1
        args = tuple(a[None] for a in (u32, delta32, A32, B32, C32))
        if impl == "cpu":
            y_SBLD = _scan_cpu(*args, reverse)
        elif impl == "fwd":
            y_SBLD = scan_fwd.forward_scan(*args, reverse)
        else:
            y_SBLD = scan_vjp.chunked_scan(*args, chunk, reverse)
        return _finish(y_SBLD[0], u, D, z, u.dtype)
    if reverse:  # the reverse recurrence is the forward one on time-flipped inputs
        u32, delta32, B32, C32 = (jnp.flip(a, axis=1) for a in (u32, delta32, B32, C32))
    if impl == "assoc":
        y_BLD = _scan_assoc(u32, delta32, A32, B32, C32)
    else:
        y_BLD = _scan_chunked(u32, delta32, A32, B32, C32, chunk, impl == "chunked_seq")
    if reverse:
        y_BLD = jnp.flip(y_BLD, axis=1)
    return _finish(y_BLD, u, D, z, u.dtype)


def selective_scan_bidirectional(
    u: Float[Array, "S B L D"],
    delta: Float[Array, "S B L D"],
    A: Float[Array, "S D N"],
    B: Float[Array, "S B L N"],
    C: Float[Array, "S B L N"],
    D: Float[Array, "S D"] | None,
    z: Float[Array, "B L D"] | None,
    delta_bias: Float[Array, "S D"] | None,
    delta_softplus: bool = False,
    impl: str = "auto",
) -> Float[Array, "B L D"]:
    """BiMamba's two scans summed: direction S=0 forward, S=1 reverse, one shared gate z.

    Every input is in the sequence's own coordinates (S=1 is not flipped). With impl "pallas"
    or "cpu" both directions run in one fused kernel call (under shard_map when the batch is
    split over a mesh), with "chunked_vjp" / "fwd" in one XLA loop; otherwise two
    selective_scan calls. With "cpu", skip, gate, bias and softplus, float32 state and
    unsplit batches the call is kernels/cpu's gated op: softplus, both scans, skip and gate
    in one pass, and one kernel call for the backward (`_gated_cpu`).
    """
    impl = resolve_impl(impl)
    if impl == "pallas":
        kw = dict(D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)
        on_mesh = batch_mesh(u, batch_axis=1)
        if on_mesh is not None:
            return sharded_bidirectional_scan(*on_mesh, u, delta, A, B, C, **kw)
        return bidirectional_scan_pallas(u, delta, A, B, C, **kw)
    pick = lambda x, s: None if x is None else x[s]  # noqa: E731
    if impl == "cpu":  # the whole block in one kernel pass, where it applies
        y_BLD = _gated_cpu(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        if y_BLD is not None:
            return y_BLD
    if impl in ("chunked_vjp", "fwd", "cpu"):  # both directions in one loop; one gate
        per_dir = [_prepare(u[s], delta[s], A[s], B[s], C[s], None, None, pick(delta_bias, s),
                            delta_softplus) for s in (0, 1)]
        # The XLA loops run S=1 on time-flipped inputs; the kernel runs it backwards itself.
        flip = (lambda x: x) if impl == "cpu" else (lambda x: jnp.flip(x, axis=1))  # noqa: E731
        u32, dt32, A32, B32, C32 = (jnp.stack([x0, x1 if x0.ndim == 2 else flip(x1)])
                                    for x0, x1 in zip(*per_dir))
        if impl == "cpu":
            y_SBLD = _scan_cpu(u32, dt32, A32, B32, C32, bidirectional=True)
        elif impl == "fwd":
            y_SBLD = scan_fwd.forward_scan(u32, dt32, A32, B32, C32)
        else:
            y_SBLD = scan_vjp.chunked_scan(u32, dt32, A32, B32, C32, DEFAULT_CHUNK, False)
        y_BLD = y_SBLD[0] + flip(y_SBLD[1])
        if D is not None:
            y_BLD = y_BLD + u[0].astype(y_BLD.dtype) * D[0] + u[1].astype(y_BLD.dtype) * D[1]
        return _finish(y_BLD, u[0], None, z, u.dtype)
    ys = [
        selective_scan(u[s], delta[s], A[s], B[s], C[s], D=pick(D, s), z=z,
                       delta_bias=pick(delta_bias, s), delta_softplus=delta_softplus,
                       reverse=bool(s), impl=impl)
        for s in (0, 1)
    ]
    return ys[0] + ys[1]


def bidirectional_scan_ref(
    u: Float[Array, "2 B L D"],
    delta: Float[Array, "2 B L D"],
    A: Float[Array, "2 D N"],
    B: Float[Array, "2 B L N"],
    C: Float[Array, "2 B L N"],
    D: Float[Array, "2 D"] | None = None,
    z: Float[Array, "B L D"] | None = None,
    delta_bias: Float[Array, "2 D"] | None = None,
    delta_softplus: bool = False,
) -> Float[Array, "B L D"]:
    """BiMamba's two scans from two lax.scan reference calls: the fused kernel's ground truth."""
    return selective_scan_bidirectional(u, delta, A, B, C, D, z, delta_bias,
                                        delta_softplus=delta_softplus, impl="ref")  # fmt: skip


def random_scan_inputs(
    key: jax.Array,
    B: int,
    L: int,
    D: int,
    N: int,
    dtype=jnp.float32,
    *,
    S: int | None = None,
    skip: bool = True,
    gate: bool = True,
    bias: bool = True,
) -> dict[str, Array | None]:
    """Random scan inputs in the ranges a Mamba layer sees, for tests and benchmarks.

    Keys are the scans' argument names (ARG_NAMES). u, B, C, z ~ N(0, 1) and delta ~
    N(-1, 0.5^2) (softplus(delta) ~ 0.3, as after dt_proj) in `dtype`; A = -exp(N(0, 0.5^2))
    < 0, D ~ N(0, 1), delta_bias ~ N(0, 0.3^2) in float32 (float64 for float64 `dtype`), as
    parameters are. S=2 stacks per-direction inputs on a leading axis (z, the shared gate,
    stays (B L D)): selective_scan_bidirectional's layout. skip / gate / bias False leave D /
    z / delta_bias None.
    """
    param = jnp.promote_types(dtype, jnp.float32)
    lead = () if S is None else (S,)
    ks = jax.random.split(key, 8)
    normal = lambda k, shape, dt=dtype: jax.random.normal(k, shape, param).astype(dt)  # noqa: E731
    return {
        "u": normal(ks[0], lead + (B, L, D)),
        "delta": (0.5 * normal(ks[1], lead + (B, L, D), param) - 1.0).astype(dtype),
        "A": -jnp.exp(0.5 * normal(ks[2], lead + (D, N), param)),
        "B": normal(ks[3], lead + (B, L, N)),
        "C": normal(ks[4], lead + (B, L, N)),
        "D": normal(ks[5], lead + (D,), param) if skip else None,
        "z": normal(ks[6], (B, L, D)) if gate else None,
        "delta_bias": 0.3 * normal(ks[7], lead + (D,), param) if bias else None,
    }
