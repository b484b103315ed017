"""The selective scan and BiMamba's convolution pair as fused C++ kernels for CPUs, called
through the XLA FFI.

Pallas has no CPU backend, and an XLA while loop over whole (S, B, D, N) states is memory
bound on CPU; this kernel keeps each channel's N states in registers instead. It is built on
first use with the machine's C++ compiler (build.py) and is optional: without a compiler
`available()` is False and nanodna.ops.scan runs the pure-JAX scan. Like kernels/pallas, this
package imports nothing from nanodna; its references are nanodna.ops.scan's.
"""

from kernels.cpu.build import available, error
from kernels.cpu.depthwise_conv import (
    conv_silu_bidirectional_bwd_cpu,
    conv_silu_bidirectional_cpu,
    conv_supported,
)
from kernels.cpu.selective_scan import (
    bidirectional_gated_scan_cpu,
    gated_supported,
    selective_scan_cpu,
    sharded_selective_scan_cpu,
)

__all__ = ["available", "bidirectional_gated_scan_cpu", "conv_silu_bidirectional_bwd_cpu",
           "conv_silu_bidirectional_cpu", "conv_supported", "error", "gated_supported",
           "selective_scan_cpu", "sharded_selective_scan_cpu"]
