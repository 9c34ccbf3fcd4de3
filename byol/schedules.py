"""Schedules of the learning rate and of the target decay rate τ.

``optax.Schedule``s: jittable functions of the optimiser step ``k`` (0-based,
warm-up included). Arguments out of range raise: a schedule would otherwise
silently compute another run.
"""

import math
import numbers

import jax.numpy as jnp
import optax


def _check_steps(name: str, value, minimum: int) -> int:
    """``value`` as an int, or a ValueError unless it is an integer >= `minimum`."""
    if (
        not isinstance(value, numbers.Real)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or int(value) != value
        or value < minimum
    ):
        raise ValueError(f"{name} {value!r} invalid; expected an integer >= {minimum}")
    return int(value)


def learning_rate_schedule(
    base_learning_rate: float,
    batch_size: int,
    total_steps: int,
    warmup_steps: int,
) -> optax.Schedule:
    """Linear warm-up, then cosine decay to 0, with the linear batch-size scaling.

    With ``peak = base_learning_rate * batch_size / 256``, ``K = total_steps``
    and ``W = warmup_steps``, the value at step ``k`` is the reference's::

        k / W * peak                                                if k < W
        peak * 0.5 * (1 + cos(pi * min(k - W, K - W) / max(1, K - W)))  else

    (``W = K`` is all warm-up: the ``max`` avoids the reference's 0/0). Written
    out: `optax.warmup_cosine_decay_schedule` agrees for ``0 < W < K`` but
    raises for ``W = K``.

    >>> schedule = learning_rate_schedule(0.2, 4096, 312_800, 3_128)
    >>> round(float(schedule(3_128)), 4), float(schedule(312_800))
    (3.2, 0.0)
    """
    if (
        not isinstance(base_learning_rate, numbers.Real)
        or not math.isfinite(base_learning_rate)
        or base_learning_rate < 0
    ):
        raise ValueError(
            f"base_learning_rate {base_learning_rate!r} invalid; "
            "expected a finite number >= 0"
        )
    batch_size = _check_steps("batch_size", batch_size, 1)
    total_steps = _check_steps("total_steps", total_steps, 1)
    warmup_steps = _check_steps("warmup_steps", warmup_steps, 0)
    if warmup_steps > total_steps:
        raise ValueError(
            f"warmup_steps {warmup_steps} invalid; expected an integer in "
            f"[0, total_steps={total_steps}]"
        )
    peak = base_learning_rate * batch_size / 256.0
    decay_steps = total_steps - warmup_steps

    def schedule(count):
        # Float32 keeps jitted step counts beyond int32 range harmless.
        k = jnp.asarray(count, jnp.float32)
        warmup = k / max(warmup_steps, 1) * peak
        progress = jnp.minimum(k - warmup_steps, decay_steps) / max(decay_steps, 1)
        cosine = peak * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        return jnp.where(k < warmup_steps, warmup, cosine)

    return schedule


def target_ema_schedule(base_ema: float, total_steps: int) -> optax.Schedule:
    """The target decay rate ``τ_k = 1 - (1 - τ_base) (cos(π k / K) + 1) / 2``, then 1.

    >>> tau = target_ema_schedule(0.996, total_steps=1000)
    >>> round(float(tau(0)), 6), float(tau(1000))
    (0.996, 1.0)
    """
    if (
        not isinstance(base_ema, numbers.Real)
        or not math.isfinite(base_ema)
        or not 0.0 <= base_ema <= 1.0
    ):
        raise ValueError(f"base_ema {base_ema!r} invalid; expected a number in [0, 1]")
    total_steps = _check_steps("total_steps", total_steps, 1)
    one_minus_tau = optax.cosine_decay_schedule(
        init_value=1.0 - base_ema, decay_steps=total_steps
    )

    def schedule(count):
        return 1.0 - one_minus_tau(jnp.asarray(count, jnp.float32))

    return schedule
