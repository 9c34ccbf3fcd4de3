"""The fast linear probe of a frozen encoder, for small datasets.

Features of each split are extracted once (inference mode, no augmentation,
each process its shard, gathered to every process), standardised, and a
multinomial logistic regression is fitted by L-BFGS on ``train_minus_val``,
its L2 penalty chosen on ``val`` and reported on ``test``. Used during and at
the end of pre-training, by the demo, the study and ``protocol=probe``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from byol import metrics
from byol.data import pipeline

# L2 penalties tried on the validation part; the best one is reported.
DEFAULT_L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2)


class ProbeResult(NamedTuple):
    """Accuracy of a linear classifier on frozen features (fractions, not %)."""

    top1: float
    top5: float
    val_top1: float
    l2: float


def eval_batches(data_config: ml_collections.ConfigDict, split: str, batch_size: int):
    """One ordered, padded pass over this process's shard of a labelled split."""
    return pipeline.load(
        data_config.dataset,
        split,
        is_training=False,
        batch_dims=(batch_size,),
        image_size=data_config.image_size,
        data_dir=data_config.data_dir,
        num_threads=data_config.num_threads,
        val_size=None if data_config.val_size < 0 else data_config.val_size,
        # The probe is supervised: STL-10's unlabelled images stay out.
        labelled_only=True,
        skip_bad_images=data_config.skip_corrupt_images,
    )


def extract_features(
    embed: Callable[[np.ndarray], jax.Array],
    batches: Iterable[dict[str, np.ndarray]],
    max_examples: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`embed`'s features [N, D] (float32) and labels [N] of the unmasked examples."""
    features, labels, count = [], [], 0
    for batch in batches:
        images = batch["images"].reshape((-1,) + batch["images"].shape[-3:])
        mask = batch["mask"].reshape(-1) if "mask" in batch else slice(None)
        features.append(np.asarray(embed(images))[mask])
        labels.append(np.asarray(batch["labels"]).reshape(-1)[mask])
        count += len(features[-1])
        if max_examples is not None and count >= max_examples:
            break
    x = np.concatenate(features)[:max_examples].astype(np.float32)
    return x, np.concatenate(labels)[:max_examples].astype(np.int32)


def from_all_processes(arrays: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """Every process's rows of `arrays`, in process order (lengths may differ)."""
    if jax.process_count() == 1:
        return arrays
    from jax.experimental import multihost_utils  # noqa: PLC0415

    counts = multihost_utils.process_allgather(np.int32(len(arrays[0])))
    longest = int(counts.max())
    # process_allgather takes the same shape everywhere: pad, gather, trim.
    padded = [
        np.concatenate([x, np.zeros((longest - len(x), *x.shape[1:]), x.dtype)])
        for x in arrays
    ]
    gathered = multihost_utils.process_allgather(padded)
    return tuple(
        np.concatenate([x[p, :n] for p, n in enumerate(counts)]) for x in gathered
    )


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
    feats["train"] = tuple(x[:max_train_examples] for x in feats["train"])
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


def run_probe(config, embed, num_classes: int, max_train_examples=None):
    """`linear_probe` of `embed`'s features of the config's dataset."""
    feats = probe_features(config, embed, max_train_examples)
    return linear_probe(feats["train"], feats["val"], feats["test"], num_classes)
