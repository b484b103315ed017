"""Demo: a small causal transformer trained and evaluated on the embedded simulated genomes, on a CPU.

    python train.py --config configs/demo.py    # 8 min on the 2026-11-21 VM, 21 min on 2026-12-02
    python train.py --config configs/demo.py train.max_minutes=8   # or: fit to a time budget

Generates the simulated `demo` genome set (16 species x 200 kbp, a few seconds) into
data/sim_demo on first use, trains a fixed 1,515 steps (what fitted the 8-minute budget on a
2-core CPU: BENCHMARKS.md, "Demo"), so the result does not depend on the machine's speed and a
killed run resumes to the same losses, then scores conservation ROC AUC
on the simulated set's small table (target >= 0.65) with the four-allele causal rule.

This is the README's second example. Its first, configs/demo_caduceus.py, is the same demo with
PlantCAD's Caduceus-PS and masked objective, run for 2,200 steps. This one is a causal
transformer, whose objective puts a loss on every position instead of 15% of them. Either model has to see a few million
tokens before it leaves the base-composition plateau. Measured speeds and AUCs of both:
BENCHMARKS.md, "Training: the demo".
"""

from nanodna.config import Config, EvalConfig, OptimConfig, SimulateConfig, TrainConfig
from nanodna.data.config import DataConfig
from nanodna.models import sizes

SEQ_LEN = 128


def get_config() -> Config:
    return Config(
        # Causal transformer (RMSNorm, RoPE, SwiGLU), 96 wide x 4 layers, 4 heads: 0.44M params.
        model=sizes.get("transformer_1m", d_model=96, n_layers=4, n_heads=4, causal=True,
                        max_len=SEQ_LEN),
        data=DataConfig(
            store_dirs=(),  # empty: the simulated set's store, simulate.dir/store
            seq_len=SEQ_LEN,  # windows of 128 bp (PlantCAD: 512); the eval crops to this
            batch_size=32,  # windows per step
            mode="clm",  # next-token loss on every position (repeats weighted 0.1)
            holdout_assemblies=("sim15",),  # validation loss on one unseen species
            eval_windows=256,  # fixed validation set size
            seed=0,
        ),
        optim=OptimConfig(
            lr=3e-3,  # small model, short run: 15x PlantCAD's 2e-4
            b2=0.95,  # faster second-moment adaptation for a short run
            weight_decay=0.01,  # PlantCAD
            schedule="wsd",  # warmup, stable, then decay to 0.1 lr over the last 20%
            warmup_steps=30,  # a few hundred steps fit in the budget on a 2-core CPU
            decay_fraction=0.2,
            decay_shape="linear",
        ),
        train=TrainConfig(
            steps=1515,  # fixed: the length the 8-minute budget gave on a 2-core CPU
            # Off: a budget makes the length depend on the machine. With train.max_minutes=8
            # the WSD run is fitted to it once and the fit is kept for resumes (schedule.json).
            max_minutes=None,
            fit_schedule_to_budget=True,
            log_every=25,
            checkpoint_every=500,
            keep_checkpoints=2,
        ),
        eval=EvalConfig(
            every=300,  # validation loss + ROC AUC on the small table during training
            val_batches=8,
            table=None,  # None: the simulated set's small table (400 sites)
            batch_size=64,
        ),
        simulate=SimulateConfig(preset="demo", dir="data/sim_demo", seed=0),
    )
