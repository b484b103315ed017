"""Scoring rules against hand computations with small stand-in models whose logits we control.

The rule is what is under test, so the expected values call the stand-in model directly on
inputs built here by hand (masked copy, reverse complement, four allele copies) and apply the
rule in NumPy.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from nanodna import tokenizer
from nanodna.evaluation import scoring
from nanodna.evaluation.tables import EvalTable, default_pos
from nanodna.models import ModelConfig, conjoined_logits

V = tokenizer.VOCAB_SIZE
MLM_CFG = ModelConfig(
    arch="transformer", causal=False, max_len=64
)  # not RC-equivariant: strand average
PS_CFG = ModelConfig(arch="caduceus", rcps=True, max_len=64)  # Caduceus-PS: one strand
CLM_CFG = ModelConfig(arch="transformer", causal=True, max_len=64)  # both strands too


class ConvLM(eqx.Module):
    """Embedding + one 1-D convolution to logits; `causal` pads on the left only."""

    emb_VD: jax.Array
    w_4DV: jax.Array
    causal: bool = eqx.field(static=True)

    def __init__(self, key, causal=False, d=6, k=3):
        k1, k2 = jax.random.split(key)
        self.emb_VD = jax.random.normal(k1, (V, d))
        self.w_4DV = jax.random.normal(k2, (k, d, V))
        self.causal = causal

    def __call__(self, tokens_BL):
        K, L = self.w_4DV.shape[0], tokens_BL.shape[1]
        pad = (K - 1, 0) if self.causal else ((K - 1) // 2, K // 2)
        x_BLD = jnp.pad(self.emb_VD[tokens_BL], ((0, 0), pad, (0, 0)))
        return sum(x_BLD[:, k : k + L] @ self.w_4DV[k] for k in range(K))


class Echo(eqx.Module):
    """Logits that copy the input token: a model that would cheat if the target were visible."""

    def __call__(self, tokens_BL):
        return 10.0 * jax.nn.one_hot(tokens_BL, V)


class WhereAmI(eqx.Module):
    """Logits that reveal where the target sits and how long the window is:
    logit(a) = 0.01 * index, logit(c) = 0.01 * window length, logit(g) = logit(t) = 0."""

    def __call__(self, tokens_BL):
        B, L = tokens_BL.shape
        idx_BL = jnp.broadcast_to(jnp.arange(L, dtype=jnp.float32), (B, L))
        out_BLV = jnp.zeros((B, L, V))
        out_BLV = out_BLV.at[..., tokenizer.A].set(0.01 * idx_BL)
        return out_BLV.at[..., tokenizer.C].set(0.01 * L)


class Bias(eqx.Module):
    """The same logits everywhere: the allele probabilities are softmax(bias over a/c/g/t)."""

    bias_V: jax.Array

    def __call__(self, tokens_BL):
        return jnp.broadcast_to(self.bias_V, tokens_BL.shape + (V,))


def make_table(seqs, pos=None, labels=None, alts=None):
    ids = [tokenizer.encode(s)[0] for s in seqs]
    pos = np.array([default_pos(len(s)) for s in seqs] if pos is None else pos)
    return EvalTable(
        path="<test>",
        task="conservation" if alts is None else "variant",
        ids=ids,
        pos_R=pos,
        ref_R=np.array([x[p] for x, p in zip(ids, pos)], dtype=np.int64),
        alt_R=None
        if alts is None
        else np.array([tokenizer.encode(a)[0][0] for a in alts], dtype=np.int64),
        label_R=None if labels is None else np.asarray(labels),
    )


def random_seqs(rng, n, length):
    return ["".join(rng.choice(list("ACGT"), size=length)) for _ in range(n)]


def log_softmax(x):
    x = np.asarray(x, np.float64)
    return (
        x
        - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - x.max(-1, keepdims=True)
    )


def masked_lp(model, ids, p):
    """Hand rule: [MASK] at p, logits at p, log-softmax over a/c/g/t."""
    x = ids.astype(np.int32).copy()
    x[p] = tokenizer.MASK
    logits = np.asarray(model(jnp.asarray(x)[None]))[0, p]
    return log_softmax(logits[tokenizer.ACGT])


@pytest.fixture
def rng():
    return np.random.default_rng()


@pytest.fixture
def key(rng):
    return jax.random.key(int(rng.integers(2**31)))


def test_masked_rule_matches_hand_computation(rng, key):
    model = ConvLM(key)
    table = make_table(random_seqs(rng, 5, 20), pos=rng.integers(0, 20, size=5))
    got = scoring.score_table(model, PS_CFG, table, batch_size=4)
    assert got.rule == "masked" and not got.strand_average
    for i in range(5):
        lp = masked_lp(model, table.ids[i], table.pos_R[i])
        np.testing.assert_allclose(got.log_probs_R4[i], lp, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(
            got.score_R[i], lp[table.ref_R[i] - tokenizer.A], rtol=1e-5, atol=1e-5
        )


class Spy:
    """Records the tokens it is called with; predicts nothing."""

    def __init__(self):
        self.seen = []

    def __call__(self, tokens_BL):
        self.seen.append(np.asarray(tokens_BL))
        return jnp.zeros(tokens_BL.shape + (V,))


def test_model_sees_mask_at_target_only(rng):
    tokens_BL = tokenizer.ACGT[rng.integers(0, 4, size=(3, 10))].astype(np.int32)
    pos_B = rng.integers(0, 10, size=3)
    spy = Spy()
    scoring.masked_allele_log_probs(spy, jnp.asarray(tokens_BL), jnp.asarray(pos_B))
    expected_BL = tokens_BL.copy()
    expected_BL[np.arange(3), pos_B] = tokenizer.MASK
    np.testing.assert_array_equal(spy.seen[0], expected_BL)


def test_target_is_masked():
    # Echo puts all its mass on the token it is given. Shown [MASK] at the target, it has no
    # preference among a/c/g/t there: every allele gets exactly 1/4.
    table = make_table(random_seqs(np.random.default_rng(), 6, 12))
    for cfg in (PS_CFG, MLM_CFG):
        got = scoring.score_table(Echo(), cfg, table, batch_size=4)
        np.testing.assert_allclose(got.log_probs_R4, np.log(0.25), atol=1e-6)


class Conjoined(eqx.Module):
    """A model averaged over both strands by the model side's post-hoc conjoining."""

    inner: eqx.Module

    def __call__(self, tokens_BL):
        return conjoined_logits(self.inner, tokens_BL)


def test_strand_average_matches_hand_computation(rng, key):
    model = ConvLM(key)
    table = make_table(random_seqs(rng, 4, 15), pos=rng.integers(0, 15, size=4))
    got = scoring.score_table(model, MLM_CFG, table, batch_size=3)
    assert got.strand_average
    for i in range(4):
        x, p = table.ids[i], int(table.pos_R[i])
        lp_fwd = masked_lp(model, x, p).astype(np.float64)
        # on rc(x) the target sits at L-1-p and its allele order a/c/g/t reads t/g/c/a
        lp_rc = masked_lp(model, tokenizer.reverse_complement(x), len(x) - 1 - p)[::-1]
        # the strand mean is over log-probabilities (a normalised geometric mean)
        expected = log_softmax((lp_fwd + lp_rc.astype(np.float64)) / 2)
        np.testing.assert_allclose(got.log_probs_R4[i], expected, rtol=1e-5, atol=1e-5)
    # the same mean as the model's conjoining: one strand of the conjoined model scores alike
    conj = scoring.score_table(Conjoined(model), MLM_CFG, table, batch_size=3,
                               strand_average=False)
    np.testing.assert_allclose(conj.log_probs_R4, got.log_probs_R4, rtol=1e-5, atol=1e-5)
    # the one-strand score differs for a model that is not RC-equivariant
    assert not np.allclose(scoring.score_table(model, PS_CFG, table).score_R, got.score_R)


def causal_lp(model, ids, p):
    """Hand four-allele rule on one strand."""
    L = len(ids)
    ll = []
    for allele in tokenizer.ACGT:
        x = ids.astype(np.int32).copy()
        x[p] = allele
        logp = log_softmax(np.asarray(model(jnp.asarray(x)[None]))[0])
        # the whole sequence's next-token log-likelihood (all positions, not only >= pos)
        ll.append(sum(logp[t - 1, x[t]] for t in range(1, L)))
    return log_softmax(np.array(ll))


def test_causal_four_allele_rule(rng, key):
    model = ConvLM(key, causal=True)
    L = 14
    table = make_table(random_seqs(rng, 5, L), pos=[0, L - 1] + list(rng.integers(0, L, size=3)))
    one = scoring.score_table(model, CLM_CFG, table, batch_size=2, strand_average=False)
    got = scoring.score_table(model, CLM_CFG, table, batch_size=2)
    assert one.rule == got.rule == "causal" and one.strand_mode == "forward"
    assert got.strand_average and got.strand_mode == "average"
    for i in range(5):
        x, p = table.ids[i], int(table.pos_R[i])
        lp = causal_lp(model, x, p)
        np.testing.assert_allclose(one.log_probs_R4[i], lp, rtol=1e-4, atol=1e-4)
        # both strands: the same strand mean of allele log-probabilities as the masked rule
        lp_rc = causal_lp(model, tokenizer.reverse_complement(x), L - 1 - p)[::-1]
        expected = log_softmax((lp + lp_rc) / 2)
        np.testing.assert_allclose(got.log_probs_R4[i], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("max_len", [16, 15])
def test_long_rows_are_windowed_around_the_target(rng, max_len):
    L = 40
    w = max_len if max_len % 2 else max_len - 1  # cropped to an odd window: a true centre
    c = w // 2
    cfg = ModelConfig(arch="caduceus", rcps=True, max_len=max_len)
    pos = [20, 3, 38, default_pos(L)]
    table = make_table(random_seqs(rng, 4, L) + random_seqs(rng, 1, 9), pos=pos + [default_pos(9)])
    got = scoring.score_table(WhereAmI(), cfg, table, batch_size=3)
    lp = got.log_probs_R4.astype(np.float64)
    seen_index = np.round((lp[:, 0] - lp[:, 2]) / 0.01).astype(int)
    seen_length = np.round((lp[:, 1] - lp[:, 2]) / 0.01).astype(int)
    # centred when it fits, else the window is clipped at the row's start / end
    expected = [c, 3, 38 - (L - w), c, default_pos(9)]
    np.testing.assert_array_equal(seen_index, expected)
    np.testing.assert_array_equal(got.window_pos_R, expected)
    np.testing.assert_array_equal(seen_length, [w] * 4 + [9])  # short rows as they are
    assert scoring.context_window(L, 20, max_len) == (20 - c, 20 - c + w)


@pytest.mark.parametrize("max_len", [16, 15])
def test_crop_window_is_the_same_on_both_strands(max_len):
    # The fault of issue 13: a centre crop at max_len//2 - 1 on both strands scored a row and
    # its reverse complement on windows one base apart.
    for L in (max_len + 1, max_len + 2, 3 * max_len + 1):
        for p in range(L):
            start, stop = scoring.context_window(L, p, max_len)
            assert start <= p < stop and stop - start <= max_len
            assert scoring.context_window(L, L - 1 - p, max_len) == (L - stop, L - start)


@pytest.mark.parametrize("cfg", [PS_CFG, CLM_CFG], ids=["masked", "causal"])
def test_variant_llr_sign(rng, cfg):
    bias_V = np.zeros(V, np.float32)
    # The model prefers G and C everywhere, on both strands (so strand averaging keeps it).
    bias_V[tokenizer.G] = bias_V[tokenizer.C] = 2.0
    model = Bias(jnp.asarray(bias_V))
    seqs, pos, alts = [], [], []
    for ref, alt in [("A", "G"), ("G", "T"), ("C", "A"), ("G", "A"), ("T", "C")]:
        s = list(random_seqs(rng, 1, 11)[0])
        s[5] = ref
        seqs.append("".join(s)), pos.append(5), alts.append(alt)
    table = make_table(seqs, pos=pos, alts=alts)
    got = scoring.score_table(model, cfg, table, batch_size=4)
    np.testing.assert_array_equal(got.score_R > 0, [a in "GC" for a in alts])
    if cfg is PS_CFG:  # masked: log p(alt) - log p(ref) = bias difference
        expected = [
            bias_V[tokenizer.encode(a)[0][0]] - bias_V[tokenizer.encode(s[5])[0][0]]
            for s, a in zip(seqs, alts)
        ]
        np.testing.assert_allclose(got.score_R, expected, atol=1e-5)
    rows = np.arange(5)
    np.testing.assert_allclose(
        got.score_R,
        got.log_probs_R4[rows, table.alt_R - 3] - got.log_probs_R4[rows, table.ref_R - 3],
        atol=1e-6,
    )


@pytest.mark.parametrize("cfg", [MLM_CFG, CLM_CFG], ids=["masked-both-strands", "causal"])
def test_batch_size_invariance(rng, key, cfg):
    model = ConvLM(key, causal=cfg.causal)
    seqs = (
        random_seqs(rng, 6, 13) + random_seqs(rng, 5, 21) + random_seqs(rng, 1, 80)
    )  # 3 lengths, one cropped
    table = make_table(seqs)
    one = scoring.score_table(model, cfg, table, batch_size=1)
    seven = scoring.score_table(model, cfg, table, batch_size=7)
    # Not bit-identical: XLA may order a float32 reduction differently for another batch
    # shape, and the causal score sums a whole window of log-likelihoods.
    np.testing.assert_allclose(one.score_R, seven.score_R, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(one.log_probs_R4, seven.log_probs_R4, rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(len(jax.devices()) < 2, reason="needs several (simulated) devices")
def test_model_on_a_mesh_scores_data_parallel(rng, key):

    model = ConvLM(key)
    mesh = Mesh(np.array(jax.devices()), ("data",), axis_types=(AxisType.Auto,))
    on_mesh = jax.device_put(
        model, NamedSharding(mesh, PartitionSpec())
    )  # replicated, as in training
    assert scoring.batch_sharding(on_mesh).mesh is mesh and scoring.batch_sharding(model) is None
    table = make_table(random_seqs(rng, 11, 17))
    # batch 3 is not a multiple of the device count: rounded up, padded, still the same scores
    np.testing.assert_allclose(
        scoring.score_table(on_mesh, MLM_CFG, table, batch_size=3).score_R,
        scoring.score_table(model, MLM_CFG, table, batch_size=3).score_R,
        rtol=1e-5,
        atol=1e-5,
    )
