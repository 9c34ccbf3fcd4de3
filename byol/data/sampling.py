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
    """``[start, end)`` of a process's contiguous shard (`tfds.split_for_jax_process`).

    The shards are disjoint, cover the split and differ in size by at most one.

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
    """The endless, shuffled stream of one process's shard-local indices.

    >>> order = TrainOrder(10, 4, seed=0)
    >>> first = [order.indices(s) for s in range(3)]
    >>> sorted(np.concatenate(first)[:10].tolist())
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
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
        """The order of the shard's examples in `epoch` (the last one is cached)."""
        cached_epoch, permutation = self._cache
        if epoch != cached_epoch:
            rng = np.random.default_rng([*self._entropy, epoch])
            permutation = rng.permutation(self.num_examples)
            self._cache = (epoch, permutation)
        return permutation

    def positions(self, step: int) -> np.ndarray:
        """The stream positions of batch `step`."""
        start = step * self.batch_size
        return np.arange(start, start + self.batch_size, dtype=np.int64)

    def indices(self, step: int) -> np.ndarray:
        """The shard-local example indices of batch `step`."""
        positions = self.positions(step)
        epochs, offsets = np.divmod(positions, self.num_examples)
        out = np.empty_like(positions)
        for epoch in np.unique(epochs):
            here = epochs == epoch
            out[here] = self.permutation(int(epoch))[offsets[here]]
        return out


def eval_num_batches(num_examples: int, process_count: int, batch_size: int) -> int:
    """Evaluation batches per process, the same on every process (they pmap together).

    >>> eval_num_batches(10, 3, 2)  # shards of 3, 3 and 4 examples
    2
    """
    largest = -(-num_examples // process_count)
    return -(-largest // batch_size)


def eval_indices(num_examples: int, batch_size: int, step: int):
    """Indices and mask of evaluation batch `step`; padding points at example 0.

    >>> eval_indices(5, 4, 1)
    (array([4, 0, 0, 0]), array([ True, False, False, False]))
    """
    positions = np.arange(step * batch_size, (step + 1) * batch_size, dtype=np.int64)
    mask = positions < num_examples
    return np.where(mask, positions, 0), mask


def example_seeds(seed: int, process_index: int, positions: np.ndarray) -> np.ndarray:
    """One stateless seed (int64 [n, 2]) per stream position, for (seed, process)."""
    key = np.random.SeedSequence([seed, process_index]).generate_state(1, np.uint32)
    positions = np.asarray(positions, dtype=np.int64)
    return np.stack([np.full_like(positions, int(key[0])), positions], axis=-1)
