"""Host batches onto the local devices, ahead of the pmapped step (JAX only)."""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterable, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

_AXIS = "devices"


def device_sharding(devices: Sequence[jax.Device] | None = None) -> NamedSharding:
    """The sharding that splits a leading axis over `devices` (default: the local ones).

    It is the input sharding `jax.pmap` expects over the same devices, so pmap
    takes arrays placed with it without copying them (and can donate them).
    """
    devices = list(devices) if devices is not None else jax.local_devices()
    return NamedSharding(Mesh(np.array(devices), (_AXIS,)), PartitionSpec(_AXIS))


def prefetch_to_device(
    iterator: Iterable,
    size: int = 2,
    devices: Sequence[jax.Device] | None = None,
) -> Iterator:
    """Puts batches on the devices `size` steps before they are consumed.

    Each leaf's leading axis is the device axis; the transfers are
    asynchronous, so up to `size` batches are in flight while a step runs.
    """
    if size < 1:
        raise ValueError(f"size {size} must be >= 1")
    sharding = device_sharding(devices)
    iterator = iter(iterator)
    queue = collections.deque()

    def enqueue(n):
        for batch in itertools.islice(iterator, n):
            queue.append(jax.tree.map(lambda x: jax.device_put(x, sharding), batch))

    enqueue(size)
    while queue:
        batch = queue.popleft()
        enqueue(1)  # Before yielding: `size` transfers overlap the step.
        yield batch
