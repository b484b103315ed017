"""Pallas selective-scan kernels (forward + backward), the fused bidirectional launch, sharding.

`selective_scan_pallas` has the contract of `nanodna.ops.scan.selective_scan_ref`; it runs on
GPU (Mosaic GPU on Hopper and newer, Triton before), TPU (Mosaic) and, in interpret mode, on
CPU. See selective_scan.py, then mosaic_gpu.py.
"""

from kernels.pallas.bidirectional import bidirectional_scan_pallas, bidirectional_scan_ref
from kernels.pallas.selective_scan import backend_for_platform, selective_scan_pallas
from kernels.pallas.sharding import sharded_selective_scan

__all__ = [
    "backend_for_platform",
    "bidirectional_scan_pallas",
    "bidirectional_scan_ref",
    "selective_scan_pallas",
    "sharded_selective_scan",
]
