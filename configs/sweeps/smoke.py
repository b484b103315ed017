"""Smoke sweep: the whole pipeline (train, score, fit, plot) on toy models, for CI.

    python -m nanodna.sweep --config configs/sweeps/smoke.py --out runs/sweep_smoke

Two architectures (Caduceus-PS with the masked LM, the causal transformer with the four-allele
rule), one toy size each (16 wide, 1 layer), three WSD-S cycles of 10 steps (hot at 8, 18,
28; cold at 10, 20, 30), scored on the first 200 rows of the simulated set's full conservation table.
The simulated `demo` set is generated inside OUT. The numbers it produces mean nothing: the
models see 15k tokens. tests/test_sweep.py runs it end to end, then reruns it.

Time: meant to take under 2 minutes on an idle machine (not yet verified on one; the figures
measured on a shared machine are in EXPERIMENTS.md).
"""

from nanodna.sweep.config import Run, SweepConfig

TOY = ("model.d_model=16", "model.n_layers=1", "model.max_len=64")


def get_sweep() -> SweepConfig:
    return SweepConfig(
        runs=(
            Run("caduceus_toy", "caduceus-ps", "configs/demo_caduceus.py", TOY),
            Run("transformer_clm_toy", "transformer-clm", "configs/demo.py",
                (*TOY, "model.n_heads=2")),
        ),
        cycle_steps=10,
        cycles=3,
        decay_fraction=0.2,
        table="{out}/sim/eval/conservation.tsv",
        max_rows=200,
        bootstrap=100,
        evaluator="inprocess",  # one process for all twelve scorings: no start-up per checkpoint
        trend_bootstrap=100,
        extra_overrides=(
            "simulate.dir={out}/sim", "data.seq_len=64", "data.batch_size=8",
            "data.eval_windows=32", "eval.val_batches=2", "optim.warmup_steps=2",
            "train.tensorboard=False",
        ),
    )
