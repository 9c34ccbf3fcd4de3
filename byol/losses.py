"""Losses: BYOL's normalised regression and SimCLR's NT-Xent.

Both losses compare l2-normalised vectors. The normalisation follows the
reference code, ``x * rsqrt(max(sum(x^2), eps))``, so an all-zero vector maps to
zero (finite loss, finite gradient) instead of NaN.
"""

import math

import jax
import jax.numpy as jnp

# SimCLR masks self-similarity by subtracting a large number from the logit
# instead of slicing it out, which keeps every shape static.
_LARGE_NUM = 1e9


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """Scales ``x`` to unit l2 norm along ``axis``, as the reference code does.

    Args:
        x: Array to normalise.
        axis: Axis along which the norm is taken.
        eps: Lower bound on the squared norm; vectors with a smaller squared norm
            are divided by ``sqrt(eps)`` instead, so zero maps to zero.

    Returns:
        ``x * rsqrt(max(sum(x**2, axis), eps))``, same shape as ``x``.

    Example:
        >>> l2_normalize(jnp.array([3.0, 4.0]))  # [0.6, 0.8]
    """
    square_sum = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(square_sum, eps))


def regression_loss(x: jax.Array, y: jax.Array) -> jax.Array:
    """BYOL's per-example regression loss ``2 - 2 cos(x, y)``.

    Computed as ``||normalize(x) - normalize(y)||^2`` (the reference form), which
    equals ``2 - 2 cos(x, y)`` for non-zero vectors.

    Args:
        x: Array ``[..., D]``, e.g. online predictions ``[B, D]``.
        y: Array with the same shape as ``x``, e.g. target projections.

    Returns:
        Array ``[...]`` (``[B]`` for ``[B, D]`` inputs) with values in ``[0, 4]``.

    Example:
        >>> regression_loss(jnp.ones((8, 256)), -jnp.ones((8, 256)))  # all 4.0
    """
    return jnp.sum(jnp.square(l2_normalize(x) - l2_normalize(y)), axis=-1)


def byol_loss(
    online_pred_view1: jax.Array,
    online_pred_view2: jax.Array,
    target_proj_view1: jax.Array,
    target_proj_view2: jax.Array,
) -> jax.Array:
    """The symmetrised BYOL loss, with the stop-gradient on the target inside.

    Each online prediction regresses the target projection of the *other* view;
    the two directions are summed per example and averaged over the batch, as
    the reference code reports it (so the value lies in ``[0, 8]``).

    Args:
        online_pred_view1: Online predictor output for view 1, ``[B, D]``.
        online_pred_view2: Online predictor output for view 2, ``[B, D]``.
        target_proj_view1: Target projector output for view 1, ``[B, D]``.
        target_proj_view2: Target projector output for view 2, ``[B, D]``.

    Returns:
        Scalar ``mean_b [reg(p1, sg(z2)) + reg(p2, sg(z1))]``; no gradient flows
        into the target arguments.

    Example:
        >>> loss = byol_loss(pred_view1, pred_view2, target_view1, target_view2)
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
    """SimCLR's NT-Xent contrastive loss, built as the SimCLR reference code does.

    For each example ``i`` of view 1, the positive is ``z2[i]`` and the negatives
    are every other view-1 and view-2 vector of the (global) batch; symmetrically
    for view 2. Logits are cosine similarities divided by ``temperature``;
    self-similarity is removed by subtracting a large number (1e9).

    With ``axis_name`` (inside ``pmap``/``shard_map``) the negatives are gathered
    from all devices with ``jax.lax.all_gather`` and this device's positives sit at
    offset ``jax.lax.axis_index(axis_name) * B`` in the gathered batch. Gradients
    flow through the gather: ``jax.grad`` of this device's loss then holds the
    gradient of the *sum* of all devices' losses w.r.t. the local inputs, so a
    ``pmean`` of parameter gradients over devices gives the gradient of the loss
    on the global batch.

    Args:
        z1: Projections of view 1, ``[B, D]`` (local batch).
        z2: Projections of view 2, ``[B, D]``.
        temperature: Softmax temperature (> 0), e.g. 0.1.
        axis_name: Name of the mapped device axis, or None for a single device.

    Returns:
        Scalar: mean over the local batch of ``loss_a + loss_b``, the two
        directions' cross-entropies summed per example (SimCLR's
        ``reduce_mean(loss_a + loss_b)``; twice the "mean over 2N views" form).

    Example:
        >>> loss = nt_xent_loss(proj_view1, proj_view2, temperature=0.1)

    Raises:
        ValueError: a Python-number ``temperature`` that is not finite and > 0
            (a traced one is not checked).
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
