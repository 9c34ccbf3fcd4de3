"""Moving host batches onto the local devices ahead of a pmapped step (JAX only)."""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterable, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

_AXIS = "devices"


def device_sharding(devices: Sequence[jax.Device] | None = None) -> NamedSharding:
    """Returns the sharding that splits a leading axis over `devices`.

    It is equivalent to the input sharding `jax.pmap` expects over the same
    devices, so pmap takes arrays placed with it without copying them.

    Args:
      devices: the devices, in pmap's order (default `jax.local_devices()`).

    Returns:
      A `NamedSharding` over a 1-D mesh, leading axis sharded.

    Example:
      >>> sharding = device_sharding()
      >>> x = jax.device_put(np.zeros((jax.local_device_count(), 4)), sharding)
    """
    devices = list(devices) if devices is not None else jax.local_devices()
    return NamedSharding(Mesh(np.array(devices), (_AXIS,)), PartitionSpec(_AXIS))


def prefetch_to_device(
    iterator: Iterable,
    size: int = 2,
    devices: Sequence[jax.Device] | None = None,
) -> Iterator:
    """Puts batches on the devices `size` steps before they are consumed.

    Each leaf of each batch is a numpy array whose leading axis is the device
    axis (length ``len(devices)``); it becomes a `jax.Array` with one slice per
    device. Transfers are asynchronous, so up to `size` batches are in flight
    while the current step runs.

    Args:
      iterator: yields pytrees of numpy arrays with leading device axis.
      size: batches to keep in flight (>= 1).
      devices: target devices (default `jax.local_devices()`).

    Yields:
      The same pytrees, with `jax.Array` leaves sharded over `devices`.

    Raises:
      ValueError: if `size` < 1.

    Example:
      >>> batches = prefetch_to_device(load('fashion_mnist', 'train',
      ...     is_training=True, batch_dims=[jax.local_device_count(), 64]))
      >>> state, scalars = pmapped_update(state, next(batches))  # doctest: +SKIP
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
