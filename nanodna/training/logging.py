"""Metrics: one JSON object per logged step in metrics.jsonl, TensorBoard scalars, and MFU.

metrics.jsonl is the record of a run (tests and plots read it); TensorBoard is a view of the
same numbers. Training entries carry `step`, `loss`, `lr`, `grad_norm`, `tokens_per_s` (and
`mfu` where the device's peak is known); evaluation entries carry `eval/...` keys.

MFU (model FLOPs utilisation, as nanoGPT and PaLM report it) = achieved model FLOP/s over the
hardware's peak: flops_per_token * tokens/s / (peak FLOP/s per device * devices).
"""

from __future__ import annotations

import json
import math
import os
import warnings

import jax

# Dense bf16 peak FLOP/s per device, by a substring of jax's device_kind (first match wins).
PEAK_FLOPS = (
    ("H200", 989e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L4", 121e12),
    ("TPU v6", 918e12),  # v6e ("TPU v6 lite")
    ("TPU v5p", 459e12),
    ("TPU v5 lite", 197e12),  # v5e
    ("TPU v5e", 197e12),
    ("TPU v4", 275e12),
)


def peak_flops_per_device(device_kind: str | None = None, override: float | None = None):
    """Peak FLOP/s of one device from the table above (None when unknown, e.g. a CPU).

    device_kind defaults to jax.devices()[0].device_kind, e.g. "NVIDIA H100 80GB HBM3".
    """
    if override is not None:
        return override
    kind = device_kind or jax.devices()[0].device_kind
    for name, flops in PEAK_FLOPS:
        if name.lower() in kind.lower():
            return flops
    return None


def mfu(flops_per_token: float, tokens_per_s: float, n_devices: int, peak: float | None):
    """Model FLOPs utilisation in [0, 1], or None when the peak is unknown."""
    if not peak:
        return None
    return flops_per_token * tokens_per_s / (peak * n_devices)


class MetricsLogger:
    """Appends to workdir/metrics.jsonl and (optionally) writes TensorBoard scalars.

    Only process 0 writes, so a multi-host run keeps one record.
    """

    _warned_no_tb = False

    def __init__(self, workdir: str, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tb = None
        if self.enabled and tensorboard:
            try:
                from tensorboardX import SummaryWriter  # noqa: PLC0415 (optional on GPU images)

                self.tb = SummaryWriter(os.path.join(workdir, "tb"))
            except ImportError:
                if not MetricsLogger._warned_no_tb:
                    warnings.warn("tensorboardX is not installed: TensorBoard logging is off")
                    MetricsLogger._warned_no_tb = True

    def truncate_after(self, step: int) -> None:
        """Drop entries past `step` (written after the checkpoint a resumed run starts from)."""
        if not (self.enabled and os.path.exists(self.path)):
            return
        with open(self.path) as f:
            keep = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
        with open(self.path, "w") as f:
            f.writelines(keep)

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        row = {"step": int(step)}
        row.update({k: _plain(v) for k, v in metrics.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and v is not None:
                    self.tb.add_scalar(k, v, int(step))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _plain(v):
    """A JSON-friendly Python value (NaN / inf become strings, as JSON has no such numbers)."""
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v
