"""The loop's bookkeeping, and the checks on each step's metrics once they reach the host.

The loop dispatches step t+1 before it pulls step t's metrics (the device stays busy), so a
bad step is seen one step late: `check_step` stops on a NaN / infinite loss or gradient
(NonFiniteLoss, or a skipped update with train.skip_nonfinite) and on a long run of batches
with no loss weight (EmptyBatches). A loss with no weight is never reported as 0.
"""

from __future__ import annotations

import dataclasses
import math

from tqdm.auto import tqdm

from nanodna.errors import UserError


class NonFiniteLoss(UserError, FloatingPointError):
    """The loss or gradient became NaN or infinite (lower optim.lr, or check the data)."""


class EmptyBatches(UserError):
    """Many training batches in a row carried no loss weight: the data trains nothing."""


@dataclasses.dataclass
class Progress:
    """The loop's mutable bookkeeping, in one place."""

    step: int  # updates made so far
    total: int  # the run's length (may be refitted to the time budget)
    saved_at: int  # step of the last checkpoint
    window_t: float  # start of the throughput window (time.monotonic seconds) ...
    window_tokens: int = 0  # ... and the tokens trained since
    pending: tuple | None = None  # (step, metrics, n_tokens, lr) dispatched, not yet pulled
    last: dict = dataclasses.field(default_factory=dict)  # last pulled training metrics
    last_eval: dict = dataclasses.field(default_factory=dict)
    flops_per_token: float | None = None  # for MFU, known after the first batch
    stopped: str = "done"  # "done" | "signal" | "time"
    empty: int = 0  # consecutive pulled steps whose batch had no loss weight


def check_step(run: Progress, step: int, row: dict, max_empty_steps: int) -> dict:
    """Step `step`'s host metrics (floats, with "skipped", "loss", "grad_norm", "loss_weight")
    as the row to log: without "skipped", and without "loss" when the batch had no weight.

    Raises NonFiniteLoss for a NaN / infinite loss or gradient the step did not skip, and
    EmptyBatches after `max_empty_steps` weightless batches in a row (counted in run.empty).
    """
    skipped = row.pop("skipped") > 0
    if skipped:
        tqdm.write(f"warning: step {step}: loss {row['loss']}, gradient norm "
                   f"{row['grad_norm']}: update skipped (train.skip_nonfinite)")
        row = {"skipped_nonfinite": 1, "loss_weight": row["loss_weight"]}
    elif not (math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"])):
        raise NonFiniteLoss(
            f"loss {row['loss']}, gradient norm {row['grad_norm']} at step {step}: stopping "
            f"(the last checkpoint, step {run.saved_at}, is the last good state; lower "
            "optim.lr, check the data, or set train.skip_nonfinite=True)")
    if row["loss_weight"] == 0.0:  # the loss is undefined, not 0: not logged
        row.pop("loss", None)
        run.empty += 1
        if run.empty == 1:
            tqdm.write(f"warning: step {step}: the batch carries no loss weight (every target "
                       "padding, or soft-masked with data.repeat_weight_train=0): no loss")
        if run.empty >= max_empty_steps:
            raise EmptyBatches(
                f"{run.empty} training batches in a row (up to step {step}) carry no loss "
                "weight: every target is padding or soft-masked with "
                "data.repeat_weight_train=0; raise the repeat weight or check the genomes")
    else:
        run.empty = 0
    return row
