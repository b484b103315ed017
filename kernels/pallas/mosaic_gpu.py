"""The selective-scan kernels written for Mosaic GPU, the default GPU lowering of current JAX.

Same maths, inputs, outputs and saved states as selective_scan.py (read that first); what
differs is how a program holds its data. A Mosaic GPU program is one warpgroup, 128 threads,
computing on arrays spread over those threads by a layout. Here thread i owns channel i of the
program's 128-channel tile, so the state is N arrays of 128 values (h_n, one per state index
n) and one time step is elementwise work plus 2N scalar reads of B_t and C_t from shared
memory: nothing moves between threads in the forward. The backward's dB_t and dC_t are sums
over channels, the only cross-thread reductions.

Glossary: S directions, B batch, L length, D channels, N state size, K chunks of `chunk` rows,
n_tiles channel tiles of W = 128 channels (here W is a tile's width); `sub` rows per
register-resident piece of a chunk. A lower-case letter marks a Python list over that axis:
h_nW is N arrays of W values, B_n N scalars.

Memory: the sequence arrays stay in device memory (GMEM). `plgpu.emit_pipeline` streams
`chunk`-row blocks of them through shared memory (SMEM) with TMA copies, two blocks in flight,
and carries the state from chunk to chunk in registers; outputs go back through two SMEM slots
per output (`_Outbox`), one filled while TMA sends the other. The reverse direction only
changes which block and which row is read (index arithmetic, nothing flipped). `smem_bytes`
counts what a program holds: the chunk length trades shared memory (blocks per SM) against
saved-state traffic.

Backward, per chunk (chunks walked against the scan): one pass recomputes the chunk's states
from its saved entry state and keeps every `sub`-th state in an SMEM workspace (chunk/sub, N, W);
then each piece of `sub` rows, last first, is recomputed into registers (unrolled) and the
adjoint walks back through it. No (B, L, D, N) array and no per-step state touches GMEM.

Backends: Backend("mosaic_gpu") compiles for the GPU (Hopper or newer: TMA, warpgroups);
Backend("mosaic_gpu", interpret=True) runs the same program in JAX's GPU interpreter on CPU
(simulated SMEM, TMA and barriers; NaN-filled fresh buffers). The interpreter does not model
the asynchrony of TMA stores (a missing commit_smem / wait_smem_to_gmem still passes there), so
those fences are only proven on a GPU: benchmarks/bench_pallas.py checks parity there before it
times anything.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
try:  # optional: jaxlib's Mosaic GPU dialect, which a TPU or ROCm install may lack
    from jax.experimental.pallas import mosaic_gpu as plgpu
except ImportError:  # the portable kernels still import; these launches then refuse to run
    plgpu = None

from kernels.pallas.plan import (
    Backend,
    backward_out_types,
    backward_outputs,
    flip_if,
    in_names,
    is_reversed,
    negate,
    sigmoid,
)

_F32 = jnp.float32
W = 128  # channels per program: one per thread of a warpgroup


def interpret_params():
    """JAX's GPU interpreter settings (public in jax >= 0.11, private before)."""
    params = getattr(plgpu, "InterpretParams", None)
    if params is None:
        from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams as params
    return params()


def _launch(body, plan, grid, out_type, scratch_types, name):
    """A warpgroup program per grid point (direction s, batch row b, channel tile t)."""
    if plgpu is None:
        raise RuntimeError("this jaxlib has no Mosaic GPU dialect: set NANODNA_PALLAS_GPU=triton")
    interpret = interpret_params() if plan.backend == Backend("mosaic_gpu", True) else None
    body.__name__ = name  # plgpu.kernel names the kernel after its body (profiles, HLO)
    return plgpu.kernel(body, out_type=out_type, scratch_types=scratch_types, grid=grid,
                        grid_names=_GRID_NAMES, compiler_params=plgpu.CompilerParams(),
                        interpret=interpret)  # fmt: skip


_GRID_NAMES = ("s", "b", "t")


def _softplus(x):
    # log(1 + exp(x)): Mosaic GPU lowers log and exp but not log1p; threshold as in mamba-ssm.
    return jnp.where(x > 20.0, x, jnp.log(1.0 + jnp.exp(jnp.minimum(x, 20.0))))




class _Row:
    """One time step's inputs for this program's channels, read from SMEM blocks at `row`."""

    def __init__(self, plan, blocks, row, A_n, bias_W):
        u_s, dt_s, B_s, C_s, z_s = blocks
        N = len(A_n)
        self.u_W = u_s[row, :].astype(_F32)
        self.dt_raw_W = dt_s[row, :].astype(_F32)
        if bias_W is not None:
            self.dt_raw_W = self.dt_raw_W + bias_W
        self.dt_W = _softplus(self.dt_raw_W) if plan.softplus else self.dt_raw_W
        self.B_n = [B_s[row, n].astype(_F32) for n in range(N)]  # scalars, same for all threads
        self.C_n = [C_s[row, n].astype(_F32) for n in range(N)]
        self.z_W = z_s[row, :].astype(_F32) if z_s is not None else None
        self.dtu_W = self.dt_W * self.u_W
        self.dA_nW = [jnp.exp(self.dt_W * A_W) for A_W in A_n]

    def advance(self, h_nW):
        return [dA * h + b * self.dtu_W for dA, h, b in zip(self.dA_nW, h_nW, self.B_n)]

    def output(self, h_nW, D_W):
        """y before the gate: sum_n C_n h_n + D u."""
        y_W = self.C_n[0] * h_nW[0]
        for c, h in zip(self.C_n[1:], h_nW[1:]):
            y_W = y_W + c * h
        return y_W + D_W * self.u_W if D_W is not None else y_W


def _param_names(plan):
    """The per-channel parameters a program copies into SMEM first (and the backward reuses
    the same buffers for their gradients)."""
    return ["A"] + ["D"] * plan.has_D + ["bias"] * plan.has_bias


def _param_scratch(plan, N):
    return [plgpu.SMEM((N, W), _F32)] + [plgpu.SMEM((1, W), _F32)] * (plan.has_D + plan.has_bias)


def _program(plan, r):
    """What every program reads first: its indices, direction, and per-channel parameters."""
    s, b, t = (jax.lax.axis_index(name) for name in _GRID_NAMES)
    rev = is_reversed(plan, s)  # a Python bool for one direction, traced for two
    cols = pl.ds(t * W, W)
    names = _param_names(plan)

    def load(barrier):  # one TMA copy each, all counted by one barrier
        for name in names:
            plgpu.copy_gmem_to_smem(r[name].at[s, :, cols], r[name + "_s"], barrier)
        plgpu.barrier_wait(barrier)

    pl.run_scoped(load, plgpu.Barrier(num_arrivals=len(names)))
    A_n = [r["A_s"][n, :] for n in range(r["A_s"].shape[0])]  # (W,) each, float32
    D_W = r["D_s"][0, :] if plan.has_D else None
    bias_W = r["bias_s"][0, :] if plan.has_bias else None
    return s, b, t, rev, A_n, D_W, bias_W, cols


class _Outbox:
    """Output blocks: the program fills one of two SMEM slots per chunk while TMA sends the
    previous chunk's slot to GMEM. (emit_pipeline's own output copies are predicated, which
    JAX's GPU interpreter cannot run yet, so outputs are sent by hand.)"""

    def __init__(self, bufs, dsts):
        self.bufs, self.dsts = bufs, dsts  # SMEM (2, *block) slots; GMEM views, indexed by block

    def open(self, k):
        plgpu.wait_smem_to_gmem(1, wait_read_only=True)  # slot k % 2 was last sent at step k-2
        return [buf.at[k % 2] for buf in self.bufs]

    def send(self, k, where):
        plgpu.commit_smem()  # the threads' SMEM writes, made visible to the TMA engine
        last = len(self.bufs) - 1
        for i, (buf, dst, w) in enumerate(zip(self.bufs, self.dsts, where)):
            plgpu.copy_smem_to_gmem(buf.at[k % 2], dst.at[w], commit_group=i == last)

    @staticmethod
    def close():
        plgpu.wait_smem_to_gmem(0)


def _slots(shape, dtype):
    return plgpu.SMEM((2, *shape), dtype)


def _zeros_like_state(A_W):
    # A zero with the thread-strided layout the loop carries (a literal would be a splat).
    return 0.0 * A_W


# ----------------------------------------------------------------------------- forward


def _fwd_kernel(*refs, plan, names, K, N):
    r = dict(zip(names, refs))
    s, b, t, rev, A_n, D_W, bias_W, cols = _program(plan, r)
    blk = lambda k: flip_if(rev, k, K)  # noqa: E731  (chunk k of the scan's walk)
    seq_W = pl.BlockSpec((plan.chunk, W), lambda k: (blk(k), 0))
    seq_N = pl.BlockSpec((plan.chunk, N), lambda k: (blk(k), 0))
    gmem = [r["u"].at[s, b, :, cols], r["dt"].at[s, b, :, cols], r["B"].at[s, b], r["C"].at[s, b]]
    specs = [seq_W, seq_W, seq_N, seq_N]
    if plan.has_z:
        gmem.append(r["z"].at[b, :, cols])
        specs.append(seq_W)
    outbox = _Outbox([r["y_o"], r["hs_o"]], [r["y"].at[s, b, :, cols], r["hs"].at[s, b, :, :, cols]])

    def body(idx, *blocks_and_carry):
        *blocks, h_nW = blocks_and_carry
        k, kk = idx[0], blk(idx[0])
        y_s, hs_s = outbox.open(k)
        z_s = blocks[4] if plan.has_z else None
        for n in range(N):  # entry state of the chunk, for the backward
            hs_s[n, :] = h_nW[n]

        def step(j, h_nW):
            row = flip_if(rev, j, plan.chunk)
            st = _Row(plan, (*blocks[:4], z_s), row, A_n, bias_W)
            h_nW = st.advance(list(h_nW))
            y_W = st.output(h_nW, D_W)
            if st.z_W is not None:
                y_W = y_W * st.z_W * sigmoid(st.z_W)
            y_s[row, :] = y_W.astype(y_s.dtype)
            return tuple(h_nW)

        h_nW = jax.lax.fori_loop(0, plan.chunk, step, h_nW)
        outbox.send(k, [pl.ds(kk * plan.chunk, plan.chunk), kk])
        return h_nW

    h0 = tuple(_zeros_like_state(A_n[0]) for _ in range(N))
    pipeline = plgpu.emit_pipeline(body, grid=(K,), in_specs=specs, max_concurrent_steps=2,
                                   init_carry=h0)  # fmt: skip
    pipeline(*gmem)
    outbox.close()


def fwd_call(plan, g, u, dt, A, B, C, D, z, bias):
    """Forward launch: y (S B L D) and the chunk entry states hs (S B K N D)."""
    _check_smem(plan, g.N, u.dtype.itemsize)
    names, arrays = _inputs(plan, u, dt, A, B, C, D, z, bias)
    names += ["y", "hs"] + [p + "_s" for p in _param_names(plan)] + ["y_o", "hs_o"]
    kernel = functools.partial(_fwd_kernel, plan=plan, names=names, K=g.n_chunks, N=g.N)
    out_type = [
        jax.ShapeDtypeStruct((g.S, g.B, g.L, g.D), u.dtype),
        jax.ShapeDtypeStruct((g.S, g.B, g.n_chunks, g.N, g.D), _F32),
    ]
    scratch = _param_scratch(plan, g.N) + [_slots((plan.chunk, W), u.dtype),
                                           _slots((g.N, W), _F32)]  # fmt: skip
    return _launch(kernel, plan, (g.S, g.B, g.n_tiles), out_type, scratch,
                   "selective_scan_fwd_mgpu")(*arrays)  # fmt: skip


def _inputs(plan, *inputs):
    """The present inputs (u, dt, A, B, C, D, z, bias) and their names, all left in GMEM."""
    present = [(name, x) for (name, on), x in zip(in_names(plan), inputs) if on]
    return [name for name, _ in present], [x for _, x in present]


# ----------------------------------------------------------------------------- backward


def _bwd_kernel(*refs, plan, names, K, N, sub):
    """Adjoint scan; the equations are in selective_scan._bwd_kernel's docstring."""
    r = dict(zip(names, refs))
    s, b, t, rev, A_n, D_W, bias_W, cols = _program(plan, r)
    back = negate(rev)
    blk = lambda k: flip_if(back, k, K)  # noqa: E731  (the adjoint walks against the scan)
    seq_W = pl.BlockSpec((plan.chunk, W), lambda k: (blk(k), 0))
    seq_N = pl.BlockSpec((plan.chunk, N), lambda k: (blk(k), 0))
    gmem = [r["u"].at[s, b, :, cols], r["dt"].at[s, b, :, cols], r["B"].at[s, b],
            r["C"].at[s, b], r["hs"].at[s, b, :, :, cols], r["dout"].at[b, :, cols]]  # fmt: skip
    specs = [seq_W, seq_W, seq_N, seq_N, pl.BlockSpec((None, N, W), lambda k: (blk(k), 0, 0)),
             seq_W]  # fmt: skip
    if plan.has_z:
        gmem.append(r["z"].at[b, :, cols])
        specs.append(seq_W)
    out_names = ["du", "ddt", "dB", "dC"] + ["dz"] * plan.has_z
    outbox = _Outbox([r[o + "_o"] for o in out_names],
                     [r[o].at[s, b, t] if o in ("dB", "dC") else r[o].at[s, b, :, cols]
                      for o in out_names])  # fmt: skip
    ws = r["ws"]  # (chunk // sub, N, W): the state entering each piece of the chunk

    def body(idx, *blocks_and_carry):
        *blocks, carry = blocks_and_carry
        k, kk = idx[0], blk(idx[0])
        u_s, dt_s, B_s, C_s, hs_s, dout_s = blocks[:6]
        z_s = blocks[6] if plan.has_z else None
        du_s, ddt_s, dB_s, dC_s, *dz_s = outbox.open(k)
        dz_s = dz_s[0] if plan.has_z else None
        in_blocks = (u_s, dt_s, B_s, C_s, z_s)
        row_of = lambda j: flip_if(rev, j, plan.chunk)  # noqa: E731  (j in the scan's order)

        def save_piece(q, h_nW):  # forward over piece q from its entry state, saving that
            for n in range(N):
                ws[q, n, :] = h_nW[n]
            h_nW = list(h_nW)
            for i in range(sub):
                h_nW = _Row(plan, in_blocks, row_of(q * sub + i), A_n, bias_W).advance(h_nW)
            return tuple(h_nW)

        jax.lax.fori_loop(0, plan.chunk // sub, save_piece,
                          tuple(hs_s[n, :] for n in range(N)))  # fmt: skip

        def adjoint_step(row, h_prev_nW, carry):
            g_nW, dA_nW, dD_W, dbias_W = carry
            st = _Row(plan, in_blocks, row, A_n, bias_W)
            h_nW = st.advance(h_prev_nW)
            dy_W = dout_s[row, :].astype(_F32)
            if st.z_W is not None:
                y_W = st.output(h_nW, D_W)
                sig_W = sigmoid(st.z_W)
                dz_W = dy_W * y_W * sig_W * (1.0 + st.z_W * (1.0 - sig_W))
                dz_s[row, :] = dz_W.astype(dz_s.dtype)
                dy_W = dy_W * st.z_W * sig_W
            g_nW = [g + c * dy_W for g, c in zip(g_nW, st.C_n)]  # dL/dh_t
            gB_W = g_nW[0] * st.B_n[0]
            for g, bn in zip(g_nW[1:], st.B_n[1:]):
                gB_W = gB_W + g * bn
            gAh_nW = [g * dA * h for g, dA, h in zip(g_nW, st.dA_nW, h_prev_nW)]
            du_W = gB_W * st.dt_W
            if D_W is not None:
                du_W = du_W + dy_W * D_W
                dD_W = dD_W + dy_W * st.u_W
            ddt_W = gB_W * st.u_W
            for gah, A_W in zip(gAh_nW, A_n):
                ddt_W = ddt_W + gah * A_W
            if plan.softplus:
                ddt_W = ddt_W * sigmoid(st.dt_raw_W)
            dbias_W = dbias_W + ddt_W
            dA_nW = [acc + gah * st.dt_W for acc, gah in zip(dA_nW, gAh_nW)]
            du_s[row, :] = du_W.astype(du_s.dtype)
            ddt_s[row, :] = ddt_W.astype(ddt_s.dtype)
            for n in range(N):  # sums over this tile's channels; XLA adds the tiles
                dB_s[row, n] = jnp.sum(g_nW[n] * st.dtu_W)
                dC_s[row, n] = jnp.sum(h_nW[n] * dy_W)
            g_next = [dA * g for dA, g in zip(st.dA_nW, g_nW)]  # what h_{t-1} receives
            return g_next, dA_nW, dD_W, dbias_W

        def adjoint_piece(i, carry):
            q = plan.chunk // sub - 1 - i
            states = [[ws[q, n, :] for n in range(N)]]  # registers: unrolled over the piece
            for j in range(sub - 1):
                st = _Row(plan, in_blocks, row_of(q * sub + j), A_n, bias_W)
                states.append(st.advance(states[-1]))
            carry = tuple(map(list, carry[:2])) + tuple(carry[2:])
            for j in reversed(range(sub)):
                carry = adjoint_step(row_of(q * sub + j), states[j], carry)
            return tuple(map(tuple, carry[:2])) + tuple(carry[2:])

        carry = jax.lax.fori_loop(0, plan.chunk // sub, adjoint_piece, carry)
        rows = pl.ds(kk * plan.chunk, plan.chunk)
        outbox.send(k, [rows] * len(out_names))
        return carry

    zero = _zeros_like_state(A_n[0])
    init = (tuple(zero for _ in range(N)), tuple(zero for _ in range(N)), zero, zero)
    pipeline = plgpu.emit_pipeline(body, grid=(K,), in_specs=specs, max_concurrent_steps=2,
                                   init_carry=init)  # fmt: skip
    _, dA_nW, dD_W, dbias_W = pipeline(*gmem)
    outbox.close()
    # Parameter gradients, one block per (direction, batch row, tile), staged through the
    # parameters' own SMEM buffers (the parameters are in registers by now).
    for n in range(N):
        r["A_s"][n, :] = dA_nW[n]
    if plan.has_D:
        r["D_s"][0, :] = dD_W
    if plan.has_bias:
        r["bias_s"][0, :] = dbias_W
    plgpu.commit_smem()
    for name in _param_names(plan):
        plgpu.copy_smem_to_gmem(r[name + "_s"], r["d" + name].at[s, b, :, cols])
    plgpu.wait_smem_to_gmem(0)


def bwd_call(plan, g, u, dt, A, B, C, D, z, bias, hs, dout):
    """Backward launch, with the portable backward's outputs (plan.backward_out_types) (partial sums included)."""
    names, arrays = _inputs(plan, u, dt, A, B, C, D, z, bias)
    names += ["hs", "dout"]
    arrays += [hs, dout]
    S, Bz, N, n_tiles = g.S, g.B, g.N, g.n_tiles
    outs = backward_out_types(plan, g, u, dt, z)
    names += [name for name, _ in outs] + ["ws"] + [p + "_s" for p in _param_names(plan)]
    out_slots = [("du", (plan.chunk, W), u.dtype), ("ddt", (plan.chunk, W), dt.dtype),
                 ("dB", (plan.chunk, N), _F32), ("dC", (plan.chunk, N), _F32)]
    if plan.has_z:
        out_slots.append(("dz", (plan.chunk, W), z.dtype))
    names += [name + "_o" for name, _, _ in out_slots]
    sub = sub_chunk(plan.chunk)
    kernel = functools.partial(_bwd_kernel, plan=plan, names=names, K=g.n_chunks, N=N, sub=sub)
    scratch = [plgpu.SMEM((plan.chunk // sub, N, W), _F32)] + _param_scratch(plan, N)
    scratch += [_slots(shape, dtype) for _, shape, dtype in out_slots]
    results = _launch(kernel, plan, (S, Bz, n_tiles), [o for _, o in outs], scratch,
                      "selective_scan_bwd_mgpu")(*arrays)  # fmt: skip
    return backward_outputs(plan, results)


SMEM_BUDGET = 220 * 1024  # of the 227 KiB a Hopper block may use, some left for the runtime


def smem_bytes(chunk: int, N: int, itemsize: int, backward: bool) -> int:
    """Shared memory one program allocates: two slots of every streamed block, the outbox's
    two slots, the parameters and (backward) the piece-entry states."""
    params = (N + 2) * W * 4
    if not backward:  # in: u, dt, z (W wide), B, C (N wide); out: y, hs
        return 2 * (3 * chunk * W + 2 * chunk * N) * itemsize + 2 * (chunk * W * itemsize
                                                                     + N * W * 4) + params
    ins = 2 * ((4 * chunk * W + 2 * chunk * N) * itemsize + N * W * 4)  # u dt z dout B C, hs
    outs = 2 * (3 * chunk * W * itemsize + 2 * chunk * N * 4)  # du ddt dz, dB dC
    return ins + outs + (chunk // sub_chunk(chunk)) * N * W * 4 + params


def _check_smem(plan, N, itemsize):
    need = smem_bytes(plan.chunk, N, itemsize, backward=True)
    if need > SMEM_BUDGET:
        raise ValueError(
            f"Mosaic GPU scan: chunk={plan.chunk} with N={N} needs {need // 1024} KiB of shared "
            f"memory (> {SMEM_BUDGET // 1024} KiB); pass a smaller chunk (8 or 16)"
        )


def sub_chunk(chunk: int) -> int:
    """Rows per register-resident piece of the backward: 8, or the chunk if that divides less."""
    return 8 if chunk % 8 == 0 else chunk
