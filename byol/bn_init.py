"""BN-statistics initialisation: a BN network turned into a BN-free one.

Richemond et al. (2020) reach 65.7% without batch statistics this way: run
the network with BatchNorm once, in training mode, on a batch of augmented
images; then replace every BN by a trainable per-channel affine map that does
what BN did on that batch::

    scale'  = gamma / sqrt(var + eps)
    offset' = beta - gamma * mean / sqrt(var + eps)

The ``affine`` network has the BN network's module names and parameter
shapes, so the converted params drop into it.
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
    """Mean and variance exactly as `hk.BatchNorm` computes them in training."""
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
    """Whether a call ``BatchNorm(inputs, is_training, test_local_stats)`` is local."""
    is_training = kwargs.get("is_training", args[1] if len(args) > 1 else None)
    local = kwargs.get("test_local_stats", args[2] if len(args) > 2 else False)
    return bool(is_training) or bool(local)


def bn_statistics_init(
    apply_fn: Callable[..., Any], params: hk.Params, state: hk.State, *args, **kwargs
) -> hk.Params:
    """A BN network's params turned into its ``affine`` twin's (`to_affine`).

    Runs ``apply_fn(params, state, *args, **kwargs)`` once, records each
    `hk.BatchNorm` layer's batch mean and variance (E[x²] − E[x]², over all
    axes but the channel, cross-replica averaged if the layer is) and folds
    them into its scale and offset; other parameters are unchanged.
    ``apply_fn`` must run in training mode, call each BN once, and not be
    jitted on its own (the layers are observed while it runs); jit or pmap the
    whole of this function instead.

    Raises:
        ValueError: no BatchNorm ran, one ran in inference mode or twice, or one
            has no scale/offset in ``params``.
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
    """The norms with every ``bn`` component replaced by ``affine``.

    >>> from byol.networks import norm_preset
    >>> to_affine(norm_preset("bn")).encoder.kind
    'affine'
    """
    return NetworkNorms(
        *(dataclasses.replace(c, kind="affine") if c.kind == "bn" else c for c in norms)
    )
