"""Checkpoints of a training run with orbax: save, keep the last N, resume.

A checkpoint holds everything needed to continue a run exactly: the training
state (all parameters, network state and optimiser state), the step and the
base random key. The position in the data stream is the step itself: the input
pipeline is a deterministic function of (seed, step), so restarting it at the
saved step replays exactly the batches an uninterrupted run would have seen.

Faults, and what survives them:

* A process killed mid-write: orbax writes each checkpoint into a temporary
  directory (``<step>.orbax-checkpoint-tmp``) and renames it when complete, so
  the newest listed checkpoint is always a finished one. Leftover temporary
  directories are removed when the next run opens the directory.
* A corrupt checkpoint (truncated or overwritten data, a missing file):
  `restore_latest` finds that it cannot be read, warns, moves it aside to
  ``<step>.corrupt`` (never deleting it) and falls back to the next newest.
* A failed write (disk full, read-only directory): `save` is synchronous and
  raises `CheckpointWriteError` naming the directory and the cause; the
  checkpoints written before are untouched.

No pickle is involved: arrays are stored with tensorstore, metadata as JSON.

Several processes (a multi-host run) share one checkpoint directory: every
process calls `save` with the same (replicated) state and orbax writes it once,
from process 0, between barriers; every process restores it; only process 0
moves corrupt checkpoints aside, and the others wait for it.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

PyTree = Any
CORRUPT_SUFFIX = ".corrupt"


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the message is one line."""


class Restored(NamedTuple):
    """A restored checkpoint.

    Attributes:
        step: its step.
        state: the state, shaped like the `like` given to the restore.
        metadata: the JSON metadata saved with it.
    """

    step: int
    state: PyTree
    metadata: dict[str, Any]


class Checkpointer:
    """Saves and restores training states in `<workdir>/checkpoints`.

    Example:
        >>> ckpt = Checkpointer("/tmp/run", max_to_keep=2)
        >>> ckpt.save(100, state, {"seed": 0})      # doctest: +SKIP
        >>> step, state, meta = ckpt.restore_latest(like)  # doctest: +SKIP
    """

    def __init__(self, workdir: str, max_to_keep: int = 3, read_only: bool = False):
        """Opens (creating if needed) the checkpoint directory of a work directory.

        Args:
            workdir: the run's work directory.
            max_to_keep: how many of the most recent checkpoints to keep.
            read_only: only restore: create, clean up, move or delete nothing
                (for reading another run's checkpoints, maybe while it runs).
        """
        if max_to_keep < 1:
            raise ValueError(f"checkpoint max_to_keep must be >= 1, got {max_to_keep}")
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.read_only = read_only
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                create=not read_only,
                read_only=read_only,
                # Left behind by a process killed mid-write.
                cleanup_tmp_directories=not read_only,
                # A write error must surface at the save that failed, naming
                # its step, before older checkpoints are garbage-collected.
                enable_async_checkpointing=False,
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

        Raises:
            CheckpointWriteError: the write failed (e.g. no space left); the
                checkpoints saved before are intact.
        """
        state = jax.tree.map(np.asarray, state)
        previous = self._manager.latest_step()
        try:
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    metadata=ocp.args.JsonSave(metadata),
                ),
                force=True,
            )
        except (OSError, ValueError) as error:  # tensorstore raises ValueError
            kept = (
                f"checkpoint {previous} is intact"
                if previous is not None
                else "no earlier checkpoint"
            )
            raise CheckpointWriteError(
                f"cannot write checkpoint {step} to {self.directory}: "
                f"{_first_line(error)}; {kept}"
            ) from error

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

    def restore_latest(self, like: PyTree) -> Restored | None:
        """Restores the newest readable checkpoint, skipping corrupt ones.

        A checkpoint that cannot be read (truncated or garbled data, a missing
        file) is reported in a warning naming it and the checkpoint used
        instead; unless read-only, it is renamed `<step>.corrupt` so that later
        runs do not list it. Nothing is deleted.

        Args:
            like: a pytree with the shapes and dtypes to restore into.

        Returns:
            The `Restored` checkpoint, or None when there is no readable one.

        Raises:
            Whatever `restore` raises for a readable checkpoint that does not
            fit `like` (another architecture): that is not corruption.

        Example:
            >>> ckpt = Checkpointer("/tmp/run")
            >>> restored = ckpt.restore_latest(like)  # doctest: +SKIP
            >>> start = restored.step if restored else 0  # doctest: +SKIP
        """
        corrupt = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                state, metadata = self.restore(step, like)
            except Exception:
                reason = self._unreadable(step)
                if reason is None:
                    raise  # Readable, but not shaped like `like`.
                corrupt.append(self._set_aside(step, reason))
                continue
            self._sync_set_aside()
            if corrupt:
                logging.warning(
                    "%s; restored checkpoint %d (%s) instead",
                    "; ".join(corrupt),
                    step,
                    self._path(step),
                )
            return Restored(step, state, metadata)
        self._sync_set_aside()
        if corrupt:
            logging.warning("%s; no readable checkpoint is left", "; ".join(corrupt))
        return None

    def _sync_set_aside(self) -> None:
        """With several processes: all see the checkpoints process 0 set aside."""
        if self.read_only or jax.process_count() == 1:
            return
        multihost_utils.sync_global_devices("byol_checkpoints_set_aside")
        self._manager.reload()

    def _path(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def _unreadable(self, step: int) -> str | None:
        """Why checkpoint `step` cannot be read as saved, or None if it can.

        Reads it without a target structure, so that a checkpoint of another
        shape (readable, but not ours) is not mistaken for a corrupt one.
        """
        try:
            self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(),
                    metadata=ocp.args.JsonRestore(),
                ),
            )
        except Exception as error:
            return _first_line(error)
        return None

    def _set_aside(self, step: int, reason: str) -> str:
        """Renames a corrupt checkpoint out of orbax's sight; returns the report."""
        path = self._path(step)
        report = f"checkpoint {step} ({path}) is corrupt: {reason}"
        if self.read_only or jax.process_index() != 0:
            return report
        target, n = path + CORRUPT_SUFFIX, 1
        while os.path.exists(target):
            n += 1
            target = f"{path}{CORRUPT_SUFFIX}-{n}"
        os.rename(path, target)
        self._manager.reload()
        return f"{report}; moved it to {target}"

    def wait(self) -> None:
        """Blocks until pending saves are on disk (saves are synchronous)."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finishes pending saves and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()


def _first_line(error: BaseException) -> str:
    """An error in one short line (tensorstore appends its JSON spec)."""
    text = str(error).strip().splitlines()
    line = re.sub(r"\s*\[tensorstore_spec=.*", "", text[0]) if text else ""
    line = line or type(error).__name__
    return line if len(line) <= 300 else line[:300] + "..."
