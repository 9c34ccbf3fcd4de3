"""Normalisation layers chosen by name, and weight-standardised layers.

One `NormConfig` per network component picks the normalisation after each
convolution / hidden linear layer:

- ``bn``: `hk.BatchNorm` (batch statistics, optionally cross-replica);
- ``gn``: `hk.GroupNorm` with ``num_groups`` groups;
- ``ln``: GroupNorm with one group, i.e. each example normalised over all its
  non-batch axes ((H, W, C) for feature maps), per-channel scale and offset;
- ``none``: identity, no module and no parameter;
- ``affine``: `Affine`, a per-channel scale and offset with no statistics, with
  `hk.BatchNorm`'s parameter shapes (see `byol.bn_init`).

Whatever the kind, the module filling a slot takes the slot's name (e.g.
``batchnorm_0``), so switching kinds keeps the parameter tree. Weight
standardisation (Qiao et al. 2019) is ``NormConfig.ws``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

NORM_NAMES = ("bn", "gn", "ln", "none", "affine")

NormFn = Callable[[jax.Array, bool], jax.Array]


@dataclasses.dataclass(frozen=True)
class NormConfig:
    """How one network component is normalised.

    Attributes:
      kind: one of `NORM_NAMES`.
      num_groups: groups of ``gn``; must divide every normalised width.
      ws: weight-standardise this component's convs and linear layers.
      ws_eps: floor of the standardisation (`standardize_weight`).
      bn_decay: decay of BatchNorm's moving averages.
      eps: added to the variance by ``bn``, ``gn`` and ``ln``.
      cross_replica_axis: axis name over which ``bn`` averages its statistics;
        the other kinds ignore it.

    >>> NormConfig(kind="gn", num_groups=16, ws=True).ws_eps
    0.0001
    """

    kind: str = "bn"
    num_groups: int = 16
    ws: bool = False
    ws_eps: float = 1e-4
    bn_decay: float = 0.9
    eps: float = 1e-5
    cross_replica_axis: str | None = None

    def __post_init__(self):
        # The values below would build a network that silently computes
        # something else (no layer, frozen moving averages, unsynced BN).
        if self.kind not in NORM_NAMES:
            raise ValueError(
                f"kind {self.kind!r} unknown; expected one of: {', '.join(NORM_NAMES)}"
            )
        if not 0.0 <= self.bn_decay < 1.0:
            raise ValueError(
                f"bn_decay {self.bn_decay!r} invalid; expected 0 <= bn_decay < 1"
            )
        if self.cross_replica_axis == "":
            raise ValueError("cross_replica_axis '' invalid; expected None or a name")


def standardize_weight(w: jax.Array, eps: float) -> jax.Array:
    """Zero mean, unit variance per output channel (the last axis).

    With mean and population variance over the fan-in (all other axes)::

        w_hat = (w - mean) * sqrt(fan_in) * rsqrt(max(fan_in * var, eps))

    i.e. NFNets' floor ``max(fan_in * var, eps)`` rescaled to unit variance; it
    only acts on near-constant kernels. (Qiao et al.'s code divides by
    ``std + 1e-5`` instead.) Computed in at least float32; gradients flow to
    the raw ``w``.

    >>> w = jax.random.normal(jax.random.key(0), (3, 3, 8, 16))
    >>> w_hat = standardize_weight(w, eps=1e-4).reshape(-1, 16)
    >>> bool(jnp.allclose(w_hat.var(axis=0), 1.0, atol=1e-4))
    True
    """
    if w.ndim < 2:
        raise ValueError(f"w rank {w.ndim} invalid; expected >= 2 (fan-in..., out)")
    axes = tuple(range(w.ndim - 1))
    fan_in = int(np.prod(w.shape[:-1]))
    w32 = w.astype(jnp.promote_types(w.dtype, jnp.float32))
    centred = w32 - jnp.mean(w32, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(centred), axis=axes, keepdims=True)
    scale = jax.lax.rsqrt(jnp.maximum(var * fan_in, eps)) * np.sqrt(fan_in)
    return (centred * scale).astype(w.dtype)


class _Standardized:
    """Mixin: the layer's parameter ``w`` is standardised on every call.

    The stored ``w`` is the raw kernel; the layer's parameters and shapes are
    its Haiku base class's.
    """

    def __init__(self, *args, ws_eps: float = 1e-4, **kwargs):
        super().__init__(*args, **kwargs)
        self.ws_eps = ws_eps

    def __call__(self, inputs: jax.Array, **kwargs) -> jax.Array:
        def getter(next_getter, value, context):
            if context.name == "w" and context.module is self:
                value = standardize_weight(value, self.ws_eps)
            return next_getter(value)

        with hk.custom_getter(getter):
            return super().__call__(inputs, **kwargs)


class WSConv2D(_Standardized, hk.Conv2D):
    """`hk.Conv2D` with a weight-standardised kernel (same parameters)."""


class WSLinear(_Standardized, hk.Linear):
    """`hk.Linear` with a weight matrix standardised per output unit."""


class Affine(hk.Module):
    """``x * scale + offset``, per channel, with no statistics.

    ``scale`` (init 1) and ``offset`` (init 0) have the shape (1, ..., 1, C)
    that `hk.BatchNorm` gives them, so ``bn`` and ``affine`` trees match.
    """

    def __call__(self, x: jax.Array, is_training: bool = True) -> jax.Array:
        del is_training
        shape = (1,) * (x.ndim - 1) + (x.shape[-1],)
        scale = hk.get_parameter("scale", shape, x.dtype, init=jnp.ones)
        offset = hk.get_parameter("offset", shape, x.dtype, init=jnp.zeros)
        return x * scale + offset


def make_norm(config: NormConfig, name: str) -> NormFn:
    """The normalisation `config` asks for, as module `name` (inside a transform).

    Returns ``norm(x, is_training)`` for channels-last ``x``; the output has
    ``x``'s dtype, but statistics and the affine map are computed in float32
    (bfloat16 sums over a feature map lose too much precision).

    >>> def f(x):
    ...     return make_norm(NormConfig("gn", num_groups=4), "batchnorm_0")(x, True)
    >>> sorted(hk.transform(f).init(None, jnp.ones((2, 4, 4, 8)))["batchnorm_0"])
    ['offset', 'scale']
    """
    if config.kind == "none":
        return lambda x, is_training: x
    if config.kind == "bn":
        bn = hk.BatchNorm(
            create_scale=True,
            create_offset=True,
            decay_rate=config.bn_decay,
            eps=config.eps,
            cross_replica_axis=config.cross_replica_axis,
            name=name,
        )

        def norm(x, is_training):
            return bn(x, is_training=is_training)
    elif config.kind == "gn":
        gn = hk.GroupNorm(groups=config.num_groups, eps=config.eps, name=name)

        def norm(x, is_training):
            return gn(x)
    elif config.kind == "ln":
        ln = hk.LayerNorm(
            axis=slice(1, None),
            create_scale=True,
            create_offset=True,
            eps=config.eps,
            param_axis=-1,
            name=name,
        )

        def norm(x, is_training):
            return ln(x)
    else:
        norm = Affine(name=name)

    def in_float32(x: jax.Array, is_training: bool) -> jax.Array:
        return norm(x.astype(jnp.float32), is_training).astype(x.dtype)

    return in_float32
