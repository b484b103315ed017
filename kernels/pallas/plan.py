"""Planning shared by both lowerings: the backend type, the launch plan, geometry and padding.

Glossary: S scan directions in one launch (1, or 2 for BiMamba), B batch, L length, D channels
(d_inner), N state size, K chunks along L; n_tiles channel tiles (no letter of their own).

selective_scan.py (the portable program: interpreter, Triton, Mosaic TPU) and mosaic_gpu.py
(the Hopper warpgroup program) both import what is here and nothing private from each other.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Literal

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

# ----------------------------------------------------------------------------- the backend

Lowering = Literal["interpreter", "triton", "mosaic_tpu", "mosaic_gpu"]
LOWERINGS = ("interpreter", "triton", "mosaic_tpu", "mosaic_gpu")


@dataclasses.dataclass(frozen=True)
class Backend:
    """Which program the kernels are lowered to, and whether it is run in an interpreter.

    lowering:
      "interpreter"  the portable grid program in Pallas' generic interpreter (CPU; chunks a
                     sequential grid axis). Needs interpret=True.
      "mosaic_tpu"   TPU: the same grid, state and workspace in VMEM scratch. interpret=True
                     runs it in Pallas' TPU interpreter (NaN-poisoned buffers: an unwritten
                     output element shows).
      "triton"       GPU before Hopper (and ROCm): each program loops over all chunks itself,
                     the workspace is a discarded output. interpret=True: generic interpreter.
      "mosaic_gpu"   Hopper and newer: the warpgroup program of mosaic_gpu.py. interpret=True
                     runs it in JAX's GPU interpreter on CPU.
    """

    lowering: Lowering
    interpret: bool = False

    def __post_init__(self):
        if self.lowering not in LOWERINGS:
            raise ValueError(f"lowering must be one of {LOWERINGS}, got {self.lowering!r}")
        if self.lowering == "interpreter" and not self.interpret:
            raise ValueError("the 'interpreter' lowering only runs with interpret=True")

    @property
    def name(self) -> str:
        """"interpreter", "triton", "triton_interpret", ... (benchmark keys, command lines)."""
        if self.lowering == "interpreter":
            return self.lowering
        return self.lowering + ("_interpret" if self.interpret else "")

    @staticmethod
    def named(name: str) -> Backend:
        """The inverse of `name`: "mosaic_gpu_interpret" -> Backend("mosaic_gpu", True)."""
        lowering, interpret = name, False
        if name.endswith("_interpret"):
            lowering, interpret = name[: -len("_interpret")], True
        if name == "interpreter":
            interpret = True
        if lowering not in LOWERINGS:
            names = [b.name for b in ALL_BACKENDS]
            raise ValueError(f"unknown Pallas backend {name!r}; choose one of {names}")
        return Backend(lowering, interpret)  # type: ignore[arg-type]


INTERPRETER = Backend("interpreter", interpret=True)
ALL_BACKENDS = (INTERPRETER,) + tuple(
    Backend(low, interp) for low in LOWERINGS[1:] for interp in (False, True)
)
GPU_BACKEND_ENV = "NANODNA_PALLAS_GPU"  # "mosaic_gpu" or "triton": overrides the choice below


def backend_for_platform(platform: str | None = None) -> Backend:
    """Which lowering to use on `platform` (default: the default JAX backend).

    GPU: Mosaic GPU (mosaic_gpu.py) on Hopper and newer, whose TMA copies and warpgroup
    programs it needs; Triton on older GPUs and ROCm. Set NANODNA_PALLAS_GPU=triton to use
    the Triton kernels on Hopper too. CPU: the interpreter.
    """
    platform = (platform or jax.default_backend()).lower()
    if platform in ("gpu", "cuda", "rocm"):
        choice = os.environ.get(GPU_BACKEND_ENV, "").strip().lower()
        if choice in ("mosaic_gpu", "triton"):
            return Backend(choice)
        if choice:
            raise ValueError(f"{GPU_BACKEND_ENV} must be mosaic_gpu or triton, got {choice!r}")
        return Backend("mosaic_gpu" if is_hopper_or_newer() else "triton")
    if platform == "tpu":
        return Backend("mosaic_tpu")
    return INTERPRETER


def is_hopper_or_newer() -> bool:
    """Whether device 0 is an NVIDIA GPU of compute capability 9 (Hopper) or newer."""
    try:
        major = int(str(jax.devices()[0].compute_capability).split(".")[0])
    except (AttributeError, ValueError, RuntimeError):  # ROCm, or no GPU in this process
        return False
    return major >= 9


# ----------------------------------------------------------------------------- the plan


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
    backend: Backend
    num_warps: int = 4  # Triton only: threads per program / 32
    num_stages: int = 1  # Triton only: software-pipelining depth of the time loop
    bwd_in_registers: bool = False  # unroll the backward's chunk: states in registers, no ws
    # "kernel": the Pallas backward; "reference": autodiff of a plain lax.scan (xla_backward.py),
    # for a kernel under tuning whose backward is not trusted yet.
    backward: Literal["kernel", "reference"] = "kernel"

    @property
    def triton_layout(self) -> bool:
        """GPU layout: chunks loop inside one program, no scratch, power-of-two N."""
        return self.backend.lowering == "triton"

    @property
    def mosaic_gpu(self) -> bool:
        """The warpgroup program of mosaic_gpu.py: one thread per channel, W = 128 channels."""
        return self.backend.lowering == "mosaic_gpu"

    @property
    def grid_chunks(self) -> bool:
        """Chunks as a sequential grid axis (TPU, interpreter), or a loop in one program (GPU)."""
        return not (self.triton_layout or self.mosaic_gpu)


def round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def default_sizes(backend: Backend, L: int, D: int) -> tuple[int, int]:
    """(chunk, block_d) per lowering; small inputs get blocks no larger than themselves."""
    if backend.lowering == "triton":
        # block_d a power of two (Triton tensors). 64 channels x 16 states: no spills at 4 warps
        # (BENCHMARKS.md, kernels: compiler resource report), and half the dB/dC partial-sum
        # traffic of 32. A short chunk keeps the backward's workspace in L2.
        return min(32, round_up(L, 8)), 64
    if backend.lowering == "mosaic_gpu":
        # One thread per channel of a 128-thread warpgroup; 16-row chunks keep the backward's
        # double-buffered blocks within shared memory for float32 (mosaic_gpu.smem_bytes).
        return min(16, round_up(L, 8)), 128
    # TPU: (sublane, lane) multiples.
    chunk, block_d = (128, 128) if backend.lowering == "mosaic_tpu" else (64, 128)
    if D <= block_d:
        block_d = D  # one tile equal to the full axis is always a legal block
    return min(chunk, round_up(L, 8)), block_d


def make_plan(
    *, n_dir, reverse, L, D, softplus, has_D, has_z, has_bias, chunk=None, block_d=None,
    backend: Backend | None = None, num_warps=4, num_stages=1, bwd_in_registers=False,
    backward: Literal["kernel", "reference"] = "kernel",
) -> Plan:
    """Pick block sizes for `backend` (None: backend_for_platform()).

    num_warps / num_stages tune the Triton program, bwd_in_registers the backward's storage
    (short chunks only: the chunk is unrolled); the benchmark sweeps them. Raises ValueError
    for sizes the backend cannot run.
    """  # fmt: skip
    backend = backend_for_platform() if backend is None else backend
    if not isinstance(backend, Backend):
        raise ValueError(f"backend must be a Backend (Backend.named(...)), got {backend!r}")
    if backward not in ("kernel", "reference"):
        raise ValueError(f"backward must be 'kernel' or 'reference', got {backward!r}")
    d_chunk, d_block = default_sizes(backend, L, D)
    chunk, block_d = chunk or d_chunk, block_d or d_block
    if chunk < 1 or block_d < 1:
        raise ValueError(f"chunk and block_d must be positive, got {chunk} and {block_d}")
    if backend.lowering == "triton" and block_d & (block_d - 1):
        raise ValueError(f"Triton needs a power-of-two block_d, got {block_d}")
    if backend.lowering == "mosaic_gpu" and block_d != 128:
        raise ValueError(
            f"Mosaic GPU runs one thread per channel: block_d must be 128, got {block_d}"
        )
    return Plan(n_dir, reverse, softplus, has_D, has_z, has_bias, chunk, block_d, backend,
                num_warps, num_stages, bwd_in_registers, backward)  # fmt: skip


def check_inputs(u, delta, A, B, C, D, z, delta_bias):
    """One-line ValueErrors for wrong layouts of one direction's inputs, before any tracing."""
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


# ----------------------------------------------------------------------------- geometry


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Padded sizes of one launch and how its grid walks them."""

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
        return Geometry(S, B, L, D, N, D // plan.block_d, n_chunks, n_grid, n_inner,
                        n_inner * plan.chunk)  # fmt: skip


def pad_to(x, axis, size):
    """Zero-pad `axis` of x (None passes through) to `size`."""
    if x is None or x.shape[axis] == size:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, widths)  # zeros leave the scan unchanged: see padded


def padded(plan: Plan, u, dt, A, B, C, D, z, bias):
    """(Geometry, padded inputs): L to whole chunks, D to whole tiles, N to a power of two on
    Triton and to a multiple of 8 on Mosaic GPU (B/C rows of >= 16 bytes for TMA).

    Zero padding is neutral: a padded step has u = 0, so the state it enters stays what it was
    (forward) or stays 0 (reverse, where the padding comes first); padded channels and states
    have A = B = C = 0 and are cropped off.
    """
    S, Bz, L, Dc = u.shape
    N = A.shape[-2]
    Lp, Dp = round_up(L, plan.chunk), round_up(Dc, plan.block_d)
    Np = pl.next_power_of_2(N) if plan.triton_layout else N
    if plan.mosaic_gpu:
        Np = round_up(N, 8)
    u, dt = pad_to(pad_to(u, 2, Lp), 3, Dp), pad_to(pad_to(dt, 2, Lp), 3, Dp)
    z = pad_to(pad_to(z, 1, Lp), 2, Dp)
    B, C = pad_to(pad_to(B, 2, Lp), 3, Np), pad_to(pad_to(C, 2, Lp), 3, Np)
    A = pad_to(pad_to(A, 1, Np), 2, Dp)
    D, bias = pad_to(D, 2, Dp), pad_to(bias, 2, Dp)
    return Geometry.of(plan, S, Bz, Lp, Dp, Np), (u, dt, A, B, C, D, z, bias)


# ----------------------------------------------------------------------------- indices


def is_reversed(plan: Plan, s):
    """Whether direction s scans from the end: static for one direction, traced for two."""
    return (s == 1) if plan.n_dir == 2 else plan.reverse


def flip_if(rev, i, n):
    """Index i counted from the end of an axis of length n when rev; no data is ever flipped."""
    if isinstance(rev, bool):
        return n - 1 - i if rev else i
    return jnp.where(rev, n - 1 - i, i)


def negate(rev):
    return jnp.logical_not(rev) if not isinstance(rev, bool) else not rev


def sigmoid(x):
    return 1.0 / (1.0 + jnp.exp(-x))


def in_names(plan: Plan):
    """(name, present) of the kernel inputs, in launch order; absent optional ones are skipped."""
    return [
        ("u", True), ("dt", True), ("A", True), ("B", True), ("C", True),
        ("D", plan.has_D), ("z", plan.has_z), ("bias", plan.has_bias),
    ]  # fmt: skip


def backward_out_types(plan: Plan, g: Geometry, u, dt, z):
    """(name, type) of the backward launch's gradient outputs, in backward_outputs' order."""
    S, Bz, L, Dc, N, n_tiles = g.S, g.B, g.L, g.D, g.N, g.n_tiles
    f32 = jnp.float32
    seq = lambda dtype: jax.ShapeDtypeStruct((S, Bz, L, Dc), dtype)  # noqa: E731
    outs = [
        ("du", seq(u.dtype)),
        ("ddt", seq(dt.dtype)),
        ("dA", jax.ShapeDtypeStruct((S, Bz, N, Dc), f32)),  # per batch row
        ("dB", jax.ShapeDtypeStruct((S, Bz, n_tiles, L, N), f32)),  # per channel tile
        ("dC", jax.ShapeDtypeStruct((S, Bz, n_tiles, L, N), f32)),
    ]
    if plan.has_D:
        outs.append(("dD", jax.ShapeDtypeStruct((S, Bz, 1, Dc), f32)))
    if plan.has_z:
        outs.append(("dz", seq(z.dtype)))
    if plan.has_bias:
        outs.append(("dbias", jax.ShapeDtypeStruct((S, Bz, 1, Dc), f32)))
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
