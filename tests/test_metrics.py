"""Metrics: ROC AUC against its definition, AUPRC against sklearn, bootstrap, bad input."""

import jaxtyping
import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from nanodna.evaluation import metrics


def pairwise_auc(y, s):
    """ROC AUC by its definition: P(score of a positive > score of a negative), ties count 1/2."""
    pos, neg = s[y == 1], s[y == 0]
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size


@pytest.fixture
def data():
    rng = np.random.default_rng()
    y = rng.integers(0, 2, size=300)
    y[:2] = [0, 1]
    s = rng.normal(size=300) + 0.8 * y
    s[10:30] = np.round(s[10:30])  # some ties
    return y, s


def test_roc_auc_matches_definition(data):
    y, s = data
    assert metrics.roc_auc(y, s) == pytest.approx(pairwise_auc(y, s), abs=1e-12)
    assert metrics.roc_auc(y, -s) == pytest.approx(1 - pairwise_auc(y, s), abs=1e-12)


def test_perfect_and_reversed_ranking():
    y = np.array([0, 0, 1, 1, 0, 1])
    s = y + np.random.default_rng().uniform(0, 0.5, size=6)
    assert metrics.roc_auc(y, s) == 1.0 and metrics.auprc(y, s) == 1.0
    assert metrics.roc_auc(y, -s) == 0.0


def test_auprc_matches_sklearn(data):
    y, s = data
    assert metrics.auprc(y, s) == pytest.approx(average_precision_score(y, s))


def test_summarize_and_bootstrap(data):
    y, s = data
    out = metrics.summarize(y, s, bootstrap=200, seed=3)
    assert out["n"] == len(y) and out["n_pos"] == y.sum() and out["bootstrap"] == 200
    for name in ("roc_auc", "auprc"):
        lo, hi = out[f"{name}_ci"]
        assert lo < out[name] < hi
        assert 0.0 < hi - lo < 0.3
    # seeded: the same seed gives the same interval, another seed another one
    assert metrics.bootstrap_ci(y, s, n_resamples=50, seed=1) == metrics.bootstrap_ci(
        y, s, n_resamples=50, seed=1
    )
    assert metrics.bootstrap_ci(y, s, n_resamples=50, seed=1) != metrics.bootstrap_ci(
        y, s, n_resamples=50, seed=2
    )
    assert "roc_auc_ci" not in metrics.summarize(y, s)


def test_bad_inputs_give_clear_errors():
    s = np.random.default_rng().normal(size=5)
    with pytest.raises(metrics.MetricsError, match="both classes"):
        metrics.roc_auc(np.ones(5, int), s)
    with pytest.raises(metrics.MetricsError, match="both classes"):
        metrics.summarize(np.zeros(5, int), s, bootstrap=10)
    with pytest.raises(metrics.MetricsError, match="NaN"):
        metrics.roc_auc(np.array([0, 1, 0, 1, 0]), np.where(np.arange(5) == 2, np.nan, s))
    # caught by the shape annotation under the test-time checker, by MetricsError without it
    with pytest.raises((metrics.MetricsError, jaxtyping.TypeCheckError)):
        metrics.roc_auc(np.array([0, 1]), s)
