"""Numerical ops shared by the models."""

from nanodna.ops.scan import selective_scan, selective_scan_bidirectional, selective_scan_ref

__all__ = ["selective_scan", "selective_scan_bidirectional", "selective_scan_ref"]
