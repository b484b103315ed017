"""Numerical ops shared by the models."""

from nanodna.ops.scan import (
    bidirectional_scan_ref,
    random_scan_inputs,
    selective_scan,
    selective_scan_bidirectional,
    selective_scan_ref,
)

__all__ = [
    "bidirectional_scan_ref",
    "random_scan_inputs",
    "selective_scan",
    "selective_scan_bidirectional",
    "selective_scan_ref",
]
