"""The huge-page restart (nanodna.hugepages): when it restarts, with what, and that the restarted
process really gets transparent huge pages."""

from __future__ import annotations

import os
import pathlib
import platform
import subprocess
import sys
import textwrap

import pytest

from nanodna import hugepages

ROOT = pathlib.Path(__file__).resolve().parents[1]
LINUX = ("Linux", ("glibc", "2.36"), "madvise")


def test_restart_env_adds_the_tunable_once():
    env = hugepages.restart_env({"PATH": "/bin"}, *LINUX)
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": hugepages.TUNABLE}
    # other tunables are kept, and the restarted process does not restart again
    env = hugepages.restart_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, *LINUX)
    assert env["GLIBC_TUNABLES"] == hugepages.TUNABLE + ":glibc.malloc.arena_max=2"
    assert hugepages.restart_env(env, *LINUX) is None


@pytest.mark.parametrize("environ, system, libc, mode", [
    ({}, "Darwin", ("", ""), None),  # not Linux
    ({}, "Linux", ("musl", "1.2"), "madvise"),  # not glibc
    ({}, "Linux", ("glibc", "2.31"), "madvise"),  # glibc without the tunable
    ({}, "Linux", ("glibc", "2.36"), "always"),  # every process has huge pages already
    ({}, "Linux", ("glibc", "2.36"), "never"),  # none can have them
    ({}, "Linux", ("glibc", "2.36"), None),  # no transparent huge pages in this kernel
    ({"NANODNA_HUGE_PAGES": "0"}, *LINUX),  # turned off
    ({"NANODNA_HUGE_PAGES": "Off"}, *LINUX),
    ({"NANODNA_HUGE_PAGES": "false"}, *LINUX),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, *LINUX),  # the user chose
])
def test_no_restart_where_it_cannot_help(environ, system, libc, mode):
    assert hugepages.restart_env(environ, system, libc, mode) is None


def test_thp_mode_reads_the_bracketed_word(tmp_path):
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    assert hugepages.thp_mode(str(f)) == "madvise"
    f.write_text("[always] madvise never\n")
    assert hugepages.thp_mode(str(f)) == "always"
    assert hugepages.thp_mode(str(tmp_path / "missing")) is None


CHILD = textwrap.dedent("""
    import ctypes, os, sys
    from nanodna.hugepages import restart_with_huge_pages
    print("started", flush=True)
    restart_with_huge_pages()

    def huge_kib():
        with open("/proc/self/smaps_rollup") as f:
            return [int(ln.split()[1]) for ln in f if ln.startswith("AnonHugePages:")][0]

    # 64 MiB from glibc's malloc, as XLA's CPU buffers are (numpy's own arrays would not do:
    # numpy asks for huge pages itself), written so that its pages are faulted in
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    before = huge_kib()
    p = libc.malloc(64 << 20)
    ctypes.memset(p, 1, 64 << 20)
    print(os.environ.get("GLIBC_TUNABLES", ""), huge_kib() - before, sys.argv[1:], sep="|")
""")


def run_child(tmp_path, env_extra):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES",
                                                            "NANODNA_HUGE_PAGES")}
    env.update(env_extra, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, str(script), "--flag", "a b"], env=env,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return out.splitlines()


def test_restarted_process_gets_huge_pages(tmp_path):
    """End to end, where this machine allows it (Linux, glibc >= 2.35, THP madvise): the script
    runs twice ('started' twice), the second time with the tunable and its arguments intact,
    and a 64 MiB malloc lands in huge pages; with NANODNA_HUGE_PAGES=0 it runs once, and the
    same malloc gets none."""
    env = hugepages.restart_env({}, platform.system(), platform.libc_ver(), hugepages.thp_mode())
    if env is None:
        pytest.skip("no restart on this machine: not Linux/glibc >= 2.35 with THP in madvise")
    lines = run_child(tmp_path, {})
    assert lines[:2] == ["started", "started"], lines
    tunables, huge_kib, argv = lines[2].split("|")
    assert hugepages.TUNABLE in tunables and argv == "['--flag', 'a b']", lines
    assert int(huge_kib) >= 32 << 10, f"the restarted process got no huge pages: {lines}"
    off = run_child(tmp_path, {"NANODNA_HUGE_PAGES": "0"})
    assert len(off) == 2 and off[0] == "started", off
    tunables, huge_kib, _ = off[1].split("|")
    assert tunables == "" and int(huge_kib) == 0, off
