"""Zero-shot scoring rules: (model, table) -> one score per row.

Every rule reduces a window and its target index to the log-probabilities of the four alleles
a/c/g/t at the target; the task then reads a score off them:

    conservation   log p(ref)                (REFERENCE.md: "probability of the reference base";
                                              ROC AUC is the same for p and log p)
    variant        log p(alt) - log p(ref)   (PlantCaduceus's zero-shot LLR)

Rules, chosen from the model config:

    masked  (MLM: Caduceus, MLM transformer)  put [MASK] at the target, read the logits there,
            softmax over a/c/g/t only.
    causal  (CLM transformer)  marin's four-allele rule: four copies of the window with A/C/G/T
            at the target, the log-likelihood of each whole copy, log-softmax across the four.

Strands. A base pair has one score, whichever strand a table lists it on. Every rule scores
both strands by default (`strand_mode` "average"): rc(x) with the target at L-1-pos is scored
too, and the two strands' allele log-probabilities are combined with `nanodna.models.strand_mean`
and renormalised over a/c/g/t: a normalised geometric mean of the allele probabilities, the same
mean as `conjoined_logits` (so the masked score equals the conjoined model's). For the causal
rule the averaged quantities are the four-allele log-probabilities (log-softmax of whole-window
log-likelihoods), so the mean is again a normalised geometric mean of allele probabilities.
Caduceus-PS is RC-equivariant by construction (its head already sums both strands), so one pass
gives the same answer on both strands ("equivariant"). "forward" (strand_average=False) scores
the given strand only and is not strand-invariant for other models.

Rows longer than the model's context are cropped to the longest ODD window that fits (max_len,
or max_len - 1 when max_len is even), centred on the target and pushed inside the row at its
ends. An odd window has a true centre, so the window of a row and the window of its reverse
complement cover the same base pairs (`context_window`); an even window would put the target
one base off centre, on a different side on each strand.

Windows are scored in fixed-size batches, grouped by length, the last batch padded: one
compilation per distinct length, whatever the table size. A model whose arrays live on a
device mesh (as during training) has its batches split over that mesh.

Inference paths (`inference_path`). "fast" (the default) is the scoring path: on CPU every
selective scan runs forward only (the kernels/cpu kernel outside a backward pass or, without
it, ops/scan_fwd.py's loop: no chunk-boundary states, nothing kept for a backward), the masked
rule runs the LM head at the target position only (`model.logits_at`), and the batch size
defaults to CPU_BATCH_SIZE (small batches waste less on padding the last batch and measured as
fast per window as large ones on CPU). "old" is the path before issue 10 (full logits, the
XLA chunked_vjp scan and XLA's conv where "auto" now picks kernels/cpu: `old_model`, and
eval.py's old default batch of 64, OLD_BATCH_SIZE), kept so that eval.py, benchmarks and tests
can compare the two on one command; both give the same scores to float32 round-off.

Glossary: B windows in a batch, L window length, V vocabulary (8), 4 the four alleles a/c/g/t
(4B: the B x 4 allele copies folded into the batch, row b*4 + k), R rows of the table.
"""

from __future__ import annotations

import dataclasses
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec
from jaxtyping import Array, Float, Int
from tqdm.auto import tqdm

from nanodna import tokenizer
from nanodna.evaluation.tables import EvalTable
from nanodna.models import strand_mean
from nanodna.models.build import with_scan_impl
from nanodna.models.config import ModelConfig
from nanodna.ops.scan import resolve_impl

INFERENCE_PATHS = ("fast", "old")
CPU_BATCH_SIZE = 8  # default windows per call on CPU (benchmarks/bench_eval.py --paths)
ACCEL_BATCH_SIZE = 64  # default on GPU / TPU
OLD_BATCH_SIZE = 64  # eval.py's --batch-size default before issue 10 (the "old" path's default)


def scoring_rule(model_cfg: ModelConfig) -> str:
    """'causal' for next-token models, 'masked' for everything else."""
    return "causal" if model_cfg.causal else "masked"


def default_strand_average(model_cfg: ModelConfig) -> bool:
    """Average both strands unless the model is RC-equivariant by construction (Caduceus-PS),
    where a second pass would give the same numbers."""
    return not is_rc_equivariant(model_cfg)


def is_rc_equivariant(model_cfg: ModelConfig) -> bool:
    """Caduceus-PS: logits(rc(x)) = rc_logits(logits(x)) by construction."""
    return model_cfg.arch == "caduceus" and model_cfg.rcps


def strand_mode(model_cfg: ModelConfig, strand_average: bool | None = None) -> str:
    """How a model is scored across strands: 'average' (both strands, strand_mean of the allele
    log-probabilities), 'equivariant' (Caduceus-PS, one pass is already strand-invariant) or
    'forward' (the given strand only: opted out, not strand-invariant)."""
    if is_rc_equivariant(model_cfg):
        return "equivariant" if not strand_average else "average"
    if strand_average is None:
        strand_average = default_strand_average(model_cfg)
    return "average" if strand_average else "forward"


def masked_allele_log_probs(
    model, tokens_BL: Int[Array, "B L"], pos_B: Int[Array, " B"], at_target: bool = False
) -> Float[Array, "B 4"]:
    """Mask the target, then log-softmax over a/c/g/t of the logits at the target.

    at_target: compute the logits at the target only (`model.logits_at`, when the model has
    it) instead of at every position; the same numbers, less work and memory."""
    rows_B = jnp.arange(tokens_BL.shape[0])
    masked_BL = tokens_BL.at[rows_B, pos_B].set(tokenizer.MASK)
    if at_target and hasattr(model, "logits_at"):
        logits_BV = model.logits_at(masked_BL, pos_B)
    else:
        logits_BV = model(masked_BL)[rows_B, pos_B]
    logits_B4 = logits_BV[:, tokenizer.ACGT]
    return jax.nn.log_softmax(logits_B4.astype(jnp.float32), axis=-1)


def causal_allele_log_probs(
    model, tokens_BL: Int[Array, "B L"], pos_B: Int[Array, " B"]
) -> Float[Array, "B 4"]:
    """Four-allele rule: log-likelihood of each allele's copy of the window, log-softmaxed."""
    B, L = tokens_BL.shape
    n_alleles = len(tokenizer.ACGT)
    # Fold the four copies into the batch: row b*4 + k carries allele k at the target.
    copies_B4L = jnp.broadcast_to(tokens_BL[:, None, :], (B, n_alleles, L))
    rows_B1, alleles_14 = jnp.arange(B)[:, None], jnp.arange(n_alleles)[None, :]
    copies_B4L = copies_B4L.at[rows_B1, alleles_14, pos_B[:, None]].set(
        jnp.asarray(tokenizer.ACGT, tokens_BL.dtype)[None, :]
    )
    copies_4BL = copies_B4L.reshape(B * n_alleles, L)
    logp_4BLV = jax.nn.log_softmax(model(copies_4BL)[:, :-1].astype(jnp.float32), axis=-1)
    # logits at t predict token t+1
    next_ll_4BL = jnp.take_along_axis(logp_4BLV, copies_4BL[:, 1:, None], axis=-1)[..., 0]
    # Tokens before the target do not see the allele: their terms are equal across the four
    # copies and cancel in the log-softmax, so only tokens at index >= pos are summed.
    after_4BL = jnp.arange(1, L)[None, :] >= jnp.repeat(pos_B, n_alleles)[:, None]
    ll_B4 = jnp.where(after_4BL, next_ll_4BL, 0.0).sum(axis=-1).reshape(B, n_alleles)
    return jax.nn.log_softmax(ll_B4, axis=-1)


def allele_log_probs(
    model, tokens_BL: Int[Array, "B L"], pos_B: Int[Array, " B"], rule: str, strand_average: bool,
    at_target: bool = False,
) -> Float[Array, "B 4"]:
    """log p(a/c/g/t at the target) under `rule`, optionally averaged over both strands.
    at_target: the masked rule's head runs at the target only (masked_allele_log_probs)."""

    def rule_fn(model, tokens_BL, pos_B):
        if rule == "masked":
            return masked_allele_log_probs(model, tokens_BL, pos_B, at_target)
        return causal_allele_log_probs(model, tokens_BL, pos_B)

    if not strand_average:
        return rule_fn(model, tokens_BL, pos_B)
    B, L = tokens_BL.shape
    # Both strands in one model call: the reverse complement moves the target to L-1-pos.
    both_BL = jnp.concatenate([tokens_BL, tokenizer.reverse_complement(tokens_BL)], axis=0)
    lp_B4 = rule_fn(model, both_BL, jnp.concatenate([pos_B, L - 1 - pos_B]))
    fwd_B4 = lp_B4[:B]
    # On the reverse strand allele k is the complement of allele k on the forward one, and in
    # a/c/g/t order the complement is the reversed order (t/g/c/a).
    rc_B4 = lp_B4[B:, ::-1]
    return jax.nn.log_softmax(strand_mean(fwd_B4, rc_B4), axis=-1)


_allele_log_probs_jit = eqx.filter_jit(allele_log_probs)


def inference_model(model):
    """The model as the fast path runs it: the model as it is where "auto" picks a kernel (the
    Pallas kernel on GPU / TPU, kernels/cpu on CPU: outside a backward pass neither keeps any
    state); without the CPU kernel every selective scan becomes the forward-only "fwd" loop.
    Same arrays, same function."""
    if resolve_impl("auto") in ("pallas", "cpu"):
        return model
    return with_scan_impl(model, "fwd")


def old_model(model):
    """The model as the pre-issue-10 path ran it: on CPU "auto" then meant the chunked_vjp XLA
    scan (there was no kernel), so a model that would now take kernels/cpu gets that scan
    back (and with it XLA's conv: nanodna.ops.conv follows the layer's scan impl); elsewhere
    the model as it is. Same arrays, same function."""
    if resolve_impl("auto") == "cpu":
        return with_scan_impl(model, "chunked_vjp")
    return model


def default_batch_size(inference_path: str = "fast") -> int:
    """Windows per call when none is given: CPU_BATCH_SIZE on CPU, ACCEL_BATCH_SIZE on GPU/TPU;
    the old path keeps eval.py's pre-issue-10 default, OLD_BATCH_SIZE, everywhere."""
    if inference_path == "old":
        return OLD_BATCH_SIZE
    return ACCEL_BATCH_SIZE if resolve_impl("auto") == "pallas" else CPU_BATCH_SIZE


def context_window(length: int, pos: int, max_len: int | None) -> tuple[int, int]:
    """[start, stop) of the window a row is scored on: the whole row when it fits in max_len,
    else `crop_length(max_len)` bases (odd) centred on the target, pushed inside the row at its
    ends. Strand-symmetric: for the reverse complement (pos -> length-1-pos) the window is
    [length - stop, length - start), the same base pairs."""
    if max_len is None or length <= max_len:
        return 0, length
    w = crop_length(max_len)
    start = min(max(pos - w // 2, 0), length - w)
    return start, start + w


def crop_length(max_len: int) -> int:
    """The longest odd window that fits in max_len: an odd window has a true centre."""
    return max_len if max_len % 2 else max_len - 1


@dataclasses.dataclass
class Scores:
    """Per-row results of `score_table`, in table order."""

    score_R: np.ndarray  # conservation: log p(ref); variant: log p(alt) - log p(ref)
    log_probs_R4: np.ndarray  # log p(a), log p(c), log p(g), log p(t) at the target
    window_pos_R: np.ndarray  # target index inside the scored window
    rule: str
    strand_average: bool  # a second pass on the reverse strand was made
    strand_mode: str  # 'average' | 'equivariant' | 'forward' (see `strand_mode`)
    seconds: float  # wall time, compilation included
    batch_size: int = 0  # windows per model call (after defaults and mesh rounding)
    inference_path: str = "fast"

    @property
    def windows_per_s(self) -> float:
        return len(self.score_R) / max(self.seconds, 1e-9)


def score_table(
    model,
    model_cfg: ModelConfig,
    table: EvalTable,
    batch_size: int | None = 64,
    strand_average: bool | None = None,
    progress: bool = False,
    inference_path: str = "fast",
) -> Scores:
    """Score every row of `table` with the rule `model_cfg` calls for.

    strand_average None: the default for the model (`default_strand_average`: both strands,
    except Caduceus-PS, which is strand-invariant in one pass). batch_size None: the default
    for the backend and path (`default_batch_size`). inference_path "fast" or "old" (module
    docstring).
    Raises ValueError for batch_size < 1 or an unknown inference_path."""
    if batch_size is None:
        batch_size = default_batch_size(inference_path)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if inference_path not in INFERENCE_PATHS:
        raise ValueError(f"inference_path must be one of {INFERENCE_PATHS}, got {inference_path!r}")
    fast = inference_path == "fast"
    rule = scoring_rule(model_cfg)
    if strand_average is None:
        strand_average = default_strand_average(model_cfg)
    max_len = model_cfg.max_len
    model = eqx.nn.inference_mode(model)  # dropout off, if the model has any
    model = inference_model(model) if fast else old_model(model)
    sharding = batch_sharding(model)
    if sharding is not None:  # every device gets an equal slice of each batch
        n_dev = sharding.mesh.size
        batch_size = -(-batch_size // n_dev) * n_dev

    log_probs_R4 = np.zeros((len(table), len(tokenizer.ACGT)), dtype=np.float32)
    t0 = time.perf_counter()
    with tqdm(total=len(table), unit="window", desc="scoring", disable=not progress) as bar:
        pending = None
        for rows, tokens_BL, pos_B in window_batches(table, max_len, batch_size):
            if sharding is not None:
                tokens_BL, pos_B = _put(tokens_BL, sharding), _put(pos_B, sharding)
            out_B4 = _allele_log_probs_jit(model, tokens_BL, pos_B, rule, strand_average, fast)
            # Fetch the previous batch only now, so the device works while we build this one.
            if pending is not None:
                _collect(log_probs_R4, *pending, bar)
            pending = (rows, out_B4)
        if pending is not None:
            _collect(log_probs_R4, *pending, bar)
    seconds = time.perf_counter() - t0

    starts_R = [context_window(len(x), int(p), max_len)[0] for x, p in zip(table.ids, table.pos_R)]
    return Scores(
        score_R=task_scores(table, log_probs_R4),
        log_probs_R4=log_probs_R4,
        window_pos_R=table.pos_R - np.array(starts_R, dtype=np.int64),
        rule=rule,
        strand_average=strand_average,
        strand_mode=strand_mode(model_cfg, strand_average),
        seconds=seconds,
        batch_size=batch_size,
        inference_path=inference_path,
    )


def window_batches(table: EvalTable, max_len: int | None, batch_size: int):
    """Yield (rows, tokens_BL, pos_B): every row's window, rows grouped by window length, in
    batches of exactly batch_size (the last of a group padded with copies of its last row,
    so each length compiles once); `rows` lists the table rows of the unpadded part."""
    groups: dict[int, list[tuple[int, int]]] = {}  # window length -> [(row, window start)]
    for i, (ids, pos) in enumerate(zip(table.ids, table.pos_R)):
        start, stop = context_window(len(ids), int(pos), max_len)
        groups.setdefault(stop - start, []).append((i, start))
    for L, members in groups.items():
        for b0 in range(0, len(members), batch_size):
            batch = members[b0 : b0 + batch_size]
            rows = [i for i, _ in batch]
            batch += [batch[-1]] * (batch_size - len(batch))
            tokens_BL = np.stack([table.ids[i][start : start + L] for i, start in batch]).astype(
                np.int32
            )
            pos_B = np.array([table.pos_R[i] - start for i, start in batch], dtype=np.int32)
            yield rows, tokens_BL, pos_B


def batch_sharding(model) -> NamedSharding | None:
    """Split batches over the model's mesh when its arrays live on one (as in training):
    data-parallel scoring. None for a model on a single device."""
    for leaf in jax.tree.leaves(eqx.filter(model, eqx.is_array)):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding) and sharding.mesh.size > 1:
            return NamedSharding(sharding.mesh, PartitionSpec(sharding.mesh.axis_names))
    return None


def _put(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
    # Every process holds the whole batch and hands over the slices its devices own, so
    # this works on one host or many.
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def _collect(log_probs_R4: np.ndarray, rows: list[int], out_B4, bar) -> None:
    if not out_B4.is_fully_addressable:  # multi-host: gather the other processes' slices
        out_B4 = multihost_utils.process_allgather(out_B4, tiled=True)
    log_probs_R4[rows] = np.asarray(out_B4)[: len(rows)]
    bar.update(len(rows))
    # tqdm's own rate turns into s/window below 1 window/s; state windows/s always.
    bar.set_postfix_str(f"{bar.n / max(bar.format_dict['elapsed'], 1e-9):.3g} windows/s")


def task_scores(
    table: EvalTable, log_probs_R4: Float[np.ndarray, "R 4"]
) -> Float[np.ndarray, " R"]:
    """Allele log-probabilities -> the task's score per row."""
    rows_R = np.arange(len(table))
    lp_ref_R = log_probs_R4[rows_R, table.ref_R - tokenizer.A]
    if table.task == "conservation":
        return lp_ref_R
    return log_probs_R4[rows_R, table.alt_R - tokenizer.A] - lp_ref_R
