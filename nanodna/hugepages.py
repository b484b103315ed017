"""Transparent huge pages for a CPU run's buffers: restart the process once with glibc's
`glibc.malloc.hugetlb=1` tunable.

Why: XLA's CPU runtime allocates a step's activations afresh on every call and frees them
after it; glibc gives blocks that large back to the kernel, so every step faults its
activations in again, one 4 KiB page at a time (a third of the samples of a profiled loop
over the gated scan op at the demo shape were the Linux kernel's page-fault code), and walks
the page tables for them. With the tunable, glibc asks for 2 MiB transparent huge pages
(`madvise`) for the memory it maps: 512x fewer faults and TLB entries. The demo-size train
steps ran 1.1-1.3x faster, the README demo 1.21x end to end (BENCHMARKS.md, "Transparent huge
pages for XLA's CPU buffers"); results do not change.

glibc reads tunables only when a process starts, so `restart_with_huge_pages()`, called by
train.py, eval.py and benchmarks/bench_model.py before they import jax, re-executes the same
command line once with the tunable added to GLIBC_TUNABLES. It does nothing where it cannot
help: not Linux with glibc >= 2.35 (where the tunable exists), transparent huge pages not
`madvise` (with `always` every process gets them already; with `never` none can), the tunable
already set (the restarted process), or NANODNA_HUGE_PAGES=0 (or false / no / off: the
switch). To see it work: `grep AnonHugePages /proc/PID/smaps_rollup` of a running train.py.
This module imports only the standard library.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
OFF = ("0", "false", "no", "off")  # values of NANODNA_HUGE_PAGES that turn the restart off


def thp_mode(path: str = THP_MODE_FILE) -> str | None:
    """The kernel's transparent-huge-page mode, the bracketed word of `path` ('always',
    'madvise' or 'never'); None where the file is missing or unreadable."""
    try:
        with open(path) as f:
            words = f.read().split()
    except OSError:
        return None
    chosen = [w.strip("[]") for w in words if w.startswith("[")]
    return chosen[0] if chosen else None


def restart_env(environ: dict[str, str], system: str, libc: tuple[str, str],
                mode: str | None) -> dict[str, str] | None:
    """The environment to restart with, or None when a restart would not help: system is
    platform.system(), libc platform.libc_ver(), mode thp_mode(). Pure, for tests."""
    name, version = libc
    if system != "Linux" or name != "glibc" or mode != "madvise":
        return None
    try:
        if tuple(int(p) for p in version.split(".")[:2]) < (2, 35):
            return None
    except ValueError:
        return None
    if environ.get("NANODNA_HUGE_PAGES", "1").strip().lower() in OFF:
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if TUNABLE.split("=")[0] in tunables:  # named already, with any value: the user chose
        return None
    env = dict(environ)
    # first: /proc/PID/environ then shows it (glibc cuts the variable at its first ':' there)
    env["GLIBC_TUNABLES"] = f"{TUNABLE}:{tunables}" if tunables else TUNABLE
    return env


def restart_with_huge_pages() -> None:
    """Re-execute this interpreter with the same command line (sys.orig_argv) and the huge-page
    tunable, when restart_env says it helps; otherwise return. Call it first thing in a
    script's `__main__` path: everything done before it is done twice."""
    env = restart_env(dict(os.environ), platform.system(), platform.libc_ver(), thp_mode())
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, sys.orig_argv, env)
    except OSError:  # no usable interpreter path: run on without huge pages
        return
