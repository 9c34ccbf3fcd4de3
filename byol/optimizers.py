"""LARS as the BYOL reference code applies it, and its bias/norm exclusion."""

import math
import numbers
from collections.abc import Callable
from typing import Any

import jax
import optax

# Haiku's biases are `b`, every normalisation's parameters `scale`/`offset`.
EXCLUDED_PARAM_NAMES = frozenset({"b", "scale", "offset"})

Mask = optax.Params | Callable[[optax.Params], optax.Params] | None


def _leaf_name(path: tuple[Any, ...]) -> str:
    """The name of a pytree path's last key (dict key, attribute or index)."""
    if not path:
        return ""
    key = path[-1]
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def exclude_bias_and_norm(params: optax.Params) -> optax.Params:
    """True where LARS' weight decay and trust ratio apply (not b, scale, offset).

    By leaf name, so Haiku's biases and every normalisation's parameters are
    excluded wherever they sit and whatever norm the config picks.

    >>> exclude_bias_and_norm({"linear": {"w": 1.0, "b": 0.0}})
    {'linear': {'b': False, 'w': True}}
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, _: _leaf_name(path) not in EXCLUDED_PARAM_NAMES, params
    )


def _check_number(name: str, value, low: float, high: float = math.inf) -> None:
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

    Per parameter ``p`` with gradient ``g`` and momentum buffer ``μ``:
    (1) ``g += weight_decay * p`` (masked); (2) ``g *= trust_coefficient *
    ||p|| / ||g||`` when both norms are > 0 (masked); (3) ``μ = momentum * μ +
    g``; (4) ``update = -learning_rate(k) * μ``. `optax.lars` scales by the
    learning rate *before* the momentum trace, so its buffer mixes past rates:
    the two differ whenever the rate changes, i.e. throughout warm-up and
    cosine decay.

    Args:
        learning_rate: a float or an ``optax.Schedule`` of the step count.
        weight_decay: L2 coefficient added to the gradient, >= 0.
        momentum: heavy-ball momentum decay, in [0, 1].
        trust_coefficient: η of the trust ratio (1e-3 in the reference).
        weight_decay_mask: pytree of bools, or a function of the params giving
            one (True: decayed); None decays every parameter.
        trust_ratio_mask: the same for the trust ratio.

    Raises:
        ValueError: a number out of range (it would silently train otherwise).
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
