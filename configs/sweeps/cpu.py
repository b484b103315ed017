"""CPU sweep on the embedded `demo` simulated set: three architectures x three sizes on WSD-S.

    python -m nanodna.sweep --config configs/sweeps/cpu.py --out runs/sweep_cpu

Architectures, each with its recipe (base configs hold the data and objective):
    caduceus-ps      configs/demo_caduceus.py: Caduceus-PS (BiMamba + RCPS) with PlantCAD1's
                     masked LM (15% of positions, 80/10/10, repeats weighted 0.1)
    transformer-clm  configs/demo.py: causal Llama-style transformer, next-token loss, with the
                     marin optimiser settings (REFERENCE.md: AdamW wd 0.1, betas (0.9, 0.95),
                     clip 1.0; the learning rate stays the demo's 3e-3, since marin's 3e-4 was
                     for a 600M model), scored with the four-allele causal rule (eval.py picks
                     it for causal models)
    transformer-mlm  configs/demo.py made bidirectional with the masked LM and reverse-complement
                     augmentation (as configs/transformer_mlm_small.py does at l20 size)
Sizes at 3 layers: transformers 32 / 64 / 128 wide (log-spaced), Caduceus-PS 16 / 32 / 48 wide
(its two strands and BiMamba make a Caduceus-PS token 4-8x a same-width transformer's CPU time,
BENCHMARKS.md "Where a Caduceus-PS CPU training step's time goes", so its grid sits lower and
stops at 48, which is what fitted this machine's time).
Matched per-token budgets: every run trains WSD-S for 4 cycles of 256 steps (64-step cooldowns)
of 32 windows x 128 bp = 4.19M tokens, the length at which configs/demo.py's models leave the
base-composition plateau (BENCHMARKS.md, "Learnability probe"); hot/cold checkpoints at steps
192/256, 448/512, 704/768 and 960/1024, each scored on the first 1,000 rows of the set's
conservation table (490 conserved; 1,000 bootstrap resamples).

Time: measured about 2 h 40 min for the 9 runs on this 2-core machine while it also ran tests
(EXPERIMENTS.md, section 1; wall seconds per run in results.tsv, `wall_s`); the Arabidopsis
sweep, the same runs on other data, took 2 h 26 min with its first three runs on a quiet
machine (section 2). Both were timed before the fused CPU scan kernel (kernels/cpu, 2026-12-02),
which makes a Caduceus-PS step ~2.5-4x faster; not re-timed since. The budget that leaves the
plateau did not fit in 60 minutes here. For a quicker look, copy this file and lower `cycles`
(the checkpoints will sit at chance below ~4M tokens).
"""

from nanodna.sweep.config import Run, SweepConfig

WIDTHS = {"transformer-clm": (32, 64, 128), "transformer-mlm": (32, 64, 128),
          "caduceus-ps": (16, 32, 48)}
LAYERS = 3
HEADS = {16: 2, 32: 2, 64: 4, 96: 4, 128: 4}
MARIN = ("optim.weight_decay=0.1", "optim.b1=0.9", "optim.b2=0.95", "optim.grad_clip=1.0")
MLM = ("model.causal=False", "data.mode=mlm", "data.rc_augment=True")
ARCHS = {
    "transformer-clm": ("configs/demo.py", MARIN),
    "caduceus-ps": ("configs/demo_caduceus.py", ()),
    "transformer-mlm": ("configs/demo.py", MLM),
}
MAIN_PAIR = ("transformer-clm", "caduceus-ps")  # the comparison the sweep exists for


def runs(widths=WIDTHS) -> tuple[Run, ...]:
    """The architecture x width grid (also used by configs/sweeps/arabidopsis.py), in the order
    they train: the main pair size by size, then the masked transformer (the third point of
    view), so that an interrupted sweep holds the comparison first."""
    def run(arch, i):
        config, recipe = ARCHS[arch]
        d = widths[arch][i]
        size = [f"model.d_model={d}", f"model.n_layers={LAYERS}"]
        if arch != "caduceus-ps":
            size.append(f"model.n_heads={HEADS[d]}")
        return Run(f"{arch}_d{d}", arch, config, (*size, *recipe))

    main = [run(arch, i) for i in range(3) for arch in MAIN_PAIR]
    return (*main, *(run("transformer-mlm", i) for i in range(3)))


def get_sweep() -> SweepConfig:
    return SweepConfig(
        runs=runs(),
        cycle_steps=256,
        cycles=4,
        decay_fraction=0.25,  # 64-step cooldowns; validation every 64 steps
        table="data/sim_demo/eval/conservation.tsv",
        max_rows=1000,  # the table's first 1,000 rows (490 conserved): 3x less scoring time
        bootstrap=1000,
        evaluator="inprocess",
        extra_overrides=("simulate.dir=data/sim_demo", "optim.warmup_steps=30",
                         "eval.val_batches=8", "train.tensorboard=False"),
    )
