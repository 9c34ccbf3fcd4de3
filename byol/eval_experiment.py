"""Linear evaluation of a frozen encoder.

Two protocols:

* `linear_probe`: the fast probe for small datasets. Features are extracted
  once with the frozen encoder (inference mode, no augmentation), standardised,
  and a multinomial logistic regression is fitted on them by L-BFGS, its L2
  penalty chosen on the held-out validation part of the train split. Used by
  the demo, the experiments and the periodic probe during pre-training.
* `LinearEvalExperiment` (see `byol.linear_eval`): the reference protocol
  (random crop + flip, SGD Nesterov, cosine schedule, lr swept on validation).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

# L2 penalties tried on the validation part; the best one is reported.
DEFAULT_L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2)


class ProbeResult(NamedTuple):
    """Accuracy of a linear classifier on frozen features (fractions, not %)."""

    top1: float
    top5: float
    val_top1: float
    l2: float


def extract_features(
    embed: Callable[[np.ndarray], jax.Array],
    batches: Iterable[dict[str, np.ndarray]],
    max_examples: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Runs `embed` over evaluation batches and gathers the valid examples.

    Args:
        embed: maps uint8 images [N, H, W, C] to features [N, D].
        batches: evaluation batches with `images` [..., H, W, C], `labels` and
            optionally a boolean `mask` (padding of the last batch).
        max_examples: stop after this many examples (None: the whole pass).

    Returns:
        Features [N, D] (float32) and labels [N] (int32) as numpy arrays.
    """
    features, labels, count = [], [], 0
    for batch in batches:
        images = batch["images"]
        images = images.reshape((-1,) + images.shape[-3:])
        mask = batch.get("mask")
        mask = np.ones(len(images), bool) if mask is None else mask.reshape(-1)
        feats = np.asarray(embed(images))[mask]
        features.append(feats)
        labels.append(np.asarray(batch["labels"]).reshape(-1)[mask])
        count += len(feats)
        if max_examples is not None and count >= max_examples:
            break
    x = np.concatenate(features)[:max_examples].astype(np.float32)
    y = np.concatenate(labels)[:max_examples].astype(np.int32)
    return x, y


def _standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean = train.mean(axis=0)
    std = train.std(axis=0) + 1e-6
    return [(x - mean) / std for x in (train, *others)]


@functools.partial(jax.jit, static_argnames=("num_classes", "iterations"))
def _fit_logistic_regression(x, y, l2, *, num_classes, iterations):
    """Multinomial logistic regression with an L2 penalty, by L-BFGS."""
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
    logits = np.asarray(x @ np.asarray(params[0]) + np.asarray(params[1]))
    k = min(k, logits.shape[1])
    top_k = np.argsort(-logits, axis=1)[:, :k]
    return float(np.mean(np.any(top_k == y[:, None], axis=1)))


def linear_probe(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    iterations: int = 150,
) -> ProbeResult:
    """Fits a linear classifier on frozen features; reports test accuracy.

    The L2 penalty is chosen by top-1 on `val`; the classifier is trained on
    `train` only, so the test split is never used for any choice.

    Args:
        train: features [N, D] and labels [N] to fit on.
        val: held-out features and labels for choosing the L2 penalty.
        test: features and labels to report on.
        num_classes: number of classes.
        l2_grid: L2 penalties to try.
        iterations: L-BFGS iterations per fit.

    Returns:
        Test top-1/top-5, validation top-1 and the chosen L2 penalty.

    Example:
        >>> result = linear_probe((x, y), (xv, yv), (xt, yt), 10)  # doctest: +SKIP
        >>> print(f"{100 * result.top1:.1f}%")  # doctest: +SKIP
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
