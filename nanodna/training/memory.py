"""Will the train step fit? Its compiled memory analysis against the device's memory.

XLA's `memory_analysis()` of the compiled step gives, per device, the bytes of its arguments
(the train state and the batch), its outputs, the part of the outputs aliased to donated
arguments, and the temporaries (activations kept for the backward pass, gradients, XLA
buffers). The step's peak is at most arguments + outputs - aliased + temporaries. The device's
memory comes from `device.memory_stats()["bytes_limit"]` (GPU / TPU); a CPU reports none, so
there it is the machine's available RAM (/proc/meminfo MemAvailable, plus what the already
allocated train state holds), shared by the simulated local devices.

When the analysis is unavailable (a backend that returns None) the check says so and passes.
"""

from __future__ import annotations

import dataclasses
import os

import jax

from nanodna.errors import UserError

GiB = 2**30
KNOBS = ("model.remat=True", "a smaller data.batch_size per device", "train.microbatches=<n>",
         "train.fsdp=True")


class StepTooLarge(UserError):
    """The compiled train step needs more memory than the device has."""


@dataclasses.dataclass
class StepMemory:
    """Bytes per device of one compiled step (XLA's memory analysis)."""

    arguments: int
    outputs: int
    aliased: int
    temporaries: int

    @property
    def peak(self) -> int:
        return self.arguments + self.outputs - self.aliased + self.temporaries


def step_memory(compiled) -> StepMemory | None:
    """The memory analysis of a compiled (`jit(...).lower(...).compile()`) step, or None."""
    try:
        m = compiled.memory_analysis()
    except (AttributeError, NotImplementedError, RuntimeError):
        return None
    if m is None:
        return None
    return StepMemory(int(m.argument_size_in_bytes), int(m.output_size_in_bytes),
                      int(m.alias_size_in_bytes), int(m.temp_size_in_bytes))


def _meminfo_bytes(field: str = "MemAvailable") -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:  # not Linux: total physical memory
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def device_memory(device, resident: int = 0) -> tuple[int | None, str]:
    """(bytes one device of this process can use, where that number comes from).

    `resident`: bytes this process already holds per device (the train state): on a CPU they
    are no longer in MemAvailable but the step may reuse them.
    """
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 (backends raise various errors for "not supported")
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"{device.device_kind} memory limit"
    available = _meminfo_bytes()
    if available is None:
        return None, "unknown"
    n_local = max(jax.local_device_count(), 1)
    return available // n_local + resident, f"available RAM / {n_local} local device(s)"


def check_fits(compiled, device, resident: int = 0, available: int | None = None) -> str:
    """Raise StepTooLarge when the step cannot fit; else return a one-line summary.

    `available` overrides the device's memory (bytes; for tests and for a user who knows).
    """
    mem = step_memory(compiled)
    if mem is None:
        return "memory: the compiled step reports no memory analysis on this backend; not checked"
    source = "given"
    if available is None:
        available, source = device_memory(device, resident)
    need = (f"{_size(mem.peak)} per device (arguments {_size(mem.arguments)}, outputs "
            f"{_size(mem.outputs)}, aliased {_size(mem.aliased)}, temporaries "
            f"{_size(mem.temporaries)})")
    if available is None:
        return f"memory: the step needs {need}; the device's memory is unknown: not checked"
    if mem.peak > available:
        raise StepTooLarge(
            f"the train step needs {mem.peak:,} bytes per device but {available:,} are available "
            f"({source}): {need}; what helps: {', '.join(KNOBS)}")
    return f"memory: the step needs {need} of {_size(available)} ({source})"


def _size(n: int) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"
