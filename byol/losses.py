"""Losses: BYOL's normalised regression and SimCLR's NT-Xent.

Both compare l2-normalised vectors, normalised as the reference code does,
so an all-zero vector gives a finite loss and gradient instead of NaN.
"""

import math

import jax
import jax.numpy as jnp

# SimCLR masks self-similarity by subtracting a large number from the logit
# instead of slicing it out, which keeps every shape static.
_LARGE_NUM = 1e9


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """``x * rsqrt(max(sum(x**2), eps))`` along `axis`, as the reference: 0 maps to 0.

    >>> [round(float(v), 6) for v in l2_normalize(jnp.array([3.0, 4.0]))]
    [0.6, 0.8]
    """
    square_sum = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(square_sum, eps))


def regression_loss(x: jax.Array, y: jax.Array) -> jax.Array:
    """BYOL's per-example ``2 - 2 cos(x, y)``, as ``||normalize(x) - normalize(y)||^2``.

    >>> regression_loss(jnp.ones((2, 4)), -jnp.ones((2, 4))).tolist()
    [4.0, 4.0]
    """
    return jnp.sum(jnp.square(l2_normalize(x) - l2_normalize(y)), axis=-1)


def byol_loss(
    online_pred_view1: jax.Array,
    online_pred_view2: jax.Array,
    target_proj_view1: jax.Array,
    target_proj_view2: jax.Array,
) -> jax.Array:
    """The symmetrised BYOL loss, the stop-gradient on the targets inside.

    Each online prediction regresses the target projection of the *other*
    view; the two directions are summed per example and averaged over the
    batch, as the reference reports it (so the value is in [0, 8]).

    Args:
        online_pred_view1: online predictions of view 1, [B, D].
        online_pred_view2: online predictions of view 2, [B, D].
        target_proj_view1: target projections of view 1, [B, D].
        target_proj_view2: target projections of view 2, [B, D].
    """
    target_proj_view1 = jax.lax.stop_gradient(target_proj_view1)
    target_proj_view2 = jax.lax.stop_gradient(target_proj_view2)
    loss = regression_loss(online_pred_view1, target_proj_view2)
    loss += regression_loss(online_pred_view2, target_proj_view1)
    return jnp.mean(loss)


def nt_xent_loss(
    z1: jax.Array,
    z2: jax.Array,
    temperature: float,
    axis_name: str | None = None,
) -> jax.Array:
    """SimCLR's NT-Xent loss, as the SimCLR reference code builds it.

    For example ``i`` of view 1 the positive is ``z2[i]`` and the negatives are
    every other view-1 and view-2 vector of the (global) batch, likewise for
    view 2; logits are cosine similarities over `temperature`, self-similarity
    masked by subtracting 1e9. With `axis_name` (inside pmap) the negatives are
    gathered from every device; gradients flow through the gather, so the
    ``pmean`` of parameter gradients over devices is the gradient of the loss
    on the global batch.

    Returns:
        The mean over the local batch of the two directions' cross-entropies,
        summed per example (SimCLR's ``reduce_mean(loss_a + loss_b)``).

    Raises:
        ValueError: a Python-number temperature that is not finite and > 0
            (a wrong sign would silently maximise the loss).
    """
    if isinstance(temperature, (int, float)) and not 0 < temperature < math.inf:
        raise ValueError(
            f"temperature must be a finite number > 0, got {temperature!r}"
        )
    z1 = l2_normalize(z1)
    z2 = l2_normalize(z2)
    batch_size = z1.shape[0]
    if axis_name is None:
        z1_all, z2_all = z1, z2
        offset = 0
    else:
        z1_all = jax.lax.all_gather(z1, axis_name, tiled=True)
        z2_all = jax.lax.all_gather(z2, axis_name, tiled=True)
        offset = jax.lax.axis_index(axis_name) * batch_size
    global_batch_size = z1_all.shape[0]

    positive_idx = jnp.arange(batch_size) + offset
    # Row i of the [B, global B] logits has its own vector at column offset + i.
    self_mask = jax.nn.one_hot(positive_idx, global_batch_size, dtype=z1.dtype)

    logits_aa = z1 @ z1_all.T / temperature - self_mask * _LARGE_NUM
    logits_bb = z2 @ z2_all.T / temperature - self_mask * _LARGE_NUM
    logits_ab = z1 @ z2_all.T / temperature
    logits_ba = z2 @ z1_all.T / temperature

    def cross_entropy(positive_logits, negative_logits):
        logits = jnp.concatenate([positive_logits, negative_logits], axis=1)
        log_probs = jax.nn.log_softmax(logits, axis=1)
        return -jnp.take_along_axis(log_probs, positive_idx[:, None], axis=1)[:, 0]

    loss_a = cross_entropy(logits_ab, logits_aa)
    loss_b = cross_entropy(logits_ba, logits_bb)
    return jnp.mean(loss_a + loss_b)
