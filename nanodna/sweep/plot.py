"""Read a sweep's results.tsv, fit the AUC-vs-compute trends, write results.json and the plots.

    auc_vs_flops.png   (a) conservation AUC vs training FLOPs per architecture (log x), each
                       with its fitted trend (nanodna.sweep.fit), the trend's bootstrap band and
                       the compute at which the trend reaches the target AUC
    loss_vs_auc.png    (b) validation loss vs AUC, per architecture
    hot_cold.png       (c) validation loss over steps for each run, hot and cold checkpoints
                       marked, each cycle's gap annotated (loss drop of the cooldown, and the
                       steps / tokens the main branch needed to match it)
    results.json       the target AUC, each architecture's trend and compute to the target, the
                       compute-to-parity ratio against the reference with its interval, the
                       hot/cold gaps

Settings (reference architecture, target rule, checkpoints fitted, resamples) come from the
sweep.json the driver wrote beside results.tsv.
"""

from __future__ import annotations

import json
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from nanodna.sweep import fit
from nanodna.sweep.driver import SweepError, read_metrics, read_results


def _finite(x) -> float | None:
    """JSON-safe: None for inf / NaN."""
    return float(x) if x is not None and math.isfinite(x) else None


def _arch_points(rows, arch, labels):
    pts = [r for r in rows if r["arch"] == arch and r["label"] in labels
           and math.isfinite(r["roc_auc"]) and r["flops"] > 0]
    return np.array([r["flops"] for r in pts]), np.array([r["roc_auc"] for r in pts])


def analyse(rows: list[dict], settings: dict) -> tuple[dict, dict]:
    """(results dict for results.json, {arch: (trend, bootstrap trends)} for the plots)."""
    ref = settings["reference_arch"]
    labels = tuple(settings["fit_labels"])
    archs = list(dict.fromkeys(r["arch"] for r in rows))
    ref_auc = [r["roc_auc"] for r in rows if r["arch"] == ref and math.isfinite(r["roc_auc"])]
    if settings.get("target_auc") is not None:
        target, rule = float(settings["target_auc"]), "fixed in the sweep config"
    elif ref_auc:
        target = max(ref_auc) - settings["target_margin"]
        rule = f"best {ref} AUC of the sweep ({max(ref_auc):.4f}) - {settings['target_margin']}"
    else:
        raise SweepError(f"no scored checkpoint of the reference architecture '{ref}' and no "
                         "target_auc: cannot set a target")
    rng = np.random.default_rng(settings["seed"])
    trends, per_arch = {}, {}
    for arch in archs:
        C, y = _arch_points(rows, arch, labels)
        all_C, all_y = _arch_points(rows, arch, ("hot", "cold"))
        entry = {"n_fitted": len(C), "best_auc": _finite(max(all_y, default=math.nan)),
                 "flops_to_target_observed": _finite(fit.first_reached(all_C, all_y, target)),
                 "trend": None, "flops_to_target_fit": None}
        if len(np.unique(C)) >= fit.MIN_POINTS:
            t = fit.fit_trend(C, y)
            boots = fit.bootstrap_trends(C, y, settings["trend_bootstrap"], rng)
            trends[arch] = (t, boots, C)
            entry["trend"] = {"a": t.a, "b": t.b, "c": t.c, "C0": t.C0,
                              "formula": "auc = a - b * (flops / C0) ** -c"}
            entry["flops_to_target_fit"] = _finite(t.flops_to_reach(target))
        per_arch[arch] = entry
    # A target the reference's best checkpoint does not separate from chance (its 95% interval
    # holds 0.5) makes any ratio a fit to noise: say so in every statement.
    best = max((r for r in rows if r["arch"] == ref and math.isfinite(r["roc_auc"])),
               key=lambda r: r["roc_auc"], default=None)
    best_lo = best.get("roc_auc_lo") if best else None
    above_chance = (None if best_lo is None or not math.isfinite(best_lo) else best_lo > 0.5)
    parity = {}
    for arch in archs:
        if arch == ref:
            continue
        parity[arch] = _parity_entry(rows, arch, ref, labels, target, settings, trends)
        if above_chance is False:
            parity[arch]["statement"] = (
                f"not meaningful: the best {ref} checkpoint's 95% interval "
                f"[{best_lo:.3f}, {best.get('roc_auc_hi', math.nan):.3f}] holds 0.5, so the "
                f"target is chance level; {parity[arch]['statement']}")
    return {"target_auc": target, "target_rule": rule, "reference_arch": ref,
            "target_above_chance": above_chance, "fit_labels": list(labels),
            "architectures": per_arch, "parity": parity}, trends


def _parity_entry(rows, arch, ref, labels, target, settings, trends) -> dict:
    if arch not in trends or ref not in trends:
        return {"reached": False, "ratio": None, "ci": None,
                "statement": f"no trend could be fitted for {arch if arch not in trends else ref}"
                             f" (fewer than {fit.MIN_POINTS} compute values)"}
    rC, ry = _arch_points(rows, ref, labels)
    oC, oy = _arch_points(rows, arch, labels)
    p = fit.parity_ratio(rC, ry, oC, oy, target, n=settings["trend_bootstrap"],
                         seed=settings["seed"])
    lo, hi = p.ci
    entry = {"ratio": _finite(p.ratio), "ci": [_finite(lo), _finite(hi)],
             "reached": math.isfinite(p.ratio), "bootstrap_reached_fraction": p.reached_fraction,
             "n_resamples": p.n_resamples}
    if math.isnan(p.ratio):
        how = ("is flat at or above it (no compute at which it starts to)"
               if trends[ref][0].b == 0 and trends[ref][0].a >= target else "does not reach it")
        entry["statement"] = (f"no ratio: the {ref} trend {how}; target AUC {target:.4f}")
    elif p.ratio == 0:  # a flat trend at or above the target: no compute needed to reach it
        entry["statement"] = (f"{arch} needs no compute to reach AUC {target:.4f}: its trend is "
                              f"flat at {trends[arch][0].a:.4f}, at or above the target at every "
                              f"compute, so the ratio is 0 (its checkpoints do not improve with "
                              f"compute)")
    elif math.isinf(p.ratio):
        entry["statement"] = (f"parity not reached: the {arch} trend saturates at "
                              f"{trends[arch][0].a:.4f}, below the target AUC {target:.4f}")
    else:
        hi_text = f"{hi:.3g}" if math.isfinite(hi) else "not reached"
        entry["statement"] = (f"{arch} needs {p.ratio:.3g}x the training FLOPs of {ref} to reach "
                              f"AUC {target:.4f} (95% bootstrap interval {lo:.3g} to {hi_text}; "
                              f"both trends reach it in {100 * p.reached_fraction:.0f}% of "
                              f"{p.n_resamples} resamples)")
    return entry


def hot_cold_gaps(out: str, run: str, cycle_steps: int, decay_steps: int,
                  tokens_per_step: float) -> list[dict]:
    """Per cycle: hot and cold val loss, their difference, and how many steps (tokens) after
    the cold checkpoint the main (high learning rate) branch first matched the cold loss,
    linearly interpolated between evaluations (an upper bound, flagged, when the first evaluation
    after the cold one already matches); None where it never did within the run."""
    rows = read_metrics(os.path.join(out, "runs", run))
    val = sorted((r["step"], r["eval/val_loss"]) for r in rows if "eval/val_loss" in r)
    loss = dict(val)
    C, T_d = cycle_steps, decay_steps
    main = [(s, v) for s, v in val if 0 < s % C <= C - T_d]  # evaluated at the peak rate
    out_rows = []
    for k in range(1, max((s for s, _ in val), default=0) // C + 1):
        hot, cold = k * C - T_d, k * C
        if hot not in loss or cold not in loss:
            continue
        lc, gap, bound = loss[cold], None, False
        later = [(s, v) for s, v in main if s > cold]
        prev = (cold, lc)
        for s, v in later:  # the main branch restarts above lc; find where it falls to lc
            if v <= lc:
                s0, v0 = prev
                if s0 == cold:  # matched at the first evaluation after the cold one: a bound
                    gap, bound = s - cold, True
                else:
                    frac = 0.0 if v0 == v else (v0 - lc) / (v0 - v)
                    gap = s0 + frac * (s - s0) - cold
                break
            prev = (s, v)
        out_rows.append({"run": run, "cycle": k, "hot_step": hot, "cold_step": cold,
                         "hot_loss": loss[hot], "cold_loss": lc, "delta": loss[hot] - lc,
                         "gap_steps": gap, "gap_is_upper_bound": bound,
                         "gap_tokens": None if gap is None else gap * tokens_per_step})
    return out_rows


# ---------------------------------------------------------------------------------------------
# The plots


def _colors(archs):
    cmap = plt.get_cmap("tab10")
    return {a: cmap(i % 10) for i, a in enumerate(archs)}


def plot_auc_vs_flops(rows, results, trends, path):
    archs = list(dict.fromkeys(r["arch"] for r in rows))
    colors = _colors(archs)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    target = results["target_auc"]
    for arch in archs:
        for label, face in (("cold", None), ("hot", "none")):
            pts = [r for r in rows if r["arch"] == arch and r["label"] == label]
            if not pts:
                continue
            x = np.array([r["flops"] for r in pts])
            y = np.array([r["roc_auc"] for r in pts])
            err = np.array([[r["roc_auc"] - r["roc_auc_lo"] for r in pts],
                            [r["roc_auc_hi"] - r["roc_auc"] for r in pts]])
            ax.errorbar(x, y, yerr=np.nan_to_num(err), fmt="o", color=colors[arch],
                        mfc=face or colors[arch], alpha=0.8, ms=5, capsize=2,
                        label=f"{arch} ({label})")
        if arch in trends:
            t, boots, C = trends[arch]
            grid = np.logspace(np.log10(C.min()) - 0.3, np.log10(C.max()) + 0.5, 200)
            ax.plot(grid, t(grid), color=colors[arch], lw=1.5)
            if len(boots) >= 10:
                lo, hi = fit.trend_band(boots, grid)
                ax.fill_between(grid, lo, hi, color=colors[arch], alpha=0.15, lw=0)
            reach = results["architectures"][arch]["flops_to_target_fit"]
            if reach is not None and grid[0] <= reach <= grid[-1]:  # no far extrapolations
                ax.axvline(reach, color=colors[arch], ls=":", lw=1,
                           label=f"{arch} trend reaches target: {reach:.3g} FLOPs")
    ax.axhline(target, color="k", ls="--", lw=1, label=f"target AUC {target:.3f}")
    ax.set_xscale("log")
    # The y range follows the measured intervals and the target, not a bootstrap band that can
    # run far outside [0, 1] where a trend is extrapolated below the smallest run.
    ys = [v for r in rows for v in (r.get("roc_auc_lo"), r.get("roc_auc_hi"), r["roc_auc"])
          if v is not None and math.isfinite(v)] + [target]
    ax.set_ylim(max(0.0, min(ys) - 0.03), min(1.0, max(ys) + 0.03))
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("conservation ROC AUC")
    ax.set_title("AUC vs compute (lines: fitted trend, band: bootstrap 95%, dotted: reach)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_loss_vs_auc(rows, path):
    archs = list(dict.fromkeys(r["arch"] for r in rows))
    fig, axes = plt.subplots(1, len(archs), figsize=(4 * len(archs), 3.6), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        runs = list(dict.fromkeys(r["run"] for r in rows if r["arch"] == arch))
        colors = _colors(runs)  # one colour per run (size); filled: cold, hollow: hot
        for run in runs:
            pts = sorted((r for r in rows if r["run"] == run), key=lambda r: r["step"])
            ax.plot([r["val_loss"] for r in pts], [r["roc_auc"] for r in pts], "-", lw=0.8,
                    alpha=0.5, color=colors[run])
            for label, face in (("cold", colors[run]), ("hot", "none")):
                sel = [r for r in pts if r["label"] == label]
                ax.scatter([r["val_loss"] for r in sel], [r["roc_auc"] for r in sel], s=20,
                           facecolors=face, edgecolors=colors[run], label=f"{run} {label}")
        ax.invert_xaxis()  # lower loss to the right: training progresses left to right
        ax.set_title(arch, fontsize=9)
        ax.set_xlabel("validation loss")
        ax.set_ylabel("conservation ROC AUC")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_hot_cold(out, rows, gaps, cycle_steps, decay_steps, path):
    runs = list(dict.fromkeys(r["run"] for r in rows))
    ncol = min(3, len(runs))
    nrow = math.ceil(len(runs) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.5 * ncol, 3.4 * nrow), squeeze=False)
    for ax, run in zip(axes.flat, runs):
        metrics = read_metrics(os.path.join(out, "runs", run))
        val = sorted((r["step"], r["eval/val_loss"]) for r in metrics if "eval/val_loss" in r)
        ax.plot([s for s, _ in val], [v for _, v in val], "-", color="0.6", lw=0.8,
                label="all evaluations")
        pts = [r for r in rows if r["run"] == run]
        for label, color in (("hot", "tab:red"), ("cold", "tab:blue")):
            sel = [r for r in pts if r["label"] == label]
            ax.scatter([r["step"] for r in sel], [r["val_loss"] for r in sel], color=color,
                       s=20, zorder=3, label=label)
        for g in (g for g in gaps if g["run"] == run):
            if g["gap_steps"] is None:
                text = f"-{g['delta']:.3f}\nnot matched"
            else:
                le = "<=" if g["gap_is_upper_bound"] else ""
                text = (f"-{g['delta']:.3f}\n{le}+{g['gap_steps']:.0f} st\n"
                        f"{le}{g['gap_tokens']:.3g} tok")
            ax.annotate(text, (g["cold_step"], g["cold_loss"]), fontsize=6,
                        xytext=(2, -18), textcoords="offset points")
        ax.set_title(run, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("validation loss")
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(runs):]:
        ax.axis("off")
    fig.suptitle(f"hot vs cold (WSD-S, cycle {cycle_steps} steps, {decay_steps}-step cooldown); "
                 "annotation: loss drop, steps/tokens until the main branch matched it",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def make_plots(out: str) -> dict:
    """Write results.json and the three PNGs for the sweep in `out`; returns results.json."""
    rows = read_results(out)
    if not rows:
        raise SweepError(f"{out}: no results.tsv rows to plot (run the sweep first)")
    with open(os.path.join(out, "sweep.json")) as f:
        settings = json.load(f)
    results, trends = analyse(rows, settings)
    C = settings["cycle_steps"]
    T_d = int(settings["decay_fraction"] * C)
    gaps = []
    for run in dict.fromkeys(r["run"] for r in rows):
        first = next(r for r in rows if r["run"] == run)
        gaps += hot_cold_gaps(out, run, C, T_d, first["tokens"] / first["step"])
    results["hot_cold"] = gaps
    results["n_checkpoints"] = len(rows)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    plot_auc_vs_flops(rows, results, trends, os.path.join(out, "auc_vs_flops.png"))
    plot_loss_vs_auc(rows, os.path.join(out, "loss_vs_auc.png"))
    plot_hot_cold(out, rows, gaps, C, T_d, os.path.join(out, "hot_cold.png"))
    return results
