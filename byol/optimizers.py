"""LARS as the BYOL reference code applies it, and its bias/norm exclusion mask."""

import math
import numbers
from collections.abc import Callable
from typing import Any

import jax
import optax

# Haiku names every bias `b` (Linear, Conv) and the per-channel parameters of
# every normalisation (BatchNorm, GroupNorm, LayerNorm, our Affine) `scale` and
# `offset`; weights are `w`. Matching the leaf name is independent of module
# names, which change with nesting and with the norm chosen by configuration.
EXCLUDED_PARAM_NAMES = frozenset({"b", "scale", "offset"})

Mask = optax.Params | Callable[[optax.Params], optax.Params] | None


def _leaf_name(path: tuple[Any, ...]) -> str:
    """The name of the last key of a pytree path (dict key, attribute or index)."""
    if not path:
        return ""
    key = path[-1]
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def exclude_bias_and_norm(params: optax.Params) -> optax.Params:
    """Mask that excludes biases and normalisation parameters from LARS' extras.

    The rule is by leaf name: a parameter named ``b``, ``scale`` or ``offset``
    (see ``EXCLUDED_PARAM_NAMES``) maps to False, every other one (``w`` of
    convolutions and linear layers, ...) to True. This covers Haiku's Linear/Conv
    biases and BatchNorm/GroupNorm/LayerNorm/Affine scale and offset wherever they
    sit, so switching the normaliser by configuration needs no new rule.

    Args:
        params: A parameter pytree, typically a Haiku mapping
            ``{module_name: {param_name: array}}``.

    Returns:
        A pytree of Python bools with the structure of ``params``: True where
        weight decay and the trust ratio apply.

    Example:
        >>> exclude_bias_and_norm({"linear": {"w": w, "b": b}})
        {'linear': {'b': False, 'w': True}}
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, _: _leaf_name(path) not in EXCLUDED_PARAM_NAMES, params
    )


def _check_number(name: str, value, low: float, high: float = math.inf) -> None:
    """Raises if ``value`` is not a finite real number in ``[low, high]``."""
    if (
        not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise ValueError(
            f"{name} {value!r} invalid; expected a finite number in [{low}, {high}]"
        )


def lars(
    learning_rate: float | optax.Schedule,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    trust_coefficient: float = 1e-3,
    weight_decay_mask: Mask = exclude_bias_and_norm,
    trust_ratio_mask: Mask = exclude_bias_and_norm,
) -> optax.GradientTransformation:
    """LARS in the order of the BYOL reference code, from optax transforms.

    Per parameter tensor ``p`` with gradient ``g`` and momentum buffer ``μ``:

    1. ``g += weight_decay * p`` where ``weight_decay_mask`` is True;
    2. ``g *= trust_coefficient * ||p|| / ||g||`` where ``trust_ratio_mask`` is
       True and both norms are > 0 (``g`` unchanged otherwise);
    3. ``μ = momentum * μ + g``;
    4. ``update = -learning_rate(k) * μ``, ``k`` counting calls to ``update``
       from 0.

    Difference from ``optax.lars``: optax scales by the learning rate *before*
    the momentum trace (``μ = momentum * μ + lr_k * g``, ``update = -μ``), so
    its buffer mixes gradients scaled by past learning rates. The reference
    keeps the buffer free of the learning rate and scales it by the *current*
    one (``update = -lr_k * μ``). The two agree for a constant learning rate
    and differ whenever it changes between steps, i.e. throughout BYOL's
    warm-up and cosine decay; this one reproduces the reference.

    Args:
        learning_rate: A float or an ``optax.Schedule`` of the step count.
        weight_decay: L2 coefficient added to the gradient (step 1), >= 0.
        momentum: Momentum decay (heavy ball, not Nesterov), in [0, 1].
        trust_coefficient: η of the trust ratio, 1e-3 in the reference.
        weight_decay_mask: Pytree of bools or function of params returning one
            (True = decayed); None decays every parameter.
        trust_ratio_mask: Same for the trust-ratio scaling.

    Returns:
        An ``optax.GradientTransformation``; its ``update`` needs ``params``.

    Raises:
        ValueError: If a numeric argument is out of range; the message names it.

    Example:
        >>> optimizer = lars(learning_rate_schedule(0.2, 4096, 312_800, 3_128),
        ...                  weight_decay=1.5e-6)
        >>> opt_state = optimizer.init(params)
        >>> updates, opt_state = optimizer.update(grads, opt_state, params)
        >>> params = optax.apply_updates(params, updates)
    """
    if not callable(learning_rate):
        _check_number("learning_rate", learning_rate, 0.0)
    _check_number("weight_decay", weight_decay, 0.0)
    _check_number("momentum", momentum, 0.0, 1.0)
    _check_number("trust_coefficient", trust_coefficient, 0.0)

    def maybe_masked(
        transform: optax.GradientTransformation, mask: Mask
    ) -> optax.GradientTransformation:
        return transform if mask is None else optax.masked(transform, mask)

    return optax.chain(
        maybe_masked(optax.add_decayed_weights(weight_decay), weight_decay_mask),
        # optax's trust ratio is 1 when either norm is 0, as in the reference.
        maybe_masked(
            optax.scale_by_trust_ratio(trust_coefficient=trust_coefficient),
            trust_ratio_mask,
        ),
        optax.trace(decay=momentum, nesterov=False),
        optax.scale_by_learning_rate(learning_rate),
    )
