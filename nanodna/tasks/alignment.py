"""Per-site alignment status of a target sequence from minimap2's PAF with the cs tag.

minimap2 (Li 2018, Bioinformatics 34:3094) writes one PAF line per alignment; with `--cs`
the `cs:Z:` tag spells the alignment along the TARGET's forward strand (whatever the query's
strand): `:n` n identical bases, `*xy` target base x replaced by query base y, `+seq` bases
only in the query, `-seq` target bases missing from the query, `~..` an intron (not produced
by the assembly presets). So walking the tag from the target start labels every target base.

Status codes (uint8, one per target base):
    UNALIGNED 0   no alignment covers the base
    MATCH     1   aligned, identical
    SUBST     2   aligned, a substitution
    GAP       3   inside an alignment, but deleted in the query (`-seq`)
Where alignments overlap, the one with the higher alignment score (AS:i, else matches) wins
for every base it covers: they are applied best first and never overwrite a labelled base.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
from jaxtyping import UInt8

from nanodna.errors import UserError

UNALIGNED, MATCH, SUBST, GAP = 0, 1, 2, 3
_CS_OP = re.compile(r":(\d+)|\*([a-zA-Z])([a-zA-Z])|\+([a-zA-Z]+)|-([a-zA-Z]+)|~[a-zA-Z]{2}(\d+)[a-zA-Z]{2}")


class AlignmentError(UserError):
    """A PAF line or cs tag that cannot be read; the message names what was wrong."""


def cs_ops(cs: str) -> list[tuple[int, int]]:
    """cs tag -> [(status, n_target_bases)] in target order; insertions (+) are dropped.

    Raises AlignmentError on text that is not a cs tag (e.g. the long form's `=ACGT` runs
    are not supported: ask minimap2 for the short form, its default).
    """
    ops, at = [], 0
    for m in _CS_OP.finditer(cs):
        if m.start() != at:
            raise AlignmentError(f"cs tag: cannot read {cs[at:at + 20]!r} at offset {at}")
        at = m.end()
        if m.group(1) is not None:
            ops.append((MATCH, int(m.group(1))))
        elif m.group(2) is not None:
            ops.append((SUBST, 1))
        elif m.group(5) is not None:
            ops.append((GAP, len(m.group(5))))
        elif m.group(6) is not None:
            ops.append((GAP, int(m.group(6))))  # intron: target bases without a query base
    if at != len(cs):
        raise AlignmentError(f"cs tag: cannot read {cs[at:at + 20]!r} at offset {at}")
    return ops


def _parse_line(line: str) -> dict:
    f = line.rstrip("\n").split("\t")
    if len(f) < 12:
        raise AlignmentError(f"PAF line has {len(f)} fields, expected at least 12: {line[:80]!r}")
    tags = {t[:2]: t[5:] for t in f[12:] if len(t) > 5 and t[2] == ":" and t[4] == ":"}
    if "cs" not in tags:
        raise AlignmentError("PAF line without a cs tag (run minimap2 with --cs)")
    return {
        "target": f[5], "target_len": int(f[6]), "start": int(f[7]), "end": int(f[8]),
        "matches": int(f[9]), "mapq": int(f[11]), "primary": tags.get("tp", "P") == "P",
        "score": int(tags["AS"]) if "AS" in tags else int(f[9]), "cs": tags["cs"],
    }


def site_status(
    paf_lines: Iterable[str], target: str, target_len: int, min_mapq: int = 0
) -> UInt8[np.ndarray, " T"]:
    """Status of every base of `target` (length T) from the PAF lines aligned to it.

    Only primary alignments with mapping quality >= min_mapq count. Raises AlignmentError if
    a line's cs tag does not span its target interval.
    """
    alignments = []
    for line in paf_lines:
        if not line.strip():
            continue
        a = _parse_line(line)
        if a["target"] == target and a["primary"] and a["mapq"] >= min_mapq:
            alignments.append(a)
    status = np.zeros(target_len, dtype=np.uint8)
    for a in sorted(alignments, key=lambda a: -a["score"]):
        t = a["start"]
        for code, n in cs_ops(a["cs"]):
            run = status[t : t + n]
            run[run == UNALIGNED] = code
            t += n
        if t != a["end"]:
            raise AlignmentError(
                f"cs tag covers target {a['start']}..{t}, but the PAF line says ..{a['end']}"
            )
    return status
