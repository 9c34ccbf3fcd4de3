"""BN-statistics initialisation: turn a BN network into a BN-free one.

Richemond et al. (2020) reach 65.7% without any batch statistics by this
protocol: run the network *with* BatchNorm once, in training mode, on a batch
of augmented images; record each BN layer's per-channel batch mean and
variance; then replace every BN by a trainable per-channel affine map that
reproduces what BN did on that batch::

    scale'  = gamma / sqrt(var + eps)
    offset' = beta - gamma * mean / sqrt(var + eps)

The affine network (``affine`` norms, see `byol.normalization.Affine`) has the
same module names and parameter shapes as the BN network, so the converted
params drop straight into it; afterwards no batch statistic is used or
back-propagated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp

from byol.networks import NetworkNorms


def _batch_statistics(module: hk.BatchNorm, inputs: jax.Array):
    """Mean and variance exactly as hk.BatchNorm computes them in training."""
    channel_index = module.channel_index
    if channel_index < 0:
        channel_index += inputs.ndim
    if module.axis is not None:
        axis = tuple(module.axis)
    else:
        axis = tuple(i for i in range(inputs.ndim) if i != channel_index)
    mean = jnp.mean(inputs, axis, keepdims=True)
    mean_of_squares = jnp.mean(jnp.square(inputs), axis, keepdims=True)
    if module.cross_replica_axis:
        mean = jax.lax.pmean(
            mean,
            axis_name=module.cross_replica_axis,
            axis_index_groups=module.cross_replica_axis_index_groups,
        )
        mean_of_squares = jax.lax.pmean(
            mean_of_squares,
            axis_name=module.cross_replica_axis,
            axis_index_groups=module.cross_replica_axis_index_groups,
        )
    return mean, mean_of_squares - jnp.square(mean)


def _is_training(args: tuple, kwargs: dict) -> bool:
    """Whether a call BatchNorm(inputs, is_training, test_local_stats) is local."""
    is_training = kwargs.get("is_training", args[1] if len(args) > 1 else None)
    local = kwargs.get("test_local_stats", args[2] if len(args) > 2 else False)
    return bool(is_training) or bool(local)


def bn_statistics_init(
    apply_fn: Callable[..., Any], params: hk.Params, state: hk.State, *args, **kwargs
) -> hk.Params:
    """Converts a BN network's params into its ``affine`` twin's params.

    Runs ``apply_fn(params, state, *args, **kwargs)`` once, records the batch
    mean and variance every `hk.BatchNorm` layer computes (mean and mean of
    squares over all axes but the channel axis, var = E[x^2] - E[x]^2,
    cross-replica averaged if the layer is), and folds them into its scale and
    offset. Other parameters are returned unchanged.

    ``apply_fn`` must run the forward pass in training mode (batch
    statistics), call each BN layer once, and not be jitted by itself (the
    layers are observed while it runs); jit or pmap the whole of
    ``bn_statistics_init`` instead if wanted (e.g. inside pmap with the BN's
    ``cross_replica_axis`` bound).

    Args:
      apply_fn: ``.apply`` of an `hk.transform_with_state` network with ``bn``
        norms.
      params: Its parameters.
      state: Its state (moving averages; not used for the result).
      *args: Further positional arguments of ``apply_fn`` (e.g. rng, images).
      **kwargs: Keyword arguments of ``apply_fn`` (e.g. ``is_training=True``).

    Returns:
      Params of the same structure, shapes and dtypes where each BN's
      ``scale`` and ``offset`` are replaced by the equivalent affine values;
      they are the params of the same network built with `to_affine` norms.

    Raises:
      ValueError: If no BatchNorm layer ran, one ran in inference mode, one
        ran twice, or one has no scale/offset in ``params``.

    Example:
      >>> net = hk.transform_with_state(forward)  # doctest: +SKIP
      >>> params, state = net.init(rng, images, is_training=True)  # doctest: +SKIP
      >>> affine_params = bn_statistics_init(  # doctest: +SKIP
      ...     net.apply, params, state, rng, images, is_training=True)
      >>> # hk.transform_with_state(forward built with to_affine(norms))
      >>> # .apply(affine_params, ...) now reproduces the BN forward on images.
    """
    stats: dict[str, tuple[jax.Array, jax.Array, float]] = {}

    def interceptor(next_f, call_args, call_kwargs, context):
        module = context.module
        if not isinstance(module, hk.BatchNorm) or context.method_name != "__call__":
            return next_f(*call_args, **call_kwargs)
        name = module.module_name
        if not _is_training(call_args, call_kwargs):
            raise ValueError(
                f"is_training False for {name}; bn_statistics_init needs a "
                "training-mode forward (is_training=True)"
            )
        if name in stats:
            raise ValueError(
                f"{name} called twice; bn_statistics_init needs a forward that "
                "calls each BatchNorm once (e.g. one view)"
            )
        inputs = call_args[0] if call_args else call_kwargs["inputs"]
        mean, var = _batch_statistics(module, inputs)
        stats[name] = (mean, var, module.eps)
        return next_f(*call_args, **call_kwargs)

    with hk.intercept_methods(interceptor):
        apply_fn(params, state, *args, **kwargs)

    if not stats:
        raise ValueError(
            "apply_fn called no hk.BatchNorm; expected a network with bn norms "
            "and an apply_fn that is not jitted on its own"
        )
    new_params = {name: dict(values) for name, values in params.items()}
    for name, (mean, var, eps) in stats.items():
        layer = new_params.get(name, {})
        if "scale" not in layer or "offset" not in layer:
            raise ValueError(
                f"params[{name!r}] has no scale/offset; expected BatchNorm "
                "layers created with create_scale=True, create_offset=True"
            )
        gamma, beta = layer["scale"], layer["offset"]
        inv = gamma * jax.lax.rsqrt(var + jnp.asarray(eps, var.dtype))
        layer["scale"] = jnp.reshape(inv, gamma.shape).astype(gamma.dtype)
        layer["offset"] = jnp.reshape(beta - mean * inv, beta.shape).astype(beta.dtype)
    return new_params


def to_affine(norms: NetworkNorms) -> NetworkNorms:
    """Replaces every ``bn`` component by ``affine`` (others unchanged).

    Args:
      norms: Per-component norms.

    Returns:
      The norms of the BN-free twin network whose params `bn_statistics_init`
      returns.

    Example:
      >>> from byol.networks import norm_preset
      >>> to_affine(norm_preset("bn")).encoder.kind
      'affine'
    """
    return NetworkNorms(
        *(dataclasses.replace(c, kind="affine") if c.kind == "bn" else c for c in norms)
    )
