"""GPU sweep: the `large` simulated set (16 species x 10 Mbp) at PlantCAD l20-scale widths.

    python -m nanodna.sweep --config configs/sweeps/gpu_large.py --out runs/sweep_gpu_large

Three architectures, each with its published recipe (the base configs hold them):
    caduceus-ps      configs/plantcad_small.py: Caduceus-PS, PlantCAD1's masked LM (15%,
                     80/10/10, repeats 0.1), AdamW lr 2e-4 wd 0.01, 20 layers
    transformer-clm  configs/transformer_clm_small.py + the marin recipe (REFERENCE.md: AdamW lr
                     3e-4, wd 0.1, betas (0.9, 0.95), clip 1.0), next-token loss, scored with the
                     four-allele causal rule (eval.py picks it for causal models), 12 layers
    transformer-mlm  configs/transformer_mlm_small.py: the masked LM with reverse-complement
                     augmentation, PlantCAD1's optimiser, 12 layers
Sizes: widths 96, 192, 384 (384 = l20's; about 4x parameters per step), same depth per
architecture; every run sees the same tokens (cycles x cycle_steps x 128 windows x 512 bp).
Not yet run: no GPU time is claimed here. The warmup is shortened to 500 steps so that it fits
inside the first cycle with its cooldown.
"""

from nanodna.sweep.config import Run, SweepConfig

WIDTHS = (96, 192, 384)
HEAD_DIM = {96: 32, 192: 64, 384: 64}
MARIN = ("optim.lr=3e-4", "optim.weight_decay=0.1", "optim.b1=0.9", "optim.b2=0.95",
         "optim.grad_clip=1.0")
ARCHS = {
    "caduceus-ps": ("configs/plantcad_small.py", ()),
    "transformer-clm": ("configs/transformer_clm_small.py", MARIN),
    "transformer-mlm": ("configs/transformer_mlm_small.py", ()),
}


def get_sweep() -> SweepConfig:
    runs = []
    for arch, (config, recipe) in ARCHS.items():
        for d in WIDTHS:
            size = [f"model.d_model={d}"]
            if arch != "caduceus-ps":
                size.append(f"model.n_heads={d // HEAD_DIM[d]}")
            runs.append(Run(f"{arch}_d{d}", arch, config, (*size, *recipe)))
    return SweepConfig(
        runs=tuple(runs),
        cycle_steps=2000,
        cycles=5,  # 10k steps, 655M tokens per run
        decay_fraction=0.2,
        table="data/sim_large/eval/conservation.tsv",  # the full simulated table
        bootstrap=1000,
        evaluator="inprocess",
        eval_batch_size=256,
        extra_overrides=("optim.warmup_steps=500", "eval.val_batches=16",
                         "train.tensorboard=False"),
    )
