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
