"""Which examples make up each batch: a pure function of (seed, process, step).

Numpy only. Every source (in-memory arrays, random-access records, image
files) reads the indices chosen here, so resuming at step ``k`` is computing the
indices of step ``k``: nothing before it is read or decoded.

Training order: the process's shard is permuted once per epoch with a generator
seeded by ``(seed, process_index, epoch)``; the epochs are concatenated into one
endless stream and batch ``k`` is stream positions ``[k * B, (k + 1) * B)``. A
batch may straddle two epochs; no example is dropped.
"""

from __future__ import annotations

import numpy as np


def shard_bounds(num_examples: int, process_index: int, process_count: int):
    """Returns the ``[start, end)`` of one process's contiguous shard.

    The shards of processes ``0 .. process_count - 1`` are disjoint, cover
    ``range(num_examples)`` and differ in size by at most one (as
    `tfds.split_for_jax_process`).

    Args:
      num_examples: size of the split.
      process_index: this process, in ``[0, process_count)``.
      process_count: number of processes.

    Returns:
      ``(start, end)``.

    Raises:
      ValueError: if the process index is out of range.

    Example:
      >>> shard_bounds(10, 1, 3)
      (3, 6)
    """
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index {process_index} must be in [0, {process_count})"
        )
    start = process_index * num_examples // process_count
    end = (process_index + 1) * num_examples // process_count
    return start, end


class TrainOrder:
    """The endless, shuffled index stream of one process.

    Args:
      num_examples: size of the process's shard (indices are shard-local).
      batch_size: examples per host batch.
      seed: non-negative integer.
      process_index: mixed into the seed so processes shuffle differently.

    Example:
      >>> order = TrainOrder(10, 4, seed=0)
      >>> sorted(np.concatenate([order.indices(0), order.indices(1)])[:10])[:3]
      [0, 1, 2]
    """

    def __init__(
        self, num_examples: int, batch_size: int, seed: int, process_index: int = 0
    ):
        if num_examples < 1:
            raise ValueError("num_examples must be >= 1 to draw training batches")
        if batch_size < 1:
            raise ValueError(f"batch_size {batch_size} must be >= 1")
        if seed < 0:
            raise ValueError(f"seed {seed} must be >= 0")
        self.num_examples = num_examples
        self.batch_size = batch_size
        self._entropy = (seed, process_index)
        # (epoch, permutation), replaced as a whole so readers on other
        # threads never see a mismatched pair.
        self._cache = (-1, np.arange(0))

    def permutation(self, epoch: int) -> np.ndarray:
        """Returns the order of the shard's examples in `epoch` (int64)."""
        cached_epoch, permutation = self._cache
        if epoch != cached_epoch:
            rng = np.random.default_rng([*self._entropy, epoch])
            permutation = rng.permutation(self.num_examples)
            self._cache = (epoch, permutation)
        return permutation

    def positions(self, step: int) -> np.ndarray:
        """Returns the stream positions of batch `step` (int64 [batch_size])."""
        start = step * self.batch_size
        return np.arange(start, start + self.batch_size, dtype=np.int64)

    def indices(self, step: int) -> np.ndarray:
        """Returns the shard-local example indices of batch `step`."""
        positions = self.positions(step)
        epochs, offsets = np.divmod(positions, self.num_examples)
        out = np.empty_like(positions)
        for epoch in np.unique(epochs):
            here = epochs == epoch
            out[here] = self.permutation(int(epoch))[offsets[here]]
        return out


def eval_num_batches(num_examples: int, process_count: int, batch_size: int) -> int:
    """Returns the number of evaluation batches, equal on every process.

    Every process must run the same number of (pmapped) steps, so all pad to
    the largest shard.

    Args:
      num_examples: size of the whole split.
      process_count: number of processes.
      batch_size: examples per host batch.

    Returns:
      ``ceil(largest shard / batch_size)``.

    Example:
      >>> eval_num_batches(10, 3, 2)  # shards of 3, 3, 4 examples
      2
    """
    largest = -(-num_examples // process_count)
    return -(-largest // batch_size)


def eval_indices(num_examples: int, batch_size: int, step: int):
    """Returns the indices and mask of evaluation batch `step`.

    Args:
      num_examples: size of this process's shard.
      batch_size: examples per host batch.
      step: batch number.

    Returns:
      ``(indices, mask)``: int64 and bool ``[batch_size]``. Padding entries
      (beyond the shard's end) point at example 0 and have mask False.

    Example:
      >>> eval_indices(5, 4, 1)
      (array([4, 0, 0, 0]), array([ True, False, False, False]))
    """
    positions = np.arange(step * batch_size, (step + 1) * batch_size, dtype=np.int64)
    mask = positions < num_examples
    return np.where(mask, positions, 0), mask


def example_seeds(seed: int, process_index: int, positions: np.ndarray) -> np.ndarray:
    """Returns one stateless-RNG seed per stream position, for host-side crops.

    Args:
      seed: the run's seed.
      process_index: this process.
      positions: stream positions (int64).

    Returns:
      int64 ``[len(positions), 2]``: a key fixed by (seed, process) and the
      position, for `tf.random.stateless_*`.

    Example:
      >>> example_seeds(0, 0, np.arange(2))[:, 1]
      array([0, 1])
    """
    key = np.random.SeedSequence([seed, process_index]).generate_state(1, np.uint32)
    positions = np.asarray(positions, dtype=np.int64)
    return np.stack([np.full_like(positions, int(key[0])), positions], axis=-1)
