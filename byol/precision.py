"""Mixed precision: compute in bfloat16, keep parameters and statistics in float32.

With ``model.compute_dtype = "bfloat16"`` convolutions, matrix products and
activations run in bfloat16 (half the activation memory; the accelerators'
bf16 matrix units), while what needs the precision stays float32:

* parameters, optimiser state and the target network: an EMA step of
  (1 − τ) ≈ 1e-3 of a weight is below bfloat16's 8-bit mantissa;
* normalisation statistics: every norm layer computes in float32
  (`byol.normalization.make_norm`), and weight standardisation takes its
  mean and variance in float32 (of the bfloat16-rounded weights);
* the loss: the network's outputs are cast to float32 before it.

The cast is explicit, with no global policy: `apply` hands the network a
bfloat16 copy of the conv and linear weights; gradients flow back through
the cast to the float32 parameters.
"""

from __future__ import annotations

from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp

COMPUTE_DTYPES = ("float32", "bfloat16")
# Conv / linear weights and biases; normalisation scales and offsets are
# named `scale` / `offset` and stay float32.
_COMPUTE_LEAVES = ("w", "b")


def cast_params(params: hk.Params, dtype: Any) -> hk.Params:
    """The params with conv and linear weights (`w`, `b`) in `dtype`.

    Args:
        params: a Haiku parameter tree ``{module: {name: array}}``.
        dtype: the compute dtype, e.g. ``jnp.bfloat16``.

    Returns:
        The same tree; leaves named ``w`` or ``b`` cast to `dtype`, the
        others (normalisation parameters) unchanged.

    Example:
        >>> params = {"conv": {"w": jnp.ones((3, 3, 1, 8))},
        ...           "gn": {"scale": jnp.ones((8,))}}
        >>> jax.tree.map(lambda x: x.dtype.name, cast_params(params, jnp.bfloat16))
        {'conv': {'w': 'bfloat16'}, 'gn': {'scale': 'float32'}}
    """
    return {
        module: {
            name: value.astype(dtype) if name in _COMPUTE_LEAVES else value
            for name, value in leaves.items()
        }
        for module, leaves in params.items()
    }


def apply(
    forward: hk.TransformedWithState,
    dtype: Any,
    params: hk.Params,
    state: hk.State,
    images: jax.Array,
    is_training: bool,
) -> tuple[Any, hk.State]:
    """Runs `forward` computing in `dtype`; its outputs come back in float32.

    Args:
        forward: a network whose norms come from `byol.normalization.make_norm`
            (which normalise in float32 whatever the activations' dtype).
        dtype: the compute dtype (float32: the plain `forward.apply`).
        params: float32 parameters.
        state: network state (BN moving averages, float32).
        images: float images [B, H, W, C].
        is_training: training mode.

    Returns:
        ``(outputs, state)``: every output leaf float32, and the new state.

    Example:
        >>> out, _ = apply(net, jnp.bfloat16, params, state, x, True)  # doctest: +SKIP
    """
    out, state = forward.apply(
        cast_params(params, dtype),
        state,
        None,
        images.astype(dtype),
        is_training=is_training,
    )
    return jax.tree.map(lambda x: x.astype(jnp.float32), out), state
