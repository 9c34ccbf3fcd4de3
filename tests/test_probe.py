"""Tests of byol.probe's suite on features with known answers."""

import numpy as np
import pytest

from byol import probe

RNG = np.random.default_rng(1)


def _clusters(n_per_class, classes=4, dim=6, noise=0.3, seed=0):
    """The same `classes` centres for every seed; fresh noise and order."""
    centres = np.random.default_rng(99).normal(size=(classes, dim)) * 3
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n_per_class)
    features = centres[labels] + rng.normal(0, noise, (len(labels), dim))
    order = rng.permutation(len(labels))
    return features[order].astype(np.float32), labels[order].astype(np.int32)


def test_few_label_subsets_are_class_balanced_draws():
    labels = np.repeat(np.arange(5), [100, 200, 300, 400, 1000])
    rng = np.random.default_rng(0)
    subset = probe.few_label_subset(labels, 0.01, rng)
    assert np.bincount(labels[subset]).tolist() == [1, 2, 3, 4, 10]
    assert len(set(subset)) == len(subset)
    other = probe.few_label_subset(labels, 0.01, rng)
    assert not np.array_equal(subset, other)
    # Unlabelled examples are never drawn; a class keeps at least one.
    labels = np.array([-1] * 50 + [0] * 10 + [1] * 10)
    assert set(labels[probe.few_label_subset(labels, 0.01, rng)]) == {0, 1}


def test_few_label_probe_reports_mean_and_std_of_its_draws():
    train, val, test = (_clusters(n, seed=s) for n, s in ((200, 0), (50, 1), (50, 2)))
    result = probe.few_label_probe(train, val, test, 4, fraction=0.05, draws=3)
    assert result["examples"] == 40 and len(result["top1"]) == 3
    assert result["top1_mean"] == pytest.approx(np.mean(result["top1"]))
    assert result["top1_std"] == pytest.approx(np.std(result["top1"], ddof=1))
    assert result["top1_mean"] > 0.95  # separable clusters: ~all right


def test_evaluate_and_monitor_on_separable_clusters():
    feats = {
        name: ({"embedding": x, "projection": x[:, :2]}, y)
        for name, (x, y) in zip(
            ("train", "val", "test"),
            (_clusters(300, seed=3), _clusters(100, seed=4), _clusters(100, seed=5)),
            strict=True,
        )
    }
    suite = probe.evaluate(feats, 4)
    assert suite["linear"]["top1"] > 0.97 and suite["knn"]["best_top1"] > 0.97
    assert suite["knn"]["k"] in probe.KNN_K
    assert set(suite["few_label"]) == {"1%", "10%"}
    assert suite["few_label"]["1%"]["examples"] == 12  # 1% of 300 per class, >= 1
    assert 1 <= suite["rank"]["projection"] <= 2 <= suite["rank"]["embedding"] <= 6
    scalars = probe.monitor(feats, 4, linear=suite["linear"])
    assert scalars["probe_top1"] == suite["linear"]["top1"]
    assert set(scalars) == {
        "probe_top1",
        "knn20_top1",
        "knn200_top1",
        "rank_embedding",
        "rank_projection",
    }
