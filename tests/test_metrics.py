"""Tests of byol.metrics against independent numpy computations and known toys."""

import jax.numpy as jnp
import numpy as np
import pytest

from byol import metrics

RNG = np.random.default_rng(0)


def _numpy_knn(bank, bank_labels, queries, k, num_classes, temperature):
    """InstDisc's weighted kNN, one query at a time, in numpy."""
    bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    out = []
    for q in queries:
        similarity = bank @ (q / np.linalg.norm(q))
        nearest = np.argsort(-similarity, kind="stable")[:k]
        votes = np.zeros(num_classes)
        for i in nearest:
            votes[bank_labels[i]] += np.exp(similarity[i] / temperature)
        out.append(int(np.argmax(votes)))
    return np.array(out)


@pytest.mark.parametrize("k, temperature", [(1, 0.07), (5, 0.07), (20, 0.5)])
def test_knn_matches_numpy(k, temperature):
    bank = RNG.normal(size=(300, 8)).astype(np.float32)
    labels = RNG.integers(0, 4, 300)
    queries = RNG.normal(size=(50, 8)).astype(np.float32)
    got = metrics.knn_classify(bank, labels, queries, k, 4, temperature, chunk=16)
    want = _numpy_knn(bank, labels, queries, k, 4, temperature)
    np.testing.assert_array_equal(np.asarray(got), want)


def test_knn_on_separated_clusters_is_exact_and_votes_are_weighted():
    centres = np.eye(3, dtype=np.float32) * 10
    bank = np.repeat(centres, 20, axis=0) + RNG.normal(0, 0.1, (60, 3))
    labels = np.repeat(np.arange(3), 20)
    queries = centres + RNG.normal(0, 0.1, (3, 3))
    np.testing.assert_array_equal(
        metrics.knn_classify(bank, labels, queries, 20, 3), [0, 1, 2]
    )
    # Two far neighbours of class 1 against one near neighbour of class 0: the
    # weights, not the count, decide (cos 0.8 vs 1.0 at temperature 0.07).
    bank = np.array([[1.0, 0.0], [0.8, 0.6], [0.8, -0.6]], np.float32)
    votes = metrics.knn_classify(bank, np.array([0, 1, 1]), bank[:1], 3, 2, 0.07)
    assert int(votes[0]) == 0
    assert (
        int(metrics.knn_classify(bank, np.array([0, 1, 1]), bank[:1], 3, 2, 10.0)[0])
        == 1
    )


def test_effective_rank_matches_numpy_and_its_extremes():
    x = RNG.normal(size=(500, 16)) @ np.diag(np.linspace(0.1, 3.0, 16))
    s = np.linalg.svd(x, compute_uv=False)
    p = s / s.sum() + 1e-7
    assert float(metrics.effective_rank(x)) == pytest.approx(
        np.exp(-(p * np.log(p)).sum()), rel=1e-4
    )
    # Every row on one line: rank 1; equal singular values: the dimension.
    line = np.outer(RNG.normal(size=200), RNG.normal(size=8))
    assert float(metrics.effective_rank(line)) == pytest.approx(1.0, abs=1e-3)
    assert float(metrics.effective_rank(np.eye(6) * 3)) == pytest.approx(6.0, rel=1e-5)


def test_top_k_hits_skip_unlabelled_and_cap_k():
    logits = jnp.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.3, 0.3, 0.4]])
    labels = jnp.array([1, 2, -1])
    assert metrics.top_k_hits(logits, labels, 1).tolist() == [True, False, False]
    assert metrics.top_k_hits(logits, labels, 5).tolist() == [True, True, False]
