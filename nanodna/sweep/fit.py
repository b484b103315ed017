"""The saturating AUC-vs-compute trend, the compute to reach a target AUC, and the parity ratio.

Trend (a power law approaching a ceiling, as in compute-vs-downstream fits):

    AUC(C) = a - b * (C / C0)^(-c),   C0 = geometric mean of the fitted FLOPs (for conditioning)

For each c on a log grid, (a, b) is an ordinary least-squares problem (a closed-form simple
regression of AUC on (C/C0)^-c, all c at once); the c with the smallest squared error wins. b is kept >= 0 (AUC does not fall with compute in this model); where the
unconstrained b would be negative the trend is flat (b = 0, a = mean). Numpy only.

Compute to reach a target t (t < a, b > 0): C = C0 * ((a - t) / b)^(-1/c); otherwise never.
Parity ratio = C_other(t) / C_reference(t), with a percentile interval from resampling each
architecture's checkpoints with replacement and refitting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

C_GRID = np.logspace(-2, math.log10(3.0), 150)  # exponents c tried, 0.01 .. 3
MIN_POINTS = 3  # distinct compute values a three-parameter trend needs


@dataclass(frozen=True)
class Trend:
    a: float  # the ceiling the AUC approaches
    b: float  # >= 0
    c: float  # > 0
    C0: float  # FLOPs scale the fit was made at

    def __call__(self, flops):
        """AUC predicted at `flops` (scalar or array)."""
        return self.a - self.b * (np.asarray(flops, dtype=np.float64) / self.C0) ** (-self.c)

    def flops_to_reach(self, target: float) -> float:
        """The compute at which the trend reaches `target`: math.inf if it never does, 0.0 if a
        flat trend (b = 0) is at or above it everywhere."""
        if self.b <= 0:
            return 0.0 if self.a >= target else math.inf
        if self.a <= target:
            return math.inf
        return float(self.C0 * ((self.a - target) / self.b) ** (-1.0 / self.c))


def fit_trend(flops, auc) -> Trend:
    """Least-squares fit of AUC(C) = a - b (C/C0)^-c to points (flops > 0, auc).

    Raises ValueError with fewer than MIN_POINTS distinct compute values (with two, every c
    fits exactly and the trend is arbitrary).
    """
    C = np.asarray(flops, dtype=np.float64)
    y = np.asarray(auc, dtype=np.float64)
    if C.shape != y.shape or C.ndim != 1 or np.any(C <= 0) or len(np.unique(C)) < MIN_POINTS:
        raise ValueError(f"fit_trend needs >= {MIN_POINTS} distinct positive compute values, "
                         "matched to AUCs")
    C0 = float(np.exp(np.mean(np.log(C))))
    U_GN = np.exp(-C_GRID[:, None] * np.log(C / C0)[None, :])  # (C/C0)^-c for every c on the grid
    du_GN = U_GN - U_GN.mean(axis=1, keepdims=True)
    slope_G = (du_GN @ (y - y.mean())) / np.sum(du_GN**2, axis=1)  # y ~ mean + slope (u - mean)
    b_G = np.maximum(-slope_G, 0.0)  # AUC = a - b u; a negative b becomes a flat trend
    a_G = np.where(slope_G < 0, y.mean() - slope_G * U_GN.mean(axis=1), y.mean())
    sse_G = np.sum((a_G[:, None] - b_G[:, None] * U_GN - y[None, :]) ** 2, axis=1)
    g = int(np.argmin(sse_G))
    return Trend(float(a_G[g]), float(b_G[g]), float(C_GRID[g]), C0)


def first_reached(flops, auc, target: float) -> float:
    """The smallest observed compute whose AUC is >= target (math.inf if none)."""
    C, y = np.asarray(flops, dtype=np.float64), np.asarray(auc, dtype=np.float64)
    hit = C[y >= target]
    return float(hit.min()) if hit.size else math.inf


def bootstrap_trends(flops, auc, n: int, rng: np.random.Generator) -> list[Trend]:
    """Trends refitted to `n` resamples (with replacement) of the points; resamples with fewer
    than MIN_POINTS distinct compute values are dropped."""
    C, y = np.asarray(flops, dtype=np.float64), np.asarray(auc, dtype=np.float64)
    out = []
    for _ in range(n):
        i = rng.integers(0, len(C), len(C))
        if len(np.unique(C[i])) >= MIN_POINTS:
            out.append(fit_trend(C[i], y[i]))
    return out


def trend_band(trends: list[Trend], flops_grid, level: float = 0.95):
    """(low, high) pointwise percentile band of bootstrap trends over `flops_grid`."""
    pred = np.stack([t(flops_grid) for t in trends])
    q = 100 * (1 - level) / 2
    return np.percentile(pred, q, axis=0), np.percentile(pred, 100 - q, axis=0)


@dataclass(frozen=True)
class Parity:
    ratio: float  # C_other / C_reference to the target from the full-data trends (inf: never)
    ci: tuple[float, float]  # percentile interval over resamples (inf: not reached there)
    reached_fraction: float  # fraction of resamples in which both trends reach the target
    n_resamples: int


def parity_ratio(ref_flops, ref_auc, other_flops, other_auc, target: float, n: int = 500,
                 seed: int = 0, level: float = 0.95) -> Parity:
    """Compute-to-parity ratio of `other` against `ref` at AUC `target`, with a bootstrap
    interval (each architecture's points resampled independently)."""
    ref_c = fit_trend(ref_flops, ref_auc).flops_to_reach(target)
    oth_c = fit_trend(other_flops, other_auc).flops_to_reach(target)
    ratio = oth_c / ref_c if 0 < ref_c < math.inf else math.nan
    rng = np.random.default_rng(seed)
    refs = bootstrap_trends(ref_flops, ref_auc, n, rng)
    others = bootstrap_trends(other_flops, other_auc, n, rng)
    ratios = []
    for r, o in zip(refs, others):
        rc, oc = r.flops_to_reach(target), o.flops_to_reach(target)
        if 0 < rc < math.inf:  # the reference must get there, at a compute, for a ratio
            ratios.append(oc / rc)
    ratios = np.asarray(ratios, dtype=np.float64)
    if ratios.size == 0:
        return Parity(ratio, (math.nan, math.nan), 0.0, 0)
    q = 100 * (1 - level) / 2
    lo, hi = np.percentile(ratios, [q, 100 - q], method="lower")
    return Parity(ratio, (float(lo), float(hi)), float(np.mean(np.isfinite(ratios))),
                  int(ratios.size))
