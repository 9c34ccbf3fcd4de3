"""How the training state sits on the devices of a pmapped step."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

AXIS = "i"  # The pmap axis: every device of every process.


def replicate(tree: Any, devices: Sequence[jax.Device] | None = None) -> Any:
    """Copies a host pytree onto each device (default: the local ones) for pmap.

    The layout is that of pmap's own outputs, so a restored state does not make
    the next step compile again (a mesh axis named otherwise would).
    """
    devices = list(devices) if devices is not None else jax.local_devices()
    sharding = jax.sharding.NamedSharding(
        jax.sharding.Mesh(np.array(devices), (AXIS,)), jax.sharding.PartitionSpec(AXIS)
    )

    def put(x):
        x = np.asarray(x)
        return jax.device_put(np.broadcast_to(x, (len(devices), *x.shape)), sharding)

    return jax.tree.map(put, tree)


def local_replica(tree: Any) -> Any:
    """This process's first device's copy of a replicated pytree (on that device).

    Read from the local shard: in a multi-process run `x[0]` would be a
    computation every process must join, gathering the array everywhere.
    """
    return jax.tree.map(lambda x: x.addressable_data(0)[0], tree)


def unreplicate(tree: Any) -> Any:
    """`local_replica` on the host (numpy)."""
    return jax.device_get(local_replica(tree))
