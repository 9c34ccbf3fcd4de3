"""The target network's exponential moving average of the online parameters."""

import jax
import optax


def update_target(
    online_params: optax.Params, target_params: optax.Params, tau: jax.typing.ArrayLike
) -> optax.Params:
    """Moves the target parameters towards the online ones: ξ ← ξ + (1 − τ)(θ − ξ).

    Apply to parameters only: the target's BN moving statistics are its own
    state and are not averaged (recipe §1). The two trees must have the same
    structure; a target tree that also carries the (unused) predictor, as in the
    reference code, is averaged like every other leaf.

    Args:
        online_params: θ, the online parameters (a pytree).
        target_params: ξ, the target parameters, same structure as θ.
        tau: Decay rate τ in [0, 1] (scalar, may be traced); τ = 1 leaves ξ as is.

    Returns:
        The new target parameters ``τ ξ + (1 − τ) θ``.

    Example:
        >>> target = update_target(online, target, tau=target_ema_schedule(
        ...     0.996, total_steps)(step))
    """
    return optax.incremental_update(online_params, target_params, step_size=1.0 - tau)
