"""Pallas selective-scan kernels (forward + backward), the fused bidirectional launch, sharding.

`selective_scan_pallas` has the contract of `nanodna.ops.scan.selective_scan_ref`; it runs on
GPU (Mosaic GPU on Hopper and newer, Triton before), TPU (Mosaic) and, in interpret mode, on
CPU. Read plan.py (backends, geometry), then selective_scan.py, then mosaic_gpu.py. This package
imports nothing from nanodna: nanodna.ops dispatches here, and the references the kernels are
checked against live in nanodna.ops and are imported by the tests and benchmarks.
"""

from kernels.pallas.bidirectional import bidirectional_scan_pallas
from kernels.pallas.plan import Backend, backend_for_platform
from kernels.pallas.selective_scan import selective_scan_pallas
from kernels.pallas.sharding import sharded_bidirectional_scan, sharded_selective_scan

__all__ = [
    "Backend",
    "backend_for_platform",
    "bidirectional_scan_pallas",
    "selective_scan_pallas",
    "sharded_bidirectional_scan",
    "sharded_selective_scan",
]
