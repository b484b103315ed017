"""PlantCAD1 l20: Caduceus-PS, 20 layers x 384 (~21M params), trained with PlantCAD's recipe.

    python train.py --config configs/plantcad_small.py --workdir runs/plantcad_l20

Recipe (PlantCaduceus, Zhai et al. 2025: its HF_pre_train.py and the PlantCaduceus_l20 model
card, https://huggingface.co/kuleshov-group/PlantCaduceus_l20): 512-bp windows, masked LM on
15% of positions (80/10/10), repeats weighted 0.1 in the loss, AdamW lr 2e-4 wd 0.01, 1,000
warmup steps then constant, 120k steps. By default it trains on the embedded `large` simulated set (16 species x
10 Mbp, generated on first use) and scores the simulated conservation table.

Real genomes instead: prepare a genome store, point the data at it and turn simulation off:

    python -m nanodna.data prepare --fasta genomes/*.fa.gz --out data/genomes
    python train.py --config configs/plantcad_small.py simulate.preset=None \
        "data.store_dirs=['data/genomes']" "data.holdout_chromosomes=['chr5']" \
        eval.table=path/to/conservation.tsv          # or eval.table=None to skip the AUC
"""

from nanodna.config import Config, EvalConfig, OptimConfig, SimulateConfig, TrainConfig
from nanodna.data.config import DataConfig
from nanodna.models import sizes


def get_config() -> Config:
    return Config(
        # Caduceus-PS l20: BiMamba (add), tied in/out projections, RCPS; d_state 16, expand 2.
        # bf16 matmuls on GPU / TPU; params, scan state and the loss stay float32. On a CPU pass
        # model.compute_dtype=float32: the bf16 step is several times slower there (BENCHMARKS.md,
        # "YNNPACK dot fusions in the CPU train step"). With Intel AMX add
        # model.matmul_dtype=bfloat16 (bf16 matmul inputs only) and model.unroll_layers=True:
        # the l20 step (batch 1, no remat) then ran 1.4-1.75x the float32 scanned one
        # (BENCHMARKS.md, "bfloat16 matmuls in a float32 model").
        # remat: recompute each block's activations in the backward pass (see train below).
        model=sizes.get("plantcad_l20", max_len=512, compute_dtype="bfloat16", remat=True),
        data=DataConfig(
            store_dirs=(),  # empty: the simulated set's store (simulate.dir/store)
            seq_len=512,  # PlantCAD1's context
            batch_size=128,  # windows per step per process (not in our reference; fits an H100)
            mode="mlm",
            mask_prob=0.15,  # PlantCAD / HF collator: 15% of positions, 80% [MASK] 10% random
            repeat_weight_train=0.1,  # soft-masked repeats weigh 0.1 in training ...
            repeat_weight_eval=0.0,  # ... and 0 in the validation loss
            holdout_assemblies=("sim15",),  # one unseen simulated species for validation
            eval_windows=2048,
            seed=0,
            worker_count=0,  # batches are cheap (memory-mapped gathers); raise if input-bound
        ),
        optim=OptimConfig(
            lr=2e-4,  # PlantCAD1
            b1=0.9,  # HF Trainer defaults, which PlantCAD1 kept
            b2=0.999,
            eps=1e-8,
            weight_decay=0.01,
            grad_clip=1.0,  # HF Trainer default max_grad_norm
            schedule="constant",  # 1,000 linear warmup steps, then constant
            warmup_steps=1000,
        ),
        train=TrainConfig(
            steps=120_000,
            max_minutes=None,
            log_every=100,
            checkpoint_every=5000,
            keep_checkpoints=3,
            fsdp=False,  # 21M params: replicate; turn on for the large sizes
            # Memory, from XLA's memory analysis of the compiled step (printed at start-up;
            # BENCHMARKS.md "plantcad_small step memory"): 128 x 512 bp x 2 strands without remat needs 37 GiB of
            # temporaries for just 2 of the 20 layers (the whole model: the 288 GiB the issue
            # saw), far beyond a 24 GiB machine. With model.remat and the batch in 8 sequential
            # microbatches of 16 windows (same update as the whole batch) the 20-layer step
            # needs 2.5 GiB (arguments 0.23, temporaries 2.24): it fits a 24 GiB CPU machine
            # (slowly) and any single GPU. On a GPU with room to spare, train.microbatches=1
            # or 2 is faster.
            microbatches=8,
        ),
        eval=EvalConfig(
            every=5000,
            val_batches=16,
            table=None,  # None: the simulated set's small table; see the docstring for real data
            batch_size=128,
        ),
        simulate=SimulateConfig(preset="large", dir="data/sim_large", seed=0),
    )
