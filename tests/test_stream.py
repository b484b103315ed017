"""Data streams: determinism, exact resume, boundaries, N filter, holdout, sharding, RC."""

import dataclasses
import sys

import numpy as np
import pytest
from test_fasta import fasta_text, random_seq

from nanodna import tokenizer
from nanodna.data import DataError, prepare, stream
from nanodna.data.batch import Batch
from nanodna.data.genome import Chromosome
from nanodna.data.stream import DataConfig, make_eval_iterator, make_train_iterator

L = 32


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two small assemblies of random, mixed-case DNA, with N-rich and too-short chromosomes."""
    rng = np.random.default_rng()
    tmp = tmp_path_factory.mktemp("stream")
    genomes = {
        "asmA": {"chr1": random_seq(rng, 3000), "chr2": random_seq(rng, 1500), "tiny": "ACGTA"},
        "asmB": {
            "chr1": random_seq(rng, 2500),
            "gappy": "N" * 700 + random_seq(rng, 300),
            "dotted": "ACGTACGN" * 40,  # every window is 1/8 N
        },
    }
    paths = []
    for asm, chroms in genomes.items():
        path = tmp / f"{asm}.fa"
        path.write_text(fasta_text(list(chroms.items())))
        paths.append(str(path))
    prepare.prepare_fasta(paths, str(tmp / "store"), progress=False)
    return str(tmp / "store"), genomes


def config(store_dir, **kw):
    kw = {"seq_len": L, "batch_size": 8, "prefetch": 0, **kw}
    return DataConfig(store_dirs=store_dir, **kw)


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b):
        for k in Batch._fields:
            np.testing.assert_array_equal(getattr(a, k), getattr(b, k))


def source_of(window, genomes):
    """(assembly, chromosome, strand) of every place the window occurs, whole, in one chromosome."""
    hits = []
    for asm, chroms in genomes.items():
        for name, seq in chroms.items():
            upper = seq.upper()
            if window in upper:
                hits.append((asm, name, "+"))
            if tokenizer.reverse_complement_str(window) in upper:
                hits.append((asm, name, "-"))
    return hits


def windows_of(batch):
    return [tokenizer.decode(row) for row in batch.targets_BL]


def test_batches_have_the_contract_shapes_and_dtypes(store):
    b = next(make_train_iterator(config(store[0])))
    assert isinstance(b, Batch) and Batch._fields == ("tokens_BL", "targets_BL", "weights_BL")
    assert b.tokens_BL.shape == b.targets_BL.shape == b.weights_BL.shape == (8, L)
    assert b.tokens_BL.dtype == b.targets_BL.dtype == np.int32
    assert b.weights_BL.dtype == np.float32
    assert (b.tokens_BL == tokenizer.MASK).any() and b.weights_BL.sum() > 0


def test_same_seed_same_batches_other_seed_other_batches(store):
    cfg = config(store[0])
    assert_same(take(make_train_iterator(cfg), 3), take(make_train_iterator(cfg), 3))
    other = next(make_train_iterator(dataclasses.replace(cfg, seed=cfg.seed + 1)))
    assert not np.array_equal(other.targets_BL, next(make_train_iterator(cfg)).targets_BL)


@pytest.mark.parametrize("prefetch,workers", [(0, 0), (3, 0), (0, 1)])
def test_exact_resume_mid_stream(store, prefetch, workers):
    """Grain threads or a worker process pass the Batch through; the state resumes exactly."""
    cfg = config(store[0], prefetch=prefetch, worker_count=workers)
    it = make_train_iterator(cfg)
    take(it, 3)
    state = it.get_state()
    expected = take(it, 4)
    assert all(isinstance(b, Batch) for b in expected)
    fresh = make_train_iterator(cfg)
    fresh.set_state(state)
    assert_same(take(fresh, 4), expected)
    assert_same(expected, [make_train_iterator(config(store[0])).batches.batch(i)
                           for i in range(3, 7)])  # the same as produced inline
    with pytest.raises(DataError, match="batch_size was 8, now 4"):
        make_train_iterator(dataclasses.replace(cfg, batch_size=4)).set_state(state)


def test_plain_loop_without_grain_gives_the_same_batches(store, monkeypatch):
    cfg = config(store[0], prefetch=2)
    with_grain = take(make_train_iterator(cfg), 3)
    monkeypatch.setitem(sys.modules, "grain", None)  # makes `import grain` fail
    assert_same(take(make_train_iterator(cfg), 3), with_grain)


def test_windows_stay_inside_chromosomes_and_keep_repeat_flags(store):
    store_dir, genomes = store
    cfg = config(store_dir, mode="clm", max_n_frac=1.0)
    for b in take(make_train_iterator(cfg), 4):
        for row in range(len(b.targets_BL)):
            window = tokenizer.decode(np.r_[b.tokens_BL[row, :1], b.targets_BL[row]])
            hits = [h for h in source_of(window, genomes) if h[2] == "+"]
            assert hits  # a whole window of one chromosome, forward strand
            asm, name, _ = hits[0]
            seq = genomes[asm][name]
            start = seq.upper().index(window)
            lower = np.array([c.islower() for c in seq[start + 1 : start + L + 1]])
            expected = np.where(lower, 0.1, 1.0) * (b.targets_BL[row] != tokenizer.UNK)
            np.testing.assert_allclose(b.weights_BL[row], expected)
            assert name != "tiny"  # shorter than a window


def test_clm_targets_are_inputs_shifted(store):
    b = next(make_train_iterator(config(store[0], mode="clm")))
    np.testing.assert_array_equal(b.tokens_BL[:, 1:], b.targets_BL[:, :-1])


def test_max_n_frac_filters_windows(store):
    store_dir, genomes = store
    cfg = config(store_dir, max_n_frac=0.1, assembly_weights={"asmB": 1.0}, batch_size=32)
    for b in take(make_train_iterator(cfg), 5):
        assert ((b.targets_BL == tokenizer.UNK).mean(axis=1) <= 0.1).all()
        assert all(source_of(w, genomes)[0][0] == "asmB" for w in windows_of(b))
    only_dotted = ("chr1", "chr2", "gappy")
    with pytest.raises(DataError, match="no window with N fraction"):
        next(make_train_iterator(config(store_dir, holdout_chromosomes=only_dotted)))


def test_heldout_chromosomes_never_in_training_and_only_in_validation(store):
    store_dir, genomes = store
    cfg = config(store_dir, holdout_chromosomes=("chr1",), holdout_assemblies=(), max_n_frac=1.0)
    for b in take(make_train_iterator(cfg), 6):
        for w in windows_of(b):
            assert all(name != "chr1" for _, name, _ in source_of(w, genomes))
    for b in make_eval_iterator(cfg):
        real = (b.tokens_BL != tokenizer.PAD).any(axis=1)  # the last batch is padded
        for w in np.array(windows_of(b))[real]:
            assert {name for _, name, _ in source_of(w, genomes)} == {"chr1"}
    by_assembly = dataclasses.replace(cfg, holdout_chromosomes=(), holdout_assemblies=("asmA",))
    for b in take(make_train_iterator(by_assembly), 3):
        assert all(source_of(w, genomes)[0][0] == "asmB" for w in windows_of(b))


def test_validation_set_is_fixed_finite_and_layout_independent(store):
    cfg = config(store[0], holdout_chromosomes=("asmA/chr1",), eval_windows=20)
    a, b = list(make_eval_iterator(cfg)), list(make_eval_iterator(cfg))
    assert len(a) == 3  # ceil(20 / 8)
    assert_same(a, b)
    padding = a[-1].tokens_BL[4:]
    assert (padding == tokenizer.PAD).all() and (a[-1].weights_BL[4:] == 0).all()
    assert (a[-1].tokens_BL[:4] != tokenizer.PAD).all()
    # The same 20 windows, masked the same way, whatever the batch size.
    other = list(make_eval_iterator(dataclasses.replace(cfg, batch_size=5)))
    cat = lambda bs, k: np.concatenate([getattr(x, k) for x in bs])[:20]  # noqa: E731
    for k in Batch._fields:
        np.testing.assert_array_equal(cat(a, k), cat(other, k))
    # Repeats weigh 0 in validation (repeat_weight_eval) but count in training.
    assert cfg.repeat_weight_eval == 0.0
    with pytest.raises(DataError, match="no validation holdout"):
        make_eval_iterator(config(store[0]))


def test_process_shards_are_disjoint_slices_of_the_global_batch(store):
    cfg = config(store[0], batch_size=4)
    whole = take(make_train_iterator(dataclasses.replace(cfg, batch_size=12)), 2)
    shards = [take(make_train_iterator(cfg, process_index=p, process_count=3), 2) for p in range(3)]
    for step in range(2):
        rows = np.concatenate([shards[p][step].targets_BL for p in range(3)])
        np.testing.assert_array_equal(rows, whole[step].targets_BL)
        assert len({w for w in windows_of(Batch(rows, rows, rows))}) == 12
    with pytest.raises(DataError, match="process_index 3"):
        make_train_iterator(cfg, process_index=3, process_count=3)


def test_rc_augment_yields_reverse_complements(store):
    store_dir, genomes = store
    strands = []
    for b in take(make_train_iterator(config(store_dir, rc_augment=True, max_n_frac=0.0)), 6):
        for w in windows_of(b):
            hits = source_of(w, genomes)
            assert len({s for _, _, s in hits}) == 1  # random DNA is not its own RC
            strands.append(hits[0][2])
    assert 0.25 < strands.count("-") / len(strands) < 0.75


def test_bad_config_gives_clear_errors(store, tmp_path):
    with pytest.raises(DataError, match="not a genome store"):
        make_train_iterator(config(str(tmp_path)))
    with pytest.raises(DataError, match="holdout chromosome 'chrZ'"):
        make_train_iterator(config(store[0], holdout_chromosomes=("chrZ",)))
    with pytest.raises(DataError, match="unknown assembly 'asmC'"):
        make_train_iterator(config(store[0], assembly_weights={"asmC": 1.0}))
    with pytest.raises(DataError, match="mode must be"):
        make_train_iterator(config(store[0], mode="bert"))


def test_several_stores(store, tmp_path):
    store_dir, genomes = store
    seq = random_seq(np.random.default_rng(), 800)
    (tmp_path / "asmC.fa").write_text(fasta_text([("chrC", seq)]))
    prepare.prepare_fasta([str(tmp_path / "asmC.fa")], str(tmp_path / "c"), progress=False)
    both = config(store_dir, assembly_weights={"asmC": 1.0})
    both.store_dirs = (store_dir, str(tmp_path / "c"))
    for w in windows_of(next(make_train_iterator(both))):
        assert w in seq.upper()
    with pytest.raises(DataError, match="assembly 'asmA' is in two stores"):
        make_train_iterator(config((store_dir, store_dir)))


def gappy_scaffold(rng, length=54_000, seg=290, gap=560):
    """A draft scaffold: clean runs of `seg` bp between N gaps of `gap` bp. With 256-bp windows
    and max_n_frac=0.1 only a few percent of window starts pass the N filter."""
    parts = []
    while sum(map(len, parts)) < length:
        parts += [random_seq(rng, seg), "N" * gap]
    return "".join(parts)[:length]


def valid_start_fraction(seq, W, max_n_frac):
    is_n = np.frombuffer(seq.upper().encode(), np.uint8) == ord("N")
    cum = np.concatenate([[0], np.cumsum(is_n)])
    return float(np.mean(cum[W:] - cum[:-W] <= max_n_frac * W))


@pytest.fixture(scope="module")
def gappy_store(tmp_path_factory):
    rng = np.random.default_rng()
    tmp = tmp_path_factory.mktemp("gappy")
    genomes = {"draft": {"scaffold1": gappy_scaffold(rng), "mostlyN": "N" * 2990 + "ACGTACGTAC"}}
    (tmp / "draft.fa").write_text(fasta_text(list(genomes["draft"].items())))
    prepare.prepare_fasta([str(tmp / "draft.fa")], str(tmp / "store"), progress=False)
    return str(tmp / "store"), genomes


def test_gappy_genome_streams_without_dying_and_deterministically(gappy_store):
    # Issue 13, fault 4: windows were redrawn up to 100 times, so a genome where few windows
    # pass max_n_frac died mid-run with "found no window ... in 100 draws". Now the stream
    # samples only valid windows: 2000 batches, every window within the N limit.
    store_dir, genomes = gappy_store
    seq = genomes["draft"]["scaffold1"]
    frac = valid_start_fraction(seq, 256, 0.1)
    assert 0.03 < frac < 0.12, frac  # like the 54-kbp draft scaffold of the issue
    cfg = config(store_dir, seq_len=256, batch_size=16, max_n_frac=0.1)
    it = make_train_iterator(cfg)
    assert it.batches.sampler.usable_fraction == pytest.approx(
        frac * (len(seq) - 255) / (len(seq) - 255 + 3000 - 255), rel=1e-9)
    digest = []
    for i in range(2000):
        b = next(it)
        assert ((b.targets_BL == tokenizer.UNK).sum(axis=1) <= 0.1 * 256).all()
        digest.append(int(np.asarray(b.targets_BL, np.int64).sum()))
        if i == 999:
            state = it.get_state()
    again = make_train_iterator(cfg)
    again.set_state(state)
    assert [int(np.asarray(next(again).targets_BL, np.int64).sum()) for _ in range(5)] == \
        digest[1000:1005]
    first = make_train_iterator(cfg)
    assert [int(np.asarray(next(first).targets_BL, np.int64).sum()) for _ in range(5)] == \
        digest[:5]


def test_genome_without_a_valid_window_refuses_at_start(gappy_store):
    store_dir, _ = gappy_store
    cfg = config(store_dir, seq_len=256, max_n_frac=0.1, holdout_chromosomes=("scaffold1",))
    with pytest.raises(DataError) as e:
        make_train_iterator(cfg)  # at build time, before any batch is asked for
    msg = str(e.value)
    assert "\n" not in msg and "no window with N fraction" in msg and "max_n_frac" in msg
    # the validation stream of a mostly-N holdout refuses the same way
    cfg = config(store_dir, seq_len=256, max_n_frac=0.1, holdout_chromosomes=("mostlyN",))
    with pytest.raises(DataError, match="no window with N fraction"):
        make_eval_iterator(cfg)


def test_startup_summary_reports_the_usable_genome(gappy_store):
    store_dir, _ = gappy_store
    it = make_train_iterator(config(store_dir, seq_len=256, max_n_frac=0.1))
    line = it.batches.summary()
    assert "\n" not in line and "usable" in line and "256-bp" in line
    assert "1 of 2 chromosomes" in line and "mostlyN" not in line.split("skipped")[0]


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 24])
def test_valid_runs_match_a_brute_force_count(monkeypatch, chunk):
    # The chunked scan must give the same valid starts as counting N in every window.
    monkeypatch.setattr(stream, "_SCAN_CHUNK", chunk)
    rng = np.random.default_rng()
    for _ in range(5):
        n, W, frac = int(rng.integers(20, 300)), int(rng.integers(1, 20)), rng.random() * 0.5
        ids = tokenizer.ACGT[rng.integers(0, 4, n)].astype(np.uint8)
        for _ in range(int(rng.integers(0, 6))):  # N gaps of random sizes
            a = int(rng.integers(0, n))
            ids[a : a + int(rng.integers(1, 30))] = tokenizer.UNK
        pad = int(rng.integers(0, 5))  # the chromosome sits at an offset in its assembly
        tokens = np.concatenate([np.full(pad, tokenizer.A, np.uint8), ids])
        c = Chromosome("a", "c", pad, n, float(np.mean(ids == tokenizer.UNK)), 0.0)
        first, count = stream.valid_runs(tokens, c, W, frac)
        got = np.zeros(max(n - W + 1, 0), bool)
        for f, k in zip(first, count):
            assert k > 0
            got[f - pad : f - pad + k] = True
        expected = np.array([(ids[s : s + W] == tokenizer.UNK).sum() <= frac * W
                             for s in range(n - W + 1)], bool)
        np.testing.assert_array_equal(got, expected)
