"""Mixed precision: compute in bfloat16, keep parameters and statistics in float32.

With ``model.compute_dtype = "bfloat16"`` convolutions, matrix products and
activations run in bfloat16, while parameters, optimiser state and the target
network stay float32 (an EMA step of 1e-3 of a weight is below bfloat16's
resolution), every norm computes in float32 (`byol.normalization.make_norm`),
and outputs reach the loss in float32. The cast is explicit, no global policy.
"""

from __future__ import annotations

from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp

COMPUTE_DTYPES = ("float32", "bfloat16")
# Conv / linear weights and biases; normalisation parameters stay float32.
_COMPUTE_LEAVES = ("w", "b")


def cast_params(params: hk.Params, dtype: Any) -> hk.Params:
    """The params with conv and linear weights (``w``, ``b``) cast to `dtype`.

    >>> params = {"conv": {"w": jnp.ones((3, 3, 1, 8))}, "gn": {"scale": jnp.ones(8)}}
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
    """``forward.apply`` computing in `dtype`, on float32 params; outputs in float32.

    ``forward``'s norms must come from `byol.normalization.make_norm` (they
    normalise in float32); gradients flow back through the cast.
    """
    out, state = forward.apply(
        cast_params(params, dtype),
        state,
        None,
        images.astype(dtype),
        is_training=is_training,
    )
    return jax.tree.map(lambda x: x.astype(jnp.float32), out), state
