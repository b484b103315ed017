"""Compute-vs-AUC sweeps: Caduceus and transformers on WSD-S, the parity ratio and the plots.

    python -m nanodna.sweep --config configs/sweeps/smoke.py --out runs/sweep_smoke
    python -m nanodna.sweep plot runs/sweep_smoke

config.py  SweepConfig / Run: the grid, the cycle, the table, the target rule
driver.py  trains each run with train.py, scores each hot/cold checkpoint with eval.py,
           appends results.tsv (restartable)
fit.py     the saturating AUC-vs-FLOPs trend, compute to a target, the parity ratio (numpy)
plot.py    results.json and the three PNGs
"""
