"""Selective scan (Mamba v1) as Pallas kernels: forward, backward, and the custom_vjp joining them.

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t          (per channel d, state n)
    y_t = sum_n C_t[n] h_t[n] + D * u_t ;   y_t *= silu(z_t) if z is given

Glossary: S scan directions in one launch (1, or 2 for BiMamba), B batch, L length, D channels
(d_inner), N state size, K chunks along L, T channel tiles. The arrays B (input matrix, B L N) and
D (skip, D) keep mamba-ssm's names; axis letters in names like u_SBLD follow the glossary.

Why this shape (mamba-ssm's CUDA kernel, and the public TPU Pallas scans, work the same way):
  * each program owns one (direction, batch row, channel tile) and walks time sequentially;
    the state h_ND (state on the slow axis, channels on the fast one, so that a time step reads
    one contiguous row of u/delta/z) lives in registers/VMEM and never goes to device memory,
  * the forward writes only the state entering each chunk of `chunk` steps: hs (S B K N D),
  * the backward walks the chunks in reverse, recomputes the chunk's states from its saved entry
    state into a (chunk, N, D_tile) workspace (or, with `bwd_in_registers`, into values of an
    unrolled loop), then runs the adjoint scan backwards through them,
  * dB and dC are sums over channels: each channel tile writes its partial sum (S B T L N), and
    XLA adds the T (few) tiles; no (B, L, D, N) array ever exists.
The reverse direction is pure index arithmetic: chunk and row indices run backwards.

Backends (`backend_for_platform`):
  "interpret"   CPU: the kernels run through Pallas' interpreter; chunks are a sequential grid axis.
  "mosaic_tpu"  TPU: same grid (chunk axis "arbitrary"); state and workspace in VMEM scratch.
  "triton"      GPU: Triton has no scratch memory and no ordered grid axis, so each program loops
                over all chunks itself and the workspace is a (discarded) output in device memory.
                The kernel bodies only use the portable pl.* subset, so one body serves all three.
  "mosaic_gpu"  Hopper GPUs (the default there): a warpgroup program with one thread per channel,
                in mosaic_gpu.py; same saved states and partial sums, so _scan_fwd/_scan_bwd and
                everything around them are shared.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jaxtyping import Array, Float

_F32 = jnp.float32
# "tpu_interpret" runs the TPU layout in Pallas' TPU interpreter (NaN-poisoned buffers, so an
# unwritten output element shows); "triton_interpret" runs the GPU layout in the interpreter.
# "mosaic_gpu_interpret" runs the Mosaic GPU program (mosaic_gpu.py) in JAX's GPU interpreter.
BACKENDS = ("interpret", "tpu_interpret", "triton_interpret", "mosaic_tpu", "triton",
            "mosaic_gpu", "mosaic_gpu_interpret")


# ----------------------------------------------------------------------------- configuration


GPU_BACKEND_ENV = "NANODNA_PALLAS_GPU"  # "mosaic_gpu" or "triton": overrides the choice below


def backend_for_platform(platform: str | None = None) -> str:
    """Which lowering to use on `platform` (default: the default JAX backend).

    GPU: Mosaic GPU (mosaic_gpu.py) on Hopper and newer, whose TMA copies and warpgroup
    programs it needs; Triton (this file's kernels) on older GPUs and ROCm. Set
    NANODNA_PALLAS_GPU=triton to use the Triton kernels on Hopper too.
    """
    platform = (platform or jax.default_backend()).lower()
    if platform in ("gpu", "cuda", "rocm"):
        choice = os.environ.get(GPU_BACKEND_ENV, "").strip().lower()
        if choice in ("mosaic_gpu", "triton"):
            return choice
        if choice:
            raise ValueError(f"{GPU_BACKEND_ENV} must be mosaic_gpu or triton, got {choice!r}")
        return "mosaic_gpu" if _is_hopper_or_newer() else "triton"
    if platform == "tpu":
        return "mosaic_tpu"
    return "interpret"


def _is_hopper_or_newer() -> bool:
    try:
        major = int(str(jax.devices()[0].compute_capability).split(".")[0])
    except (AttributeError, ValueError, RuntimeError):  # ROCm, or no GPU in this process
        return False
    return major >= 9


@dataclasses.dataclass(frozen=True)
class Plan:
    """Static choices for one launch (hashable: a non-differentiable custom_vjp argument)."""

    n_dir: int  # S: 1, or 2 = forward and reverse scans in one launch
    reverse: bool  # direction when n_dir == 1; with n_dir == 2 direction s=1 is the reverse one
    softplus: bool
    has_D: bool
    has_z: bool
    has_bias: bool
    chunk: int  # steps between saved states (and the backward's recompute length)
    block_d: int  # channels per program
    backend: str  # one of BACKENDS
    num_warps: int = 4  # Triton only: threads per program / 32
    num_stages: int = 1  # Triton only: software-pipelining depth of the time loop
    bwd_in_registers: bool = False  # unroll the backward's chunk: states in registers, no ws

    @property
    def triton_layout(self) -> bool:
        """GPU layout: chunks loop inside one program, no scratch, power-of-two N."""
        return self.backend in ("triton", "triton_interpret")

    @property
    def mosaic_gpu(self) -> bool:
        """The warpgroup program of mosaic_gpu.py: one thread per channel, W = 128 channels."""
        return self.backend in ("mosaic_gpu", "mosaic_gpu_interpret")

    @property
    def grid_chunks(self) -> bool:
        """Chunks as a sequential grid axis (TPU, interpreter), or a loop in one program (GPU)."""
        return not (self.triton_layout or self.mosaic_gpu)


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def _default_sizes(backend: str, L: int, D: int) -> tuple[int, int]:
    """(chunk, block_d) per backend; small inputs get blocks no larger than themselves."""
    if backend in ("triton", "triton_interpret"):
        # block_d a power of two (Triton tensors). 64 channels x 16 states: no spills at 4 warps
        # (168 registers in the backward, kernels/pallas/resource_report.py), and half the dB/dC
        # partial-sum traffic of 32. A short chunk keeps the backward's workspace in L2.
        chunk, block_d = 32, 64
    elif backend in ("mosaic_gpu", "mosaic_gpu_interpret"):
        # One thread per channel of a 128-thread warpgroup; 16-row chunks keep the backward's
        # double-buffered blocks within shared memory for float32 (mosaic_gpu.smem_bytes).
        chunk, block_d = 16, 128
        return min(chunk, _round_up(L, 8)), block_d
    elif backend == "mosaic_tpu":
        chunk, block_d = 128, 128  # (sublane, lane) multiples
    else:
        chunk, block_d = 64, 128
    chunk = min(chunk, _round_up(L, 8))
    if D <= block_d and backend not in ("triton", "triton_interpret"):
        block_d = D  # one tile equal to the full axis is always a legal block
    return chunk, block_d


def _compiler_params(plan: Plan):
    if plan.backend == "triton":
        from jax.experimental.pallas import triton as pltriton

        return pltriton.CompilerParams(num_warps=plan.num_warps, num_stages=plan.num_stages)
    if plan.backend == "mosaic_tpu":
        from jax.experimental.pallas import tpu as pltpu

        return pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")
        )
    return None


def _interpret_arg(plan: Plan):
    if plan.backend in ("interpret", "triton_interpret"):
        return True
    if plan.backend == "tpu_interpret":
        from jax.experimental.pallas import tpu as pltpu

        return pltpu.InterpretParams()
    return False


def _vmem(shape):
    """A float32 scratch buffer (VMEM on TPU; the interpreter accepts the same type)."""
    from jax.experimental.pallas import tpu as pltpu

    return pltpu.VMEM(shape, _F32)


# ----------------------------------------------------------------------------- shared pieces


def _is_reversed(plan: Plan, s):
    """Whether direction s scans from the end: static for one direction, traced for two."""
    return (s == 1) if plan.n_dir == 2 else plan.reverse


def _flip_if(rev, i, n):
    """Index i counted from the end of an axis of length n when rev; no data is ever flipped."""
    if isinstance(rev, bool):
        return n - 1 - i if rev else i
    return jnp.where(rev, n - 1 - i, i)


def _negate(rev):
    return jnp.logical_not(rev) if not isinstance(rev, bool) else not rev


def _softplus(x):
    # Same threshold as torch / mamba-ssm: above 20 softplus(x) == x in float32.
    return jnp.where(x > 20.0, x, jnp.log1p(jnp.exp(jnp.minimum(x, 20.0))))


def _sigmoid(x):
    return 1.0 / (1.0 + jnp.exp(-x))


def _row(ref, t):
    """Row t of a (rows, X) ref as a (1, X) float32 row."""
    return ref[t, :].astype(_F32)[None, :]


def _column(ref, t):
    """Row t of a (rows, N) ref as an (N, 1) column, to broadcast over the channel axis."""
    return ref[t, :].astype(_F32)[:, None]


class _Step:
    """One time step's inputs, read from the refs at a row and cast to float32."""

    def __init__(self, plan, refs, row, A_ND, bias_1D):
        u_ref, dt_ref, B_ref, C_ref, z_ref = refs
        self.u_1D = _row(u_ref, row)  # (1, D_tile)
        self.dt_raw_1D = _row(dt_ref, row)
        if bias_1D is not None:
            self.dt_raw_1D = self.dt_raw_1D + bias_1D
        self.dt_1D = _softplus(self.dt_raw_1D) if plan.softplus else self.dt_raw_1D
        self.B_N1 = _column(B_ref, row)
        self.C_N1 = _column(C_ref, row)
        self.z_1D = _row(z_ref, row) if z_ref is not None else None
        self.dA_ND = jnp.exp(self.dt_1D * A_ND)

    def advance(self, h_ND):
        return self.dA_ND * h_ND + self.B_N1 * (self.dt_1D * self.u_1D)


def _unpack(refs, names):
    """Refs arrive flat; optional ones are present only when their flag is on."""
    out, it = {}, iter(refs)
    for name, present in names:
        out[name] = next(it) if present else None
    return out


def _in_names(plan: Plan):
    return [
        ("u", True), ("dt", True), ("A", True), ("B", True), ("C", True),
        ("D", plan.has_D), ("z", plan.has_z), ("bias", plan.has_bias),
    ]  # fmt: skip


# ----------------------------------------------------------------------------- forward kernel


def _fwd_kernel(*refs, plan: Plan, n_inner: int, n_grid: int):
    names = _in_names(plan) + [("y", True), ("hs", True), ("h_carry", n_grid > 1)]
    r = _unpack(refs, names)
    s, c = pl.program_id(0), pl.program_id(3)
    rev = _is_reversed(plan, s)
    A_ND = r["A"][...].astype(_F32)
    bias_1D = r["bias"][...].astype(_F32) if plan.has_bias else None
    D_1D = r["D"][...].astype(_F32) if plan.has_D else None
    step_refs = (r["u"], r["dt"], r["B"], r["C"], r["z"])

    h0_ND = jnp.zeros(A_ND.shape, _F32)
    if n_grid > 1:  # the state entering this grid step was left by the previous one
        h0_ND = jnp.where(c == 0, h0_ND, r["h_carry"][...])

    def chunk_body(k, h_ND):
        kk = _flip_if(rev, k, n_inner)
        r["hs"][kk] = h_ND  # entry state of the chunk, for the backward

        def step_body(j, h_ND):
            row = kk * plan.chunk + _flip_if(rev, j, plan.chunk)
            st = _Step(plan, step_refs, row, A_ND, bias_1D)
            h_ND = st.advance(h_ND)
            y_1D = jnp.sum(st.C_N1 * h_ND, axis=0, keepdims=True)
            if D_1D is not None:
                y_1D = y_1D + D_1D * st.u_1D
            if st.z_1D is not None:
                y_1D = y_1D * st.z_1D * _sigmoid(st.z_1D)
            r["y"][row, :] = y_1D[0].astype(r["y"].dtype)
            return h_ND

        return jax.lax.fori_loop(0, plan.chunk, step_body, h_ND)

    h_ND = jax.lax.fori_loop(0, n_inner, chunk_body, h0_ND)
    if n_grid > 1:
        r["h_carry"][...] = h_ND


# ----------------------------------------------------------------------------- backward kernel


def _bwd_kernel(*refs, plan: Plan, n_inner: int, n_grid: int):
    """Adjoint scan. With g_t = dL/dh_t and dA_t = exp(delta_t A), walking t backwards:

        g_t = dA_{t+1} g_{t+1} + C_t dy_t          dC_t = sum_d h_t dy_t
        dB_t = sum_d g_t delta_t u_t               du_t = delta_t sum_n g_t B_t + D dy_t
        ddelta_t = sum_n g_t (A dA_t h_{t-1} + B_t u_t)      dA = sum_t g_t delta_t dA_t h_{t-1}

    h_{t-1} comes from the chunk's recomputed states; dy_t already includes the silu(z) gate.
    """
    names = _in_names(plan) + [
        ("hs", True), ("dout", True),
        ("du", True), ("ddt", True), ("dA", True), ("dB", True), ("dC", True),
        ("dD", plan.has_D), ("dz", plan.has_z), ("dbias", plan.has_bias),
        ("ws", not plan.bwd_in_registers), ("g_carry", n_grid > 1),
    ]  # fmt: skip
    r = _unpack(refs, names)
    s, c = pl.program_id(0), pl.program_id(3)
    rev = _is_reversed(plan, s)
    back = _negate(rev)  # the adjoint walks against the scan
    A_ND = r["A"][...].astype(_F32)
    bias_1D = r["bias"][...].astype(_F32) if plan.has_bias else None
    D_1D = r["D"][...].astype(_F32) if plan.has_D else None
    step_refs = (r["u"], r["dt"], r["B"], r["C"], r["z"])
    # r["ws"] (chunk, N, D_tile), unless bwd_in_registers: the state *before* each step.
    zeros_ND = jnp.zeros(A_ND.shape, _F32)
    zeros_1D = jnp.zeros((1, A_ND.shape[1]), _F32)

    def rows_of(kk, j):
        """Row of step j of chunk kk, steps counted in the forward scan's order."""
        return kk * plan.chunk + _flip_if(rev, j, plan.chunk)

    def adjoint_step(kk, j, h_prev_ND, carry):
        """Step j of chunk kk (forward order); h_prev_ND is the state before it."""
        # g_ND arrives as dA_{t+1} * g_{t+1}: what the later step sends back to h_t.
        g_ND, dA_ND, dD_1D, dbias_1D = carry
        row = rows_of(kk, j)
        st = _Step(plan, step_refs, row, A_ND, bias_1D)
        h_ND = st.advance(h_prev_ND)
        dy_1D = _row(r["dout"], row)
        if st.z_1D is not None:
            y_1D = jnp.sum(st.C_N1 * h_ND, axis=0, keepdims=True)
            if D_1D is not None:
                y_1D = y_1D + D_1D * st.u_1D
            sig_1D = _sigmoid(st.z_1D)
            dz_1D = dy_1D * y_1D * sig_1D * (1.0 + st.z_1D * (1.0 - sig_1D))
            r["dz"][row, :] = dz_1D[0].astype(r["dz"].dtype)
            dy_1D = dy_1D * st.z_1D * sig_1D
        g_ND = g_ND + st.C_N1 * dy_1D  # dL/dh_t
        gB_1D = jnp.sum(g_ND * st.B_N1, axis=0, keepdims=True)
        gAh_ND = g_ND * st.dA_ND * h_prev_ND
        du_1D = gB_1D * st.dt_1D
        if D_1D is not None:
            du_1D = du_1D + dy_1D * D_1D
            dD_1D = dD_1D + dy_1D * st.u_1D
        ddt_1D = jnp.sum(gAh_ND * A_ND, axis=0, keepdims=True) + gB_1D * st.u_1D
        if plan.softplus:
            ddt_1D = ddt_1D * _sigmoid(st.dt_raw_1D)
        dbias_1D = dbias_1D + ddt_1D
        dA_ND = dA_ND + gAh_ND * st.dt_1D
        r["du"][row, :] = du_1D[0].astype(r["du"].dtype)
        r["ddt"][row, :] = ddt_1D[0].astype(r["ddt"].dtype)
        # Partial sums over this tile's channels; XLA adds the tiles.
        r["dB"][row, :] = jnp.sum(g_ND * (st.dt_1D * st.u_1D), axis=1)
        r["dC"][row, :] = jnp.sum(h_ND * dy_1D, axis=1)
        return st.dA_ND * g_ND, dA_ND, dD_1D, dbias_1D

    def chunk_body(k, carry):
        kk = _flip_if(back, k, n_inner)

        def advance(j, h_ND):
            return _Step(plan, step_refs, rows_of(kk, j), A_ND, bias_1D).advance(h_ND)

        if plan.bwd_in_registers:
            # Unrolled: the chunk's states are plain values, which the compiler keeps in
            # registers, so the backward touches no workspace memory at all.
            states = [r["hs"][kk]]
            for j in range(plan.chunk - 1):
                states.append(advance(j, states[-1]))
            for j in reversed(range(plan.chunk)):
                carry = adjoint_step(kk, j, states[j], carry)
            return carry

        def recompute(j, h_ND):  # forward over the chunk from its saved entry state
            r["ws"][j] = h_ND
            return advance(j, h_ND)

        def walk_back(i, carry):
            j = plan.chunk - 1 - i
            return adjoint_step(kk, j, r["ws"][j], carry)

        jax.lax.fori_loop(0, plan.chunk, recompute, r["hs"][kk])
        return jax.lax.fori_loop(0, plan.chunk, walk_back, carry)

    g0_ND = zeros_ND
    if n_grid > 1:
        g0_ND = jnp.where(c == 0, g0_ND, r["g_carry"][...])
    g_ND, dA_ND, dD_1D, dbias_1D = jax.lax.fori_loop(
        0, n_inner, chunk_body, (g0_ND, zeros_ND, zeros_1D, zeros_1D)
    )
    if n_grid > 1:
        r["g_carry"][...] = g_ND

    # Parameter gradients: one block per (direction, batch row, tile), summed over grid steps.
    def accumulate(ref, value):
        ref[...] = jnp.where(c == 0, 0.0, ref[...]) + value

    accumulate(r["dA"], dA_ND)
    if plan.has_D:
        accumulate(r["dD"], dD_1D)
    if plan.has_bias:
        accumulate(r["dbias"], dbias_1D)


# ----------------------------------------------------------------------------- launches


@dataclasses.dataclass(frozen=True)
class _Geometry:
    S: int
    B: int
    L: int  # padded
    D: int  # padded
    N: int  # padded
    n_tiles: int
    n_chunks: int
    n_grid: int  # grid steps along L
    n_inner: int  # chunks per grid step
    rows: int  # rows per grid step

    @staticmethod
    def of(plan: Plan, S, B, L, D, N):
        n_chunks = L // plan.chunk
        n_grid, n_inner = (n_chunks, 1) if plan.grid_chunks else (1, n_chunks)
        return _Geometry(S, B, L, D, N, D // plan.block_d, n_chunks, n_grid, n_inner,
                         n_inner * plan.chunk)  # fmt: skip


def _specs(plan: Plan, g: _Geometry, backward: bool):
    """BlockSpecs over the grid (s, b, tile, c); c walks L in the scan's (or adjoint's) order."""
    bd, N, rows = plan.block_d, g.N, g.rows

    def blk(s, c):  # which block along L grid step c touches
        rev = _is_reversed(plan, s)
        return _flip_if(_negate(rev) if backward else rev, c, g.n_grid)

    seq_D = pl.BlockSpec((None, None, rows, bd), lambda s, b, d, c: (s, b, blk(s, c), d))
    seq_N = pl.BlockSpec((None, None, rows, N), lambda s, b, d, c: (s, b, blk(s, c), 0))
    shared_D = pl.BlockSpec((None, rows, bd), lambda s, b, d, c: (b, blk(s, c), d))  # z, dout
    per_ND = pl.BlockSpec((None, N, bd), lambda s, b, d, c: (s, 0, d))
    per_1D = pl.BlockSpec((None, 1, bd), lambda s, b, d, c: (s, 0, d))
    hs = pl.BlockSpec(
        (None, None, g.n_inner, N, bd), lambda s, b, d, c: (s, b, blk(s, c), 0, d)
    )
    part_ND = pl.BlockSpec((None, None, N, bd), lambda s, b, d, c: (s, b, 0, d))
    part_1D = pl.BlockSpec((None, None, 1, bd), lambda s, b, d, c: (s, b, 0, d))
    part_LN = pl.BlockSpec(
        (None, None, None, rows, N), lambda s, b, d, c: (s, b, d, blk(s, c), 0)
    )
    ws = pl.BlockSpec(
        (None, None, None, plan.chunk, N, bd), lambda s, b, d, c: (s, b, d, 0, 0, 0)
    )
    return dict(seq_D=seq_D, seq_N=seq_N, shared_D=shared_D, per_ND=per_ND, per_1D=per_1D,
                hs=hs, part_ND=part_ND, part_1D=part_1D, part_LN=part_LN, ws=ws)  # fmt: skip


def _inputs(plan, sp, u, dt, A, B, C, D, z, bias):
    arrays = [u, dt, A, B, C]
    specs = [sp["seq_D"], sp["seq_D"], sp["per_ND"], sp["seq_N"], sp["seq_N"]]
    for present, x, spec in ((plan.has_D, D, sp["per_1D"]), (plan.has_z, z, sp["shared_D"]),
                             (plan.has_bias, bias, sp["per_1D"])):  # fmt: skip
        if present:
            arrays.append(x)
            specs.append(spec)
    return arrays, specs


def _fwd_call(plan: Plan, g: _Geometry, u, dt, A, B, C, D, z, bias):
    sp = _specs(plan, g, backward=False)
    arrays, in_specs = _inputs(plan, sp, u, dt, A, B, C, D, z, bias)
    out_shape = [
        jax.ShapeDtypeStruct((g.S, g.B, g.L, g.D), u.dtype),
        jax.ShapeDtypeStruct((g.S, g.B, g.n_chunks, g.N, g.D), _F32),
    ]
    scratch = [_vmem((g.N, plan.block_d))] if g.n_grid > 1 else []
    kernel = functools.partial(_fwd_kernel, plan=plan, n_inner=g.n_inner, n_grid=g.n_grid)
    return pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(g.S, g.B, g.n_tiles, g.n_grid),
        in_specs=in_specs,
        out_specs=[sp["seq_D"], sp["hs"]],
        scratch_shapes=scratch,
        compiler_params=_compiler_params(plan),
        interpret=_interpret_arg(plan),
        name="selective_scan_fwd",
    )(*arrays)


def _bwd_call(plan: Plan, g: _Geometry, u, dt, A, B, C, D, z, bias, hs, dout):
    sp = _specs(plan, g, backward=True)
    arrays, in_specs = _inputs(plan, sp, u, dt, A, B, C, D, z, bias)
    arrays += [hs, dout]
    in_specs += [sp["hs"], sp["shared_D"]]
    S, Bz, N, T = g.S, g.B, g.N, g.n_tiles
    spec_of = dict(du="seq_D", ddt="seq_D", dA="part_ND", dB="part_LN", dC="part_LN",
                   dD="part_1D", dz="seq_D", dbias="part_1D")  # fmt: skip
    outs = [(o, sp[spec_of[name]]) for name, o in backward_out_types(plan, g, u, dt, z)]
    ws_shape = (plan.chunk, N, plan.block_d)
    scratch = []
    if plan.bwd_in_registers:
        pass
    elif plan.triton_layout:  # no scratch memory there: a per-program slab of device memory
        outs.append((jax.ShapeDtypeStruct((S, Bz, T) + ws_shape, _F32), sp["ws"]))
    else:
        scratch.append(_vmem(ws_shape))
    if g.n_grid > 1:
        scratch.append(_vmem((N, plan.block_d)))
    kernel = functools.partial(_bwd_kernel, plan=plan, n_inner=g.n_inner, n_grid=g.n_grid)
    results = pl.pallas_call(
        kernel,
        out_shape=[o for o, _ in outs],
        grid=(S, Bz, T, g.n_grid),
        in_specs=in_specs,
        out_specs=[spec for _, spec in outs],
        scratch_shapes=scratch,
        compiler_params=_compiler_params(plan),
        interpret=_interpret_arg(plan),
        name="selective_scan_bwd",
    )(*arrays)
    return backward_outputs(plan, results)


def backward_out_types(plan: Plan, g: _Geometry, u, dt, z):
    """(name, type) of the backward launch's gradient outputs, in backward_outputs' order."""
    S, Bz, L, Dc, N, T = g.S, g.B, g.L, g.D, g.N, g.n_tiles
    seq = lambda dtype: jax.ShapeDtypeStruct((S, Bz, L, Dc), dtype)  # noqa: E731
    outs = [
        ("du", seq(u.dtype)),
        ("ddt", seq(dt.dtype)),
        ("dA", jax.ShapeDtypeStruct((S, Bz, N, Dc), _F32)),  # per batch row
        ("dB", jax.ShapeDtypeStruct((S, Bz, T, L, N), _F32)),  # per channel tile
        ("dC", jax.ShapeDtypeStruct((S, Bz, T, L, N), _F32)),
    ]
    if plan.has_D:
        outs.append(("dD", jax.ShapeDtypeStruct((S, Bz, 1, Dc), _F32)))
    if plan.has_z:
        outs.append(("dz", seq(z.dtype)))
    if plan.has_bias:
        outs.append(("dbias", jax.ShapeDtypeStruct((S, Bz, 1, Dc), _F32)))
    return outs


def backward_outputs(plan: Plan, results):
    """The backward launch's outputs, with None for the gradients of absent inputs:
    du, ddelta, dA (per row), dB, dC (per tile), dD (per row), dz, dbias (per row)."""
    it = iter(results)
    du, ddt, dA_part, dB_part, dC_part = (next(it) for _ in range(5))
    dD_part = next(it) if plan.has_D else None
    dz = next(it) if plan.has_z else None
    dbias_part = next(it) if plan.has_bias else None
    return du, ddt, dA_part, dB_part, dC_part, dD_part, dz, dbias_part


# ----------------------------------------------------------------------------- custom_vjp


def _mosaic_gpu():
    """The Mosaic GPU launches, imported on first use (only that backend needs plgpu)."""
    from kernels.pallas import mosaic_gpu

    return mosaic_gpu


def _pad_to(x, axis, size):
    if x is None or x.shape[axis] == size:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, widths)  # zeros leave the scan unchanged: see _padded


def _padded(plan: Plan, u, dt, A, B, C, D, z, bias):
    """Pad L to whole chunks, D to whole tiles, N to a power of two on Triton.

    Zero padding is neutral: a padded step has u = 0, so the state it enters stays what it was
    (forward) or stays 0 (reverse, where the padding comes first); padded channels and states
    have A = B = C = 0 and are cropped off.
    """
    S, Bz, L, Dc = u.shape
    N = A.shape[-2]
    Lp, Dp = _round_up(L, plan.chunk), _round_up(Dc, plan.block_d)
    Np = pl.next_power_of_2(N) if plan.triton_layout else N
    if plan.mosaic_gpu:
        Np = _round_up(N, 8)  # B/C rows of >= 16 bytes for TMA
    u, dt = _pad_to(_pad_to(u, 2, Lp), 3, Dp), _pad_to(_pad_to(dt, 2, Lp), 3, Dp)
    z = _pad_to(_pad_to(z, 1, Lp), 2, Dp)
    B, C = _pad_to(_pad_to(B, 2, Lp), 3, Np), _pad_to(_pad_to(C, 2, Lp), 3, Np)
    A = _pad_to(_pad_to(A, 1, Np), 2, Dp)
    D, bias = _pad_to(D, 2, Dp), _pad_to(bias, 2, Dp)
    return _Geometry.of(plan, S, Bz, Lp, Dp, Np), (u, dt, A, B, C, D, z, bias)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _scan(plan: Plan, u, dt, A, B, C, D, z, bias):
    """Sum over directions of their scans, (B L D)."""
    return _scan_fwd(plan, u, dt, A, B, C, D, z, bias)[0]


def _scan_fwd(plan: Plan, u, dt, A, B, C, D, z, bias):
    """Arrays: u/dt (S B L D), A_SND transposed, B/C (S B L N), D/bias (S 1 D), z (B L D)."""
    S, Bz, L, Dc = u.shape
    g, padded = _padded(plan, u, dt, A, B, C, D, z, bias)
    fwd_call = _mosaic_gpu().fwd_call if plan.mosaic_gpu else _fwd_call
    y_SBLD, hs = fwd_call(plan, g, *padded)
    y_BLD = y_SBLD[:, :, :L, :Dc].astype(_F32).sum(0).astype(u.dtype)
    return y_BLD, (u, dt, A, B, C, D, z, bias, hs)


def _scan_bwd(plan: Plan, res, dy_BLD):
    u, dt, A, B, C, D, z, bias, hs = res
    S, Bz, L, Dc = u.shape
    N = A.shape[-2]
    g, padded = _padded(plan, u, dt, A, B, C, D, z, bias)
    # The directions' outputs are summed, so they share one cotangent.
    dout = _pad_to(_pad_to(dy_BLD, 1, g.L), 2, g.D)
    bwd_call = _mosaic_gpu().bwd_call if plan.mosaic_gpu else _bwd_call
    du, ddt, dA_p, dB_p, dC_p, dD_p, dz, dbias_p = bwd_call(plan, g, *padded, hs, dout)
    crop = lambda x: x[:, :, :L, :Dc]  # noqa: E731
    total = lambda part, ref: part.sum(1)[:, 0, :Dc].astype(ref.dtype)  # noqa: E731  (S B 1 D)
    grads = (
        crop(du),
        crop(ddt),
        dA_p.sum(1)[:, :N, :Dc].astype(A.dtype),
        dB_p.sum(2)[:, :, :L, :N].astype(B.dtype),
        dC_p.sum(2)[:, :, :L, :N].astype(C.dtype),
        total(dD_p, D)[:, None] if D is not None else None,
        crop(dz).sum(0).astype(z.dtype) if z is not None else None,
        total(dbias_p, bias)[:, None] if bias is not None else None,
    )
    return grads


_scan.defvjp(_scan_fwd, _scan_bwd)


def make_plan(
    *, n_dir, reverse, L, D, softplus, has_D, has_z, has_bias, chunk, block_d, interpret,
    num_warps=4, num_stages=1, bwd_in_registers=False,
) -> Plan:
    """Pick the backend and block sizes; `interpret` None = automatic (True off GPU/TPU).

    num_warps / num_stages tune the Triton program, bwd_in_registers the backward's storage
    (short chunks only: the chunk is unrolled); the benchmark sweeps them.
    """  # fmt: skip
    if interpret is None:
        backend = backend_for_platform()
    elif interpret is True:
        backend = "interpret"
    elif interpret is False:
        backend = backend_for_platform()
        if backend == "interpret":
            raise ValueError("interpret=False needs a GPU or TPU; this machine has neither")
    elif interpret in BACKENDS:
        backend = interpret
    else:
        raise ValueError(f"interpret must be None, a bool or one of {BACKENDS}, got {interpret!r}")
    d_chunk, d_block = _default_sizes(backend, L, D)
    chunk, block_d = chunk or d_chunk, block_d or d_block
    if chunk < 1 or block_d < 1:
        raise ValueError(f"chunk and block_d must be positive, got {chunk} and {block_d}")
    if backend in ("triton", "triton_interpret") and block_d & (block_d - 1):
        raise ValueError(f"Triton needs a power-of-two block_d, got {block_d}")
    if backend in ("mosaic_gpu", "mosaic_gpu_interpret") and block_d != 128:
        raise ValueError(f"Mosaic GPU runs one thread per channel: block_d must be 128, got {block_d}")
    return Plan(n_dir, reverse, softplus, has_D, has_z, has_bias, chunk, block_d, backend,
                num_warps, num_stages, bwd_in_registers)  # fmt: skip


def scan_stacked(plan: Plan, u, dt, A, B, C, D, z, bias):
    """Sum over S of the scans of S directions given stacked: the core both entry points use.

    u/dt (S B L D), A (S D N), B/C (S B L N), D/bias (S D) or None, z (B L D) or None.
    """
    A_SND = jnp.swapaxes(A, 1, 2)  # channels on the fast axis inside the kernel
    D3 = D[:, None, :] if D is not None else None
    bias3 = bias[:, None, :] if bias is not None else None
    return _scan(plan, u, dt, A_SND, B, C, D3, z, bias3)


def _check(u, delta, A, B, C, D, z, delta_bias):
    """One-line errors for wrong layouts, before any tracing of the kernel."""
    if u.ndim != 3:
        raise ValueError(f"u must be (batch, length, channels), got shape {u.shape}")
    Bz, L, Dc = u.shape
    N = A.shape[-1] if A.ndim == 2 else -1
    want = {"delta": (delta, (Bz, L, Dc)), "A": (A, (Dc, N)), "B": (B, (Bz, L, N)),
            "C": (C, (Bz, L, N)), "D": (D, (Dc,)), "z": (z, (Bz, L, Dc)),
            "delta_bias": (delta_bias, (Dc,))}  # fmt: skip
    for name, (x, shape) in want.items():
        if x is not None and tuple(x.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {shape} for u {u.shape}")
    if L == 0:
        raise ValueError("selective scan needs at least one time step")


def selective_scan_pallas(
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
    *,
    chunk: int | None = None,
    block_d: int | None = None,
    interpret: bool | str | None = None,
) -> Float[Array, "B L D"]:
    """Mamba v1 selective scan with Pallas forward and backward kernels (same contract as
    `nanodna.ops.scan.selective_scan_ref`). `interpret`: None auto, True interpreter, or a
    backend name from BACKENDS."""
    _check(u, delta, A, B, C, D, z, delta_bias)
    plan = make_plan(
        n_dir=1, reverse=bool(reverse), L=u.shape[1], D=u.shape[2], softplus=bool(delta_softplus),
        has_D=D is not None, has_z=z is not None, has_bias=delta_bias is not None,
        chunk=chunk, block_d=block_d, interpret=interpret,
    )  # fmt: skip
    one = lambda x: None if x is None else x[None]  # noqa: E731  (a free reshape, not a copy)
    return scan_stacked(plan, one(u), one(delta), one(A), one(B), one(C), one(D), z,
                        one(delta_bias))  # fmt: skip
