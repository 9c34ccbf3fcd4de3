"""The target network's exponential moving average of the online parameters."""

import jax
import optax


def update_target(
    online_params: optax.Params, target_params: optax.Params, tau: jax.typing.ArrayLike
) -> optax.Params:
    """Moves the target parameters towards the online ones: ξ ← ξ + (1 − τ)(θ − ξ).

    Parameters only: the target's BN moving statistics are its own state
    (recipe §1). ``tau`` may be traced; τ = 1 leaves ξ as it is.

    >>> float(update_target({"w": 1.0}, {"w": 0.0}, tau=0.75)["w"])
    0.25
    """
    return optax.incremental_update(online_params, target_params, step_size=1.0 - tau)
