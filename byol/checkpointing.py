"""Checkpoints of a training run with orbax: save, keep the last N, resume.

A checkpoint holds everything needed to continue a run exactly: the training
state (all parameters, network state and optimiser state), the step and the
base random key. The position in the data stream is the step itself: the input
pipeline is a deterministic function of (seed, step), so restarting it at the
saved step replays exactly the batches an uninterrupted run would have seen.

Orbax writes each checkpoint into a temporary directory and renames it when
complete, so a crash mid-write never leaves a half-written "latest" checkpoint.
No pickle is involved: arrays are stored with tensorstore, metadata as JSON.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any


class Checkpointer:
    """Saves and restores training states in `<workdir>/checkpoints`.

    Example:
        >>> ckpt = Checkpointer("/tmp/run", max_to_keep=2)
        >>> ckpt.save(100, state, {"seed": 0})      # doctest: +SKIP
        >>> step, state, meta = ckpt.restore_latest(state)  # doctest: +SKIP
    """

    def __init__(self, workdir: str, max_to_keep: int = 3):
        """Opens (creating if needed) the checkpoint directory of a work directory.

        Args:
            workdir: the run's work directory.
            max_to_keep: how many of the most recent checkpoints to keep.
        """
        if max_to_keep < 1:
            raise ValueError(f"checkpoint max_to_keep must be >= 1, got {max_to_keep}")
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True
            ),
        )

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or None."""
        return self._manager.latest_step()

    def save(self, step: int, state: PyTree, metadata: dict[str, Any]) -> None:
        """Saves a host-side (unreplicated) state and JSON metadata at `step`.

        Args:
            step: the number of optimiser steps taken.
            state: a pytree of arrays (one copy, not replicated over devices).
            metadata: JSON-serialisable facts about the run (seed, config digest).
        """
        state = jax.tree.map(np.asarray, state)
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                metadata=ocp.args.JsonSave(metadata),
            ),
            force=True,
        )

    def restore(self, step: int, like: PyTree) -> tuple[PyTree, dict[str, Any]]:
        """Restores the state saved at `step`, shaped like `like`."""
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), like
        )
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract),
                metadata=ocp.args.JsonRestore(),
            ),
        )
        state = jax.tree.map(np.asarray, restored["state"])
        return state, dict(restored["metadata"])

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finishes pending saves and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()
