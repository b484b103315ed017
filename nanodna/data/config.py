"""DataConfig: where training windows come from and how they become batches.

Its own light module (dataclasses only, no Grain, NumPy or JAX) so that reading a saved config
(nanodna.config.from_dict) does not import the data stream.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence


@dataclasses.dataclass
class DataConfig:
    """Where training windows come from and how they become batches."""

    store_dirs: Sequence[str] = ()  # genome stores (prepare/simulate output); a str is one store
    seq_len: int = 512  # model input length (PlantCAD: 512 bp)
    batch_size: int = 32  # windows per batch, PER PROCESS (global batch = this * process count)
    mode: str = "mlm"  # "mlm" (masked, bidirectional models) or "clm" (causal next-token)
    # Sampling weight per assembly name; None = proportional to size. Unlisted ones are skipped.
    assembly_weights: dict[str, float] | None = None
    max_n_frac: float = 0.1  # windows with more unknown bases are never drawn (all-N -> NaN loss)
    rc_augment: bool = False  # reverse-complement half the windows (Caduceus-Ph; not needed for PS)
    mask_prob: float = 0.15  # MLM: share of (non-pad, non-unk) positions selected for loss
    mask_frac: float = 0.8  # MLM: of the selected, share replaced by [MASK] ...
    random_frac: float = 0.1  # ... and by a random base; the rest (0.1) stay unchanged
    repeat_weight_train: float = 0.1  # loss weight of soft-masked (lowercase) targets in training
    repeat_weight_eval: float = 0.0  # ... and in validation (PlantCAD: repeats not scored)
    # Validation holdout: chromosome names ("chr5" in any assembly, or "assembly/chr5") and
    # assembly names. Training never sees them; validation sees only them.
    holdout_chromosomes: Sequence[str] = ()
    holdout_assemblies: Sequence[str] = ()
    eval_windows: int = 512  # size of the fixed validation set
    seed: int = 0
    worker_count: int = 0  # Grain worker processes; 0 = produce batches in this process
    prefetch: int = 4  # batches prepared ahead on a background thread (0 = on demand)

    def __post_init__(self):
        # Configs round-trip through JSON (lists); a single store may be given as a str.
        if isinstance(self.store_dirs, str):
            self.store_dirs = (self.store_dirs,)
        self.store_dirs = tuple(self.store_dirs)
        self.holdout_chromosomes = tuple(self.holdout_chromosomes)
        self.holdout_assemblies = tuple(self.holdout_assemblies)
