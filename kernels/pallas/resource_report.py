"""Registers, spills and shared memory of the GPU kernels, without a GPU.

    pip install --target /tmp/trit --no-deps triton     # any recent Triton; not a dependency
    PYTHONPATH=/tmp/trit python -m kernels.pallas.resource_report --warps 1,4

Pallas lowers each kernel to a Triton module (TTIR) in Python; Triton's own compiler turns it
into PTX for sm_90a and ptxas reports what each thread needs. Register pressure decides how
many programs share an SM, and a latency-bound scan lives on that. This reads JAX internals
(the Triton lowering function), so it is a developer's tool, not part of the library.

Glossary: L length, D channels, N state size.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile

import jax
import jax.numpy as jnp

from kernels.pallas.plan import Backend, make_plan
from kernels.pallas.selective_scan import scan_stacked


def triton_modules(L=512, D=768, N=16, **plan_kw) -> dict[str, str]:
    """TTIR text of the forward and backward kernels for one plan (l20 shape by default)."""
    # A JAX internal (it may move between releases): imported here so that the rest of this
    # tool, and the test that notices such a move, fail with an ImportError of their own.
    from jax._src.pallas.triton import pallas_call_registration as registration

    captured, lower = [], registration.lowering.lower_jaxpr_to_triton_module

    def capture(*args, **kwargs):
        result = lower(*args, **kwargs)
        captured.append(result.module.operation.get_asm(print_generic_op_form=True))
        return result

    plan = make_plan(n_dir=1, reverse=False, L=L, D=D, softplus=True, has_D=True, has_z=True,
                     has_bias=True, backend=Backend("triton"), **plan_kw)  # fmt: skip
    ks = jax.random.split(jax.random.key(0), 3)
    seq = jax.random.normal(ks[0], (1, 1, L, D), jnp.bfloat16)
    mat = jax.random.normal(ks[1], (1, 1, L, N), jnp.bfloat16)
    A, vec = -jnp.ones((1, D, N)), jax.random.normal(ks[2], (1, D))

    def loss(seq):
        return scan_stacked(plan, seq, seq, A, mat, mat, vec, seq[0, 0][None], vec).sum()

    registration.lowering.lower_jaxpr_to_triton_module = capture
    try:
        jax.jit(jax.grad(loss)).trace(seq).lower(lowering_platforms=("cuda",))
    finally:
        registration.lowering.lower_jaxpr_to_triton_module = lower
    return dict(zip(("forward", "backward"), captured))


def ptxas_report(ttir: str, num_warps: int) -> str:
    """Compile TTIR for sm_90a with Triton, then ask ptxas for its resource line."""
    import triton  # optional: the Triton package is installed only where this tool is run
    from triton.backends.compiler import GPUTarget

    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "kernel.ttir")
        with open(src, "w") as f:
            f.write(ttir)
        kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                                options={"num_warps": num_warps, "num_stages": 1})  # fmt: skip
        ptx = os.path.join(tmp, "kernel.ptx")
        with open(ptx, "w") as f:
            f.write(kernel.asm["ptx"])
        # The ptxas that ships with Triton and understands its PTX version.
        bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
        for name in ("ptxas-blackwell", "ptxas"):
            cmd = [os.path.join(bin_dir, name), "-arch=sm_90a", "-v", ptx,
                   "-o", os.path.join(tmp, "k.cubin")]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode == 0:
                lines = re.findall(r"(Used \d+ registers.*|\d+ bytes spill stores.*)", out.stderr)
                return "; ".join(lines) + f"; shared {kernel.metadata.shared} B"
        return f"ptxas failed: {out.stderr.strip()[:300]}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--warps", default="1,2,4")
    p.add_argument("--block-d", default="32,64")
    p.add_argument("--chunk", type=int, default=None)
    p.add_argument("--registers", action="store_true", help="bwd_in_registers variant")
    args = p.parse_args(argv)
    for block_d in map(int, args.block_d.split(",")):
        modules = triton_modules(block_d=block_d, chunk=args.chunk,
                                 bwd_in_registers=args.registers)  # fmt: skip
        for warps in map(int, args.warps.split(",")):
            for name, ttir in modules.items():
                print(f"block_d={block_d:4d} warps={warps} {name:8s} "
                      f"{ptxas_report(ttir, warps)}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
