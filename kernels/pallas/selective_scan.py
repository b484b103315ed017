"""Selective scan (Mamba v1) as Pallas kernels: forward, backward, and the custom_vjp joining them.

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t          (per channel d, state n)
    y_t = sum_n C_t[n] h_t[n] + D * u_t ;   y_t *= silu(z_t) if z is given

Glossary: S scan directions in one launch (1, or 2 for BiMamba), B batch, L length, D channels
(d_inner), N state size, K chunks along L; n_tiles channel tiles. The arrays B (input matrix,
B L N) and D (skip, D) keep mamba-ssm's names; axis letters in names like u_SBLD follow the
glossary.

Why this shape (mamba-ssm's CUDA kernel, and the public TPU Pallas scans, work the same way):
  * each program owns one (direction, batch row, channel tile) and walks time sequentially;
    the state h_ND (state on the slow axis, channels on the fast one, so that a time step reads
    one contiguous row of u/delta/z) lives in registers/VMEM and never goes to device memory,
  * the forward writes only the state entering each chunk of `chunk` steps: hs (S B K N D),
  * the backward walks the chunks in reverse, recomputes the chunk's states from its saved entry
    state into a (chunk, N, D_tile) workspace (or, with `bwd_in_registers`, into values of an
    unrolled loop), then runs the adjoint scan backwards through them,
  * dB and dC are sums over channels: each of the n_tiles channel tiles writes its partial sum
    (S B n_tiles L N), and XLA adds the few tiles; no (B, L, D, N) array ever exists.
The reverse direction is pure index arithmetic: chunk and row indices run backwards.

Backends (`plan.Backend`, chosen by `plan.backend_for_platform`):
  "interpreter" CPU: the kernels run through Pallas' interpreter; chunks are a sequential grid axis.
  "mosaic_tpu"  TPU: same grid (chunk axis "arbitrary"); state and workspace in VMEM scratch.
  "triton"      GPU: Triton has no scratch memory and no ordered grid axis, so each program loops
                over all chunks itself and the workspace is a (discarded) output in device memory.
                The kernel bodies only use the portable pl.* subset, so one body serves all three.
  "mosaic_gpu"  Hopper GPUs (the default there): a warpgroup program with one thread per channel,
                in mosaic_gpu.py; same saved states and partial sums, so _scan_fwd/_scan_bwd and
                everything around them are shared. Geometry and padding live in plan.py.
`backward="reference"` keeps the kernel forward and takes the gradients from autodiff of a
plain lax.scan (reference_backward.py), for a kernel whose backward is under tuning.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton
from jaxtyping import Array, Float

from kernels.pallas import mosaic_gpu
from kernels.pallas.plan import (
    Backend,
    Geometry,
    Plan,
    backward_out_types,
    backward_outputs,
    check_inputs,
    flip_if,
    in_names,
    is_reversed,
    make_plan,
    negate,
    pad_to,
    padded,
    sigmoid,
)
from kernels.pallas.reference_backward import reference_grads

_F32 = jnp.float32


# ----------------------------------------------------------------------------- configuration


def _compiler_params(plan: Plan):
    if plan.backend == Backend("triton"):
        return pltriton.CompilerParams(num_warps=plan.num_warps, num_stages=plan.num_stages)
    if plan.backend == Backend("mosaic_tpu"):
        return pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")
        )
    return None


def _interpret_arg(plan: Plan):
    if plan.backend == Backend("mosaic_tpu", interpret=True):
        return pltpu.InterpretParams()
    return plan.backend.interpret


def _vmem(shape):
    """A float32 scratch buffer (VMEM on TPU; the interpreter accepts the same type)."""
    return pltpu.VMEM(shape, _F32)


# ----------------------------------------------------------------------------- shared pieces


def _softplus(x):
    # Same threshold as torch / mamba-ssm: above 20 softplus(x) == x in float32.
    return jnp.where(x > 20.0, x, jnp.log1p(jnp.exp(jnp.minimum(x, 20.0))))


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


# ----------------------------------------------------------------------------- forward kernel


def _fwd_kernel(*refs, plan: Plan, n_inner: int, n_grid: int):
    names = in_names(plan) + [("y", True), ("hs", True), ("h_carry", n_grid > 1)]
    r = _unpack(refs, names)
    s, c = pl.program_id(0), pl.program_id(3)
    rev = is_reversed(plan, s)
    A_ND = r["A"][...].astype(_F32)
    bias_1D = r["bias"][...].astype(_F32) if plan.has_bias else None
    D_1D = r["D"][...].astype(_F32) if plan.has_D else None
    step_refs = (r["u"], r["dt"], r["B"], r["C"], r["z"])

    h0_ND = jnp.zeros(A_ND.shape, _F32)
    if n_grid > 1:  # the state entering this grid step was left by the previous one
        h0_ND = jnp.where(c == 0, h0_ND, r["h_carry"][...])

    def chunk_body(k, h_ND):
        kk = flip_if(rev, k, n_inner)
        r["hs"][kk] = h_ND  # entry state of the chunk, for the backward

        def step_body(j, h_ND):
            row = kk * plan.chunk + flip_if(rev, j, plan.chunk)
            st = _Step(plan, step_refs, row, A_ND, bias_1D)
            h_ND = st.advance(h_ND)
            y_1D = jnp.sum(st.C_N1 * h_ND, axis=0, keepdims=True)
            if D_1D is not None:
                y_1D = y_1D + D_1D * st.u_1D
            if st.z_1D is not None:
                y_1D = y_1D * st.z_1D * sigmoid(st.z_1D)
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
    names = in_names(plan) + [
        ("hs", True), ("dout", True),
        ("du", True), ("ddt", True), ("dA", True), ("dB", True), ("dC", True),
        ("dD", plan.has_D), ("dz", plan.has_z), ("dbias", plan.has_bias),
        ("ws", not plan.bwd_in_registers), ("g_carry", n_grid > 1),
    ]  # fmt: skip
    r = _unpack(refs, names)
    s, c = pl.program_id(0), pl.program_id(3)
    rev = is_reversed(plan, s)
    back = negate(rev)  # the adjoint walks against the scan
    A_ND = r["A"][...].astype(_F32)
    bias_1D = r["bias"][...].astype(_F32) if plan.has_bias else None
    D_1D = r["D"][...].astype(_F32) if plan.has_D else None
    step_refs = (r["u"], r["dt"], r["B"], r["C"], r["z"])
    # r["ws"] (chunk, N, D_tile), unless bwd_in_registers: the state *before* each step.
    zeros_ND = jnp.zeros(A_ND.shape, _F32)
    zeros_1D = jnp.zeros((1, A_ND.shape[1]), _F32)

    def rows_of(kk, j):
        """Row of step j of chunk kk, steps counted in the forward scan's order."""
        return kk * plan.chunk + flip_if(rev, j, plan.chunk)

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
            sig_1D = sigmoid(st.z_1D)
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
            ddt_1D = ddt_1D * sigmoid(st.dt_raw_1D)
        dbias_1D = dbias_1D + ddt_1D
        dA_ND = dA_ND + gAh_ND * st.dt_1D
        r["du"][row, :] = du_1D[0].astype(r["du"].dtype)
        r["ddt"][row, :] = ddt_1D[0].astype(r["ddt"].dtype)
        # Partial sums over this tile's channels; XLA adds the tiles.
        r["dB"][row, :] = jnp.sum(g_ND * (st.dt_1D * st.u_1D), axis=1)
        r["dC"][row, :] = jnp.sum(h_ND * dy_1D, axis=1)
        return st.dA_ND * g_ND, dA_ND, dD_1D, dbias_1D

    def chunk_body(k, carry):
        kk = flip_if(back, k, n_inner)

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


def _specs(plan: Plan, g: Geometry, backward: bool):
    """BlockSpecs over the grid (s, b, tile, c); c walks L in the scan's (or adjoint's) order."""
    bd, N, rows = plan.block_d, g.N, g.rows

    def blk(s, c):  # which block along L grid step c touches
        rev = is_reversed(plan, s)
        return flip_if(negate(rev) if backward else rev, c, g.n_grid)

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


def _fwd_call(plan: Plan, g: Geometry, u, dt, A, B, C, D, z, bias):
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


def _bwd_call(plan: Plan, g: Geometry, u, dt, A, B, C, D, z, bias, hs, dout):
    sp = _specs(plan, g, backward=True)
    arrays, in_specs = _inputs(plan, sp, u, dt, A, B, C, D, z, bias)
    arrays += [hs, dout]
    in_specs += [sp["hs"], sp["shared_D"]]
    S, Bz, N, n_tiles = g.S, g.B, g.N, g.n_tiles
    spec_of = dict(du="seq_D", ddt="seq_D", dA="part_ND", dB="part_LN", dC="part_LN",
                   dD="part_1D", dz="seq_D", dbias="part_1D")  # fmt: skip
    outs = [(o, sp[spec_of[name]]) for name, o in backward_out_types(plan, g, u, dt, z)]
    ws_shape = (plan.chunk, N, plan.block_d)
    scratch = []
    if plan.bwd_in_registers:
        pass
    elif plan.triton_layout:  # no scratch memory there: a per-program slab of device memory
        outs.append((jax.ShapeDtypeStruct((S, Bz, n_tiles) + ws_shape, _F32), sp["ws"]))
    else:
        scratch.append(_vmem(ws_shape))
    if g.n_grid > 1:
        scratch.append(_vmem((N, plan.block_d)))
    kernel = functools.partial(_bwd_kernel, plan=plan, n_inner=g.n_inner, n_grid=g.n_grid)
    results = pl.pallas_call(
        kernel,
        out_shape=[o for o, _ in outs],
        grid=(S, Bz, n_tiles, g.n_grid),
        in_specs=in_specs,
        out_specs=[spec for _, spec in outs],
        scratch_shapes=scratch,
        compiler_params=_compiler_params(plan),
        interpret=_interpret_arg(plan),
        name="selective_scan_bwd",
    )(*arrays)
    return backward_outputs(plan, results)


# ----------------------------------------------------------------------------- custom_vjp


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _scan(plan: Plan, u, dt, A, B, C, D, z, bias):
    """Sum over directions of their scans, (B L D)."""
    return _scan_fwd(plan, u, dt, A, B, C, D, z, bias)[0]


def _scan_fwd(plan: Plan, u, dt, A, B, C, D, z, bias):
    """Arrays: u/dt (S B L D), A_SND transposed, B/C (S B L N), D/bias (S 1 D), z (B L D)."""
    S, Bz, L, Dc = u.shape
    g, inputs = padded(plan, u, dt, A, B, C, D, z, bias)
    fwd_call = mosaic_gpu.fwd_call if plan.mosaic_gpu else _fwd_call
    y_SBLD, hs = fwd_call(plan, g, *inputs)
    y_BLD = y_SBLD[:, :, :L, :Dc].astype(_F32).sum(0).astype(u.dtype)
    return y_BLD, (u, dt, A, B, C, D, z, bias, hs)


def _scan_bwd(plan: Plan, res, dy_BLD):
    u, dt, A, B, C, D, z, bias, hs = res
    if plan.backward == "reference":
        return tuple(reference_grads(plan, (u, dt, A, B, C, D, z, bias), dy_BLD))
    S, Bz, L, Dc = u.shape
    N = A.shape[-2]
    g, inputs = padded(plan, u, dt, A, B, C, D, z, bias)
    # The directions' outputs are summed, so they share one cotangent.
    dout = pad_to(pad_to(dy_BLD, 1, g.L), 2, g.D)
    bwd_call = mosaic_gpu.bwd_call if plan.mosaic_gpu else _bwd_call
    du, ddt, dA_p, dB_p, dC_p, dD_p, dz, dbias_p = bwd_call(plan, g, *inputs, hs, dout)
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


def scan_stacked(plan: Plan, u, dt, A, B, C, D, z, bias):
    """Sum over S of the scans of S directions given stacked: the core both entry points use.

    u/dt (S B L D), A (S D N), B/C (S B L N), D/bias (S D) or None, z (B L D) or None.
    """
    A_SND = jnp.swapaxes(A, 1, 2)  # channels on the fast axis inside the kernel
    D3 = D[:, None, :] if D is not None else None
    bias3 = bias[:, None, :] if bias is not None else None
    return _scan(plan, u, dt, A_SND, B, C, D3, z, bias3)


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
    backend: Backend | None = None,
    backward: Literal["kernel", "reference"] = "kernel",
) -> Float[Array, "B L D"]:
    """Mamba v1 selective scan with Pallas forward and backward kernels (same contract as
    `nanodna.ops.scan.selective_scan_ref`). `backend`: None = backend_for_platform(); chunk and
    block_d: None = the backend's defaults; `backward="reference"` differentiates a lax.scan
    instead of running the backward kernel. Raises ValueError for wrong shapes or sizes."""
    check_inputs(u, delta, A, B, C, D, z, delta_bias)
    plan = make_plan(
        n_dir=1, reverse=bool(reverse), L=u.shape[1], D=u.shape[2], softplus=bool(delta_softplus),
        has_D=D is not None, has_z=z is not None, has_bias=delta_bias is not None,
        chunk=chunk, block_d=block_d, backend=backend, backward=backward,
    )  # fmt: skip
    one = lambda x: None if x is None else x[None]  # noqa: E731  (a free reshape, not a copy)
    return scan_stacked(plan, one(u), one(delta), one(A), one(B), one(C), one(D), z,
                        one(delta_bias))  # fmt: skip
