"""Fast evaluation of a frozen encoder on small datasets: probes, kNN, ranks.

Features of each split are extracted once (inference mode, no augmentation,
each process its shard, gathered to every process). On them:

* the linear probe: a multinomial logistic regression on standardised
  features, fitted by L-BFGS on ``train_minus_val``, its L2 penalty chosen
  on ``val``, reported on ``test``;
* few-label probes: the same with 1% and 10% of the training labels,
  class-balanced, over several draws (mean ± std);
* kNN (k 20 and 200, cosine similarity, votes weighted by exp(sim / 0.07)),
  neighbours from ``train_minus_val``, the k reported chosen on ``val``;
* the effective rank (RankMe) of the embedding and of the projection.

`monitor` is what pre-training logs every `evaluation.probe_every_steps`
(kNN and ranks on ``val``), `evaluate` what it and ``protocol=probe`` report.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from byol import distributed, metrics
from byol.data import pipeline

# L2 penalties tried on the validation part; the best one is reported.
DEFAULT_L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2)
KNN_K = (20, 200)
KNN_TEMPERATURE = 0.07  # InstDisc's, solo-learn's default
FEW_LABEL_FRACTIONS = (0.01, 0.1)
FEW_LABEL_DRAWS = 3
# Fewer labels want stronger penalties; still chosen on `val`.
FEW_LABEL_L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)


class ProbeResult(NamedTuple):
    """Accuracy of a linear classifier on frozen features (fractions, not %)."""

    top1: float
    top5: float
    val_top1: float
    l2: float


def eval_batches(data_config: ml_collections.ConfigDict, split: str, batch_size: int):
    """One ordered, padded pass over this process's shard of a labelled split."""
    # The probe is supervised: STL-10's unlabelled images stay out.
    return pipeline.load_from_config(
        data_config,
        split,
        is_training=False,
        batch_dims=(batch_size,),
        labelled_only=True,
    )


def extract_features(
    embed: Callable[[np.ndarray], Any],
    batches: Iterable[dict[str, np.ndarray]],
    max_examples: int | None = None,
) -> tuple[Any, np.ndarray]:
    """`embed`'s features (float32, a pytree of [N, ...]) and labels [N], unmasked.

    `embed` maps uint8 images [N, H, W, C] to an array or a pytree of arrays
    (e.g. embedding and projection).
    """
    features, labels, count = [], [], 0
    for batch in batches:
        images = batch["images"].reshape((-1,) + batch["images"].shape[-3:])
        mask = batch["mask"].reshape(-1) if "mask" in batch else slice(None)
        features.append(jax.tree.map(lambda x, m=mask: np.asarray(x)[m], embed(images)))
        labels.append(np.asarray(batch["labels"]).reshape(-1)[mask])
        count += len(labels[-1])
        if max_examples is not None and count >= max_examples:
            break
    x = jax.tree.map(
        lambda *xs: np.concatenate(xs)[:max_examples].astype(np.float32), *features
    )
    return x, np.concatenate(labels)[:max_examples].astype(np.int32)


def from_all_processes(arrays):
    """Every process's rows of a pytree of arrays, in process order."""
    if jax.process_count() == 1:
        return arrays
    from jax.experimental import multihost_utils  # noqa: PLC0415

    leaves, tree = jax.tree.flatten(arrays)
    distributed.barrier("byol_features")  # shards take unequal time
    counts = multihost_utils.process_allgather(np.int32(len(leaves[0])))
    longest = int(counts.max())
    # process_allgather takes the same shape everywhere: pad, gather, trim.
    padded = [
        np.concatenate([x, np.zeros((longest - len(x), *x.shape[1:]), x.dtype)])
        for x in leaves
    ]
    gathered = multihost_utils.process_allgather(padded)
    leaves = [
        np.concatenate([x[p, :n] for p, n in enumerate(counts)]) for x in gathered
    ]
    return jax.tree.unflatten(tree, leaves)


def probe_features(
    config: ml_collections.ConfigDict, embed, max_train_examples: int | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Frozen features of ``train`` (minus ``val``), ``val`` and ``test``."""
    per_process = max_train_examples and -(-max_train_examples // jax.process_count())
    feats = {}
    for name, split in (("train", "train_minus_val"), ("val", "val"), ("test", "test")):
        limit = per_process if name == "train" else None
        local = extract_features(embed, eval_batches(config.data, split, 1000), limit)
        feats[name] = from_all_processes(local)
    feats["train"] = jax.tree.map(lambda x: x[:max_train_examples], feats["train"])
    return feats


def _standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean, std = train.mean(axis=0), train.std(axis=0) + 1e-6
    return [(x - mean) / std for x in (train, *others)]


@functools.partial(jax.jit, static_argnames=("num_classes", "iterations"))
def _fit_logistic_regression(x, y, l2, *, num_classes, iterations):
    params = (jnp.zeros((x.shape[1], num_classes)), jnp.zeros((num_classes,)))

    def loss_fn(p):
        logits = x @ p[0] + p[1]
        xent = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return xent + l2 * jnp.sum(p[0] ** 2)

    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss_fn)

    def step(carry, _):
        p, state = carry
        value, grad = value_and_grad(p, state=state)
        updates, state = solver.update(
            grad, state, p, value=value, grad=grad, value_fn=loss_fn
        )
        return (optax.apply_updates(p, updates), state), value

    (params, _), _ = jax.lax.scan(
        step, (params, solver.init(params)), None, length=iterations
    )
    return params


def _accuracy(params, x, y, k: int) -> float:
    logits = jnp.asarray(x) @ params[0] + params[1]
    return float(jnp.mean(metrics.top_k_hits(logits, jnp.asarray(y), k)))


def linear_probe(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    iterations: int = 150,
) -> ProbeResult:
    """Fits on `train`, picks the L2 penalty by top-1 on `val`, reports on `test`.

    Each of `train`, `val`, `test` is (features [N, D], labels [N]).
    """
    if not l2_grid:
        raise ValueError("linear probe l2_grid is empty; give at least one penalty")
    x_train, x_val, x_test = _standardise(train[0], val[0], test[0])
    best = None
    for l2 in l2_grid:
        params = _fit_logistic_regression(
            x_train, train[1], l2, num_classes=num_classes, iterations=iterations
        )
        val_top1 = _accuracy(params, x_val, val[1], 1)
        if best is None or val_top1 > best[0]:
            best = (val_top1, l2, params)
    val_top1, l2, params = best
    return ProbeResult(
        top1=_accuracy(params, x_test, test[1], 1),
        top5=_accuracy(params, x_test, test[1], 5),
        val_top1=val_top1,
        l2=l2,
    )


def knn_accuracy(bank, queries, k: int, num_classes: int) -> float:
    """Top-1 of weighted kNN (`metrics.knn_classify`); each is (features, labels)."""
    predicted = metrics.knn_classify(
        bank[0], bank[1], queries[0], k, num_classes, KNN_TEMPERATURE
    )
    return float(np.mean(np.asarray(predicted) == queries[1]))


def few_label_subset(labels: np.ndarray, fraction: float, rng) -> np.ndarray:
    """Sorted indices of `fraction` of each class's examples (at least one each)."""
    chosen = []
    for label in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == label)
        count = max(1, round(fraction * len(members)))
        chosen.append(rng.choice(members, count, replace=False))
    return np.sort(np.concatenate(chosen))


def few_label_probe(train, val, test, num_classes, fraction, draws, seed=0):
    """Linear probes on class-balanced `fraction`s of the training labels.

    Returns the test top-1 of each draw, its mean and (sample) std.
    """
    rng = np.random.default_rng([seed, round(fraction * 1e6)])
    top1 = []
    for _ in range(draws):
        subset = few_label_subset(train[1], fraction, rng)
        result = linear_probe(
            (train[0][subset], train[1][subset]),
            val,
            test,
            num_classes,
            l2_grid=FEW_LABEL_L2_GRID,
        )
        top1.append(result.top1)
    return {
        "fraction": fraction,
        "examples": len(subset),
        "top1": top1,
        "top1_mean": float(np.mean(top1)),
        "top1_std": float(np.std(top1, ddof=1)) if draws > 1 else 0.0,
    }


def _parts(split):
    """(embedding, labels) and the projection (or None) of a split's features."""
    features, labels = split
    if isinstance(features, dict):
        return (features["embedding"], labels), features.get("projection")
    return (features, labels), None


def monitor(feats, num_classes: int, linear: dict | None = None) -> dict[str, float]:
    """The scalars pre-training logs at a probe: linear (test), kNN and ranks (val).

    `linear` is a linear probe already fitted on these features, if any.
    """
    (train, _), (val, val_projection), (test, _) = (
        _parts(feats[name]) for name in ("train", "val", "test")
    )
    if linear is None:
        linear = linear_probe(train, val, test, num_classes)._asdict()
    scalars = {"probe_top1": linear["top1"]}
    for k in KNN_K:
        scalars[f"knn{k}_top1"] = knn_accuracy(train, val, k, num_classes)
    scalars["rank_embedding"] = float(metrics.effective_rank(val[0]))
    if val_projection is not None:
        scalars["rank_projection"] = float(metrics.effective_rank(val_projection))
    return scalars


def evaluate(feats, num_classes: int, seed: int = 0) -> dict[str, Any]:
    """The full suite on `test`: linear, few-label and kNN probes, effective ranks.

    Every choice (L2 penalty, k) is made on ``val``.
    """
    (train, _), (val, _), (test, test_projection) = (
        _parts(feats[name]) for name in ("train", "val", "test")
    )
    val_knn = {k: knn_accuracy(train, val, k, num_classes) for k in KNN_K}
    best_k = max(KNN_K, key=lambda k: (val_knn[k], -k))
    results = {
        "linear": linear_probe(train, val, test, num_classes)._asdict(),
        "knn": {
            "top1": {f"k{k}": knn_accuracy(train, test, k, num_classes) for k in KNN_K},
            "val_top1": {f"k{k}": v for k, v in val_knn.items()},
            "k": best_k,
        },
        "few_label": {
            f"{100 * fraction:g}%": few_label_probe(
                train, val, test, num_classes, fraction, FEW_LABEL_DRAWS, seed
            )
            for fraction in FEW_LABEL_FRACTIONS
        },
        "rank": {"embedding": float(metrics.effective_rank(test[0]))},
    }
    results["knn"]["best_top1"] = results["knn"]["top1"][f"k{best_k}"]
    if test_projection is not None:
        results["rank"]["projection"] = float(metrics.effective_rank(test_projection))
        results["collapse"] = float(metrics.collapse_indicator(test_projection))
    return results
