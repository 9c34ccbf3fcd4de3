"""What a step or a probe reports: accuracies and the collapse indicator."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from byol import losses


def top_k_hits(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """Whether each label is among its row's `k` largest logits (k capped at C).

    Args:
        logits: [..., N, C].
        labels: [N] int; -1 (unlabelled, padding) is never a hit.

    Returns:
        bool [..., N].
    """
    k = min(k, logits.shape[-1])
    top_k = jax.lax.top_k(logits, k)[1]
    return jnp.any(top_k == labels[:, None], axis=-1) & (labels >= 0)


def classifier_scalars(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    """The online classifier's loss, top-1 and top-5 over the labelled examples."""
    valid = labels >= 0
    count = jnp.maximum(jnp.sum(valid), 1)
    xent = optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.where(valid, labels, 0)
    )
    return dict(
        classifier_loss=jnp.sum(xent * valid) / count,
        top1=jnp.sum(top_k_hits(logits, labels, 1)) / count,
        top5=jnp.sum(top_k_hits(logits, labels, 5)) / count,
    )


def collapse_indicator(projection: jax.Array) -> jax.Array:
    """Mean over dimensions of the batch std of l2-normalised rows, times √d.

    About 1 for outputs spread over the sphere, 0 when every row points the
    same way.
    """
    z = losses.l2_normalize(projection)
    return jnp.mean(jnp.std(z, axis=0)) * jnp.sqrt(z.shape[-1])


def knn_classify(
    bank: jax.Array,
    bank_labels: jax.Array,
    queries: jax.Array,
    k: int,
    num_classes: int,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> jax.Array:
    """Weighted kNN labels of `queries` (InstDisc, as solo-learn and lightly vote).

    Cosine similarity to every bank row; the `k` most similar vote for their
    labels with weight ``exp(similarity / temperature)``; the heaviest class
    wins. Queries go `chunk` at a time (a [chunk, N] similarity matrix).

    Args:
        bank: features [N, D]; bank_labels: [N] in [0, num_classes).
        queries: features [M, D].

    Returns:
        int32 [M] predicted labels.
    """
    bank = losses.l2_normalize(jnp.asarray(bank, jnp.float32))
    bank_labels = jnp.asarray(bank_labels)
    k = min(k, bank.shape[0])

    @jax.jit
    def classify(q):
        similarity = losses.l2_normalize(q) @ bank.T
        top, index = jax.lax.top_k(similarity, k)
        votes = jax.nn.one_hot(bank_labels[index], num_classes)
        weights = jnp.exp(top / temperature)[..., None]
        return jnp.argmax(jnp.sum(votes * weights, axis=1), axis=-1)

    queries = jnp.asarray(queries, jnp.float32)
    return jnp.concatenate(
        [classify(queries[i : i + chunk]) for i in range(0, len(queries), chunk)]
    ).astype(jnp.int32)


def effective_rank(features: jax.Array, eps: float = 1e-7) -> jax.Array:
    """RankMe (Garrido et al., 2023): exp of the entropy of normalised singular values.

    ``p = σ / ||σ||_1 + eps``; ``exp(-Σ p log p)`` is between 1 (every row on
    one line: collapse) and min(N, D) (all directions used equally).

    >>> round(float(effective_rank(jnp.eye(4))), 3)
    4.0
    """
    singular = jnp.linalg.svd(jnp.asarray(features, jnp.float32), compute_uv=False)
    p = singular / jnp.sum(singular) + eps
    return jnp.exp(-jnp.sum(p * jnp.log(p)))
