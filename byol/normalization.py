"""Normalisation layers chosen by name, and weight-standardised layers.

One `NormConfig` per network component (encoder, projector, predictor) picks
the normalisation that follows each convolution / hidden linear layer:

- ``bn``: `hk.BatchNorm` (batch statistics, optionally cross-replica).
- ``gn``: `hk.GroupNorm` with ``num_groups`` groups.
- ``ln``: layer norm, defined as GroupNorm with ONE group: each example is
  normalised over all its non-batch axes, i.e. over (H, W, C) for conv feature
  maps [B, H, W, C] and over C for MLP activations [B, C] (the GroupNorm
  paper's definition of LN for ConvNets). Scale and offset are per channel.
  The per-pixel variant (normalising over C only) is not provided.
- ``none``: identity, creates no module and no parameter.
- ``affine``: `Affine`, a trainable per-channel scale and offset with no
  statistics at all; its parameters have the shapes `hk.BatchNorm` gives, so
  a ``bn`` network's params can be turned into an ``affine`` network's params
  (see `byol.bn_init`).

Whatever the kind, the module that fills a slot is created with the slot's
name (e.g. ``batchnorm_0``), so switching kinds keeps the parameter tree's
module names.

Weight standardisation (WS, Qiao et al. 2019) is selected with
``NormConfig.ws`` and applied by `WSConv2D` / `WSLinear` through
`standardize_weight`.
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
      kind: One of `NORM_NAMES`.
      num_groups: Number of groups for ``gn``; must divide every normalised
        layer's channel count (checked when the layer is called).
      ws: Whether this component's convolutions / linear layers use weight
        standardisation (`WSConv2D` / `WSLinear`).
      ws_eps: Floor of the standardisation, see `standardize_weight`. The
        default 1e-4 is NFNets' value; it only acts on degenerate kernels.
      bn_decay: Decay of BatchNorm's moving averages.
      eps: Epsilon added to the variance by ``bn``, ``gn`` and ``ln``.
      cross_replica_axis: pmap/vmap axis name over which ``bn`` averages its
        batch statistics; ignored by the other kinds, so one setting can be
        applied to every component.

    Example:
      >>> config = NormConfig(kind="gn", num_groups=16, ws=True)
      >>> config.kind, config.ws_eps
      ('gn', 0.0001)
    """

    kind: str = "bn"
    num_groups: int = 16
    ws: bool = False
    ws_eps: float = 1e-4
    bn_decay: float = 0.9
    eps: float = 1e-5
    cross_replica_axis: str | None = None

    def __post_init__(self):
        if self.kind not in NORM_NAMES:
            raise ValueError(
                f"kind {self.kind!r} unknown; expected one of: {', '.join(NORM_NAMES)}"
            )
        if (
            isinstance(self.num_groups, bool)
            or not isinstance(self.num_groups, int | np.integer)
            or self.num_groups < 1
        ):
            raise ValueError(
                f"num_groups {self.num_groups!r} invalid; expected an integer >= 1"
            )
        if not isinstance(self.ws, bool | np.bool_):
            raise ValueError(f"ws {self.ws!r} invalid; expected True or False")
        if not self.ws_eps > 0:
            raise ValueError(f"ws_eps {self.ws_eps!r} invalid; expected > 0")
        if not 0.0 <= self.bn_decay < 1.0:
            raise ValueError(
                f"bn_decay {self.bn_decay!r} invalid; expected 0 <= bn_decay < 1"
            )
        if not self.eps > 0:
            raise ValueError(f"eps {self.eps!r} invalid; expected > 0")
        if self.cross_replica_axis is not None and (
            not isinstance(self.cross_replica_axis, str) or not self.cross_replica_axis
        ):
            raise ValueError(
                f"cross_replica_axis {self.cross_replica_axis!r} invalid; "
                "expected None or an axis name"
            )


def standardize_weight(w: jax.Array, eps: float) -> jax.Array:
    """Weight standardisation: zero mean, unit variance per output channel.

    The last axis indexes output channels; all other axes form the fan-in
    (kh * kw * c_in for a conv kernel, c_in for a linear layer). With
    ``mean`` and (biased) ``var`` taken over the fan-in::

        w_hat = (w - mean) / sqrt(max(var, eps / fan_in))
              = (w - mean) * sqrt(fan_in) * rsqrt(max(fan_in * var, eps))

    The second form is NFNets' floor ``max(fan_in * var, eps)`` (they use
    eps = 1e-4) rescaled to unit variance. The floor never acts on a trained or
    freshly initialised kernel (``fan_in * var`` is ~1 under Haiku's default
    initialiser), so the output has unit variance exactly; it only prevents a
    division by zero for a constant kernel. For comparison, Qiao et al.'s
    reference code divides by ``std + 1e-5`` (unbiased std), which shrinks the
    variance slightly. Gradients flow to the raw ``w``.

    Args:
      w: Kernel of shape [..., C_out], rank >= 2.
      eps: Floor of ``fan_in * var`` (> 0).

    Returns:
      The standardised kernel, same shape and dtype as ``w`` (computed in at
      least float32: a bfloat16 kernel's statistics would round badly).

    Raises:
      ValueError: If ``w`` has rank < 2.

    Example:
      >>> w = jax.random.normal(jax.random.key(0), (3, 3, 8, 16))
      >>> w_hat = standardize_weight(w, eps=1e-4)
      >>> bool(jnp.allclose(w_hat.reshape(-1, 16).var(axis=0), 1.0, atol=1e-4))
      True
    """
    if w.ndim < 2:
        raise ValueError(f"w rank {w.ndim} invalid; expected >= 2 (fan-in..., out)")
    axes = tuple(range(w.ndim - 1))
    fan_in = int(np.prod(w.shape[:-1]))
    w32 = w.astype(jnp.promote_types(w.dtype, jnp.float32))
    mean = jnp.mean(w32, axis=axes, keepdims=True)
    centred = w32 - mean
    var = jnp.mean(jnp.square(centred), axis=axes, keepdims=True)
    scale = jax.lax.rsqrt(jnp.maximum(var * fan_in, eps)) * np.sqrt(fan_in)
    return (centred * scale).astype(w.dtype)


def _standardizing_getter(owner: hk.Module, eps: float):
    """A custom getter that standardises ``owner``'s parameter ``w`` only."""

    def getter(next_getter, value, context):
        if context.name == "w" and context.module is owner:
            value = standardize_weight(value, eps)
        return next_getter(value)

    return getter


class WSConv2D(hk.Conv2D):
    """`hk.Conv2D` whose kernel is weight-standardised before use.

    Same parameters (``w``, ``b``) and shapes as `hk.Conv2D`; the stored ``w``
    is the raw kernel, `standardize_weight` is applied on every call.

    Example:
      >>> def f(x):  # inside hk.transform
      ...     return WSConv2D(16, kernel_shape=3, ws_eps=1e-4, name="conv_0")(x)
      >>> params = hk.transform(f).init(jax.random.key(0), jnp.ones((1, 8, 8, 3)))
      >>> params["conv_0"]["w"].shape  # raw kernel, standardised on use
      (3, 3, 3, 16)
    """

    def __init__(self, *args, ws_eps: float = 1e-4, **kwargs):
        """Constructs the layer.

        Args:
          *args: Positional arguments of `hk.Conv2D`.
          ws_eps: The eps of `standardize_weight`.
          **kwargs: Keyword arguments of `hk.Conv2D`.
        """
        super().__init__(*args, **kwargs)
        self.ws_eps = ws_eps

    def __call__(self, inputs: jax.Array, **kwargs) -> jax.Array:
        """Applies the convolution with the standardised kernel."""
        with hk.custom_getter(_standardizing_getter(self, self.ws_eps)):
            return super().__call__(inputs, **kwargs)


class WSLinear(hk.Linear):
    """`hk.Linear` whose weight matrix is standardised per output unit.

    Same parameters (``w``, ``b``) and shapes as `hk.Linear`.

    Example:
      >>> def f(x):  # inside hk.transform
      ...     return WSLinear(256, ws_eps=1e-4, name="linear")(x)
    """

    def __init__(self, *args, ws_eps: float = 1e-4, **kwargs):
        """Constructs the layer.

        Args:
          *args: Positional arguments of `hk.Linear`.
          ws_eps: The eps of `standardize_weight`.
          **kwargs: Keyword arguments of `hk.Linear`.
        """
        super().__init__(*args, **kwargs)
        self.ws_eps = ws_eps

    def __call__(self, inputs: jax.Array, **kwargs) -> jax.Array:
        """Applies the layer with the standardised weight."""
        with hk.custom_getter(_standardizing_getter(self, self.ws_eps)):
            return super().__call__(inputs, **kwargs)


def _bn_param_shape(x: jax.Array) -> tuple[int, ...]:
    """The shape hk.BatchNorm gives scale/offset for channels-last input."""
    return (1,) * (x.ndim - 1) + (x.shape[-1],)


class Affine(hk.Module):
    """Per-channel trainable scale and offset, no statistics.

    ``y = x * scale + offset`` with ``scale`` (init 1) and ``offset`` (init 0)
    of shape (1, ..., 1, C), exactly the shapes `hk.BatchNorm` creates for the
    same channels-last input, so ``bn`` and ``affine`` parameter trees match.
    Each example's output depends on that example only.

    Example:
      >>> y = Affine(name="batchnorm_0")(x, True)  # in hk.transform  # doctest: +SKIP
    """

    def __call__(self, x: jax.Array, is_training: bool = True) -> jax.Array:
        """Applies the affine map.

        Args:
          x: Channels-last input [B, ..., C].
          is_training: Unused; kept so every norm has the same signature.

        Returns:
          ``x * scale + offset``.
        """
        del is_training
        shape = _bn_param_shape(x)
        scale = hk.get_parameter("scale", shape, x.dtype, init=jnp.ones)
        offset = hk.get_parameter("offset", shape, x.dtype, init=jnp.zeros)
        return x * scale + offset


def make_norm(config: NormConfig, name: str) -> NormFn:
    """Builds the normalisation ``config`` asks for, as module ``name``.

    Must be called inside `hk.transform` (it constructs the Haiku module
    immediately, under the current module scope).

    Args:
      config: The component's normalisation.
      name: Module name of the slot, the same for every kind (e.g.
        ``batchnorm_0``) so that parameter trees stay aligned.

    Returns:
      ``norm(x, is_training) -> y`` for channels-last ``x``; ``y`` has the
      dtype of ``x``, but the statistics and the affine transform are computed
      in float32 (bfloat16 sums over a feature map lose too much precision).

    Raises:
      ValueError: (from the returned function) for ``gn`` when ``num_groups``
        does not divide the channel count.

    Example:
      >>> def f(x):
      ...     return make_norm(NormConfig("gn", num_groups=4), "batchnorm_0")(x, True)
      >>> params = hk.transform(f).init(None, jnp.ones((2, 4, 4, 8)))
      >>> sorted(params["batchnorm_0"])
      ['offset', 'scale']
    """
    if config.kind == "none":
        return lambda x, is_training: x
    norm = _build_norm(config, name)

    def in_float32(x: jax.Array, is_training: bool) -> jax.Array:
        return norm(x.astype(jnp.float32), is_training).astype(x.dtype)

    return in_float32


def _build_norm(config: NormConfig, name: str) -> NormFn:
    """The Haiku module of a norm kind other than ``none``, as a `NormFn`."""
    kind = config.kind
    if kind == "bn":
        bn = hk.BatchNorm(
            create_scale=True,
            create_offset=True,
            decay_rate=config.bn_decay,
            eps=config.eps,
            cross_replica_axis=config.cross_replica_axis,
            name=name,
        )
        return lambda x, is_training: bn(x, is_training=is_training)
    if kind == "gn":
        gn = hk.GroupNorm(groups=config.num_groups, eps=config.eps, name=name)

        def group_norm(x: jax.Array, is_training: bool) -> jax.Array:
            del is_training
            channels = x.shape[-1]
            if channels % config.num_groups:
                raise ValueError(
                    f"num_groups {config.num_groups} does not divide the "
                    f"{channels} channels of {gn.module_name}; use a divisor of "
                    f"{channels}"
                )
            return gn(x)

        return group_norm
    if kind == "ln":
        ln = hk.LayerNorm(
            axis=slice(1, None),
            create_scale=True,
            create_offset=True,
            eps=config.eps,
            param_axis=-1,
            name=name,
        )
        return lambda x, is_training: ln(x)
    if kind == "affine":
        affine = Affine(name=name)
        return lambda x, is_training: affine(x, is_training)
    # Unreachable: NormConfig validates kind.
    raise ValueError(f"kind {kind!r} unknown; expected one of: {', '.join(NORM_NAMES)}")
