"""Checkpoints of a training run with orbax: asynchronous saves, the last N kept.

A checkpoint holds the training state (every parameter, network and optimiser
state) and JSON metadata; the step is its name. The position in the data
stream is the step itself, so resuming there replays what an uninterrupted
run would have seen. No pickle: arrays go through tensorstore.

Faults, and what survives them:

* Saves are asynchronous: `save` copies the state to the host and returns
  while a background thread writes it into ``<step>.orbax-checkpoint-tmp``,
  renamed when complete, so a listed checkpoint is always whole. A process
  killed mid-write leaves the temporary directory, removed by the next run.
* A failed write (disk full, read-only directory) raises
  `CheckpointWriteError` naming the step and the checkpoint still intact, at
  the next `save`, `wait` or `close`; older checkpoints are removed only after
  a newer one is complete.
* A corrupt checkpoint: `restore_latest` warns, renames it ``<step>.corrupt``
  (never deleting it) and falls back to the next newest.

In a multi-host run every process calls `save` with the same replicated state
and orbax writes it once; only process 0 sets corrupt checkpoints aside, the
others waiting for it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from byol import distributed

PyTree = Any
CORRUPT_SUFFIX = ".corrupt"
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # where orbax writes a checkpoint


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the message is one line."""


class Restored(NamedTuple):
    """A restored checkpoint: its step, its state (shaped like `like`), its metadata."""

    step: int
    state: PyTree
    metadata: dict[str, Any]


class Checkpointer:
    """Saves and restores training states in `<workdir>/checkpoints`."""

    def __init__(self, workdir: str, max_to_keep: int = 3, read_only: bool = False):
        """Opens (creating it unless `read_only`) the directory's checkpoints.

        ``read_only`` creates, cleans, moves and deletes nothing: for reading
        another run's checkpoints, maybe while it runs.
        """
        if max_to_keep < 1:
            raise ValueError(f"checkpoint max_to_keep must be >= 1, got {max_to_keep}")
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.read_only = read_only
        self._pending: tuple[int, int | None] | None = None  # (step, previous)
        self._closed = False
        # Read-only is ours (no save, no clean-up, nothing deleted): orbax's
        # own read-only mode warns three times on every open.
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=None if read_only else max_to_keep,
                create=not read_only,
                cleanup_tmp_directories=not read_only,  # a killed write's
                enable_async_checkpointing=True,
            ),
        )

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or None."""
        return self._manager.latest_step()

    def save(self, step: int, state: PyTree, metadata: dict[str, Any]) -> None:
        """Starts saving a host (unreplicated) state and JSON metadata at `step`.

        Raises:
            CheckpointWriteError: this write, or the previous one, failed; the
                checkpoints before it are intact.
        """
        if self.read_only:
            raise ValueError(f"{self.directory} was opened read-only")
        self.wait()
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
            raise self._write_error(step, previous, error) from error
        self._pending = (step, previous)

    def wait(self) -> None:
        """Blocks until the pending save is on disk; raises if it failed."""
        if self._pending is None:
            return
        step, previous = self._pending
        self._pending = None
        try:
            self._manager.wait_until_finished()
        except (OSError, ValueError) as error:
            self._discard(step)
            raise self._write_error(step, previous, error) from error

    def close(self) -> None:
        """Finishes the pending save (raising if it failed) and releases the manager."""
        if self._closed:
            return
        try:
            self.wait()
        finally:
            if not self._closed:
                self._closed = True
                self._manager.close()

    def _discard(self, step: int) -> None:
        """Stops the manager and removes what a failed write of `step` left.

        Orbax's finalising thread may still rename the failed write into place
        after the error; joined first, so the checkpoint is absent, not half.
        """
        self._closed = True
        try:
            self._manager.close()
        except Exception:  # noqa: BLE001  (the same failure, reported once)
            pass
        if jax.process_index() == 0:
            for path in (self._path(step), self._path(step) + TMP_SUFFIX):
                shutil.rmtree(path, ignore_errors=True)

    def _write_error(self, step, previous, error) -> CheckpointWriteError:
        kept = (
            f"checkpoint {previous} is intact"
            if previous is not None
            else "no earlier checkpoint"
        )
        return CheckpointWriteError(
            f"cannot write checkpoint {step} to {self.directory}: "
            f"{_write_reason(error)}; {kept}"
        )

    def restore(self, step: int, like: PyTree) -> tuple[PyTree, dict[str, Any]]:
        """The state saved at `step` (shaped like `like`) and its metadata."""
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
        """The newest readable checkpoint, or None; corrupt ones are set aside.

        A checkpoint that cannot be read is named in a warning, with the one
        used instead, and (unless read-only) renamed ``<step>.corrupt``. One
        that is readable but not shaped like `like` (another architecture)
        raises what orbax raises: that is not corruption.
        """
        corrupt = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                state, metadata = self.restore(step, like)
            except Exception:
                reason = self._unreadable(step)
                if reason is None:
                    raise  # readable, but not shaped like `like`
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
        distributed.barrier("byol_checkpoints_set_aside")
        self._manager.reload()

    def _path(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def _unreadable(self, step: int) -> str | None:
        """Why checkpoint `step` cannot be read as saved (any shape), or None."""
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


def _write_reason(error: BaseException) -> str:
    """Why a write failed: the OS error, also when tensorstore's message wraps it.

    Orbax's threads race to report a full disk: the metadata write's OSError or
    tensorstore's ValueError (a path and its spec, ending in the OS error code).
    """
    code = re.search(r"os_error_code='?(\d+)", str(error))
    if code and not isinstance(error, OSError):
        return f"[Errno {code[1]}] {os.strerror(int(code[1]))}"
    return _first_line(error)


def _first_line(error: BaseException) -> str:
    """An error in one short line (tensorstore appends its JSON spec)."""
    text = str(error).strip().splitlines()
    line = re.sub(r"\s*\[tensorstore_spec=.*", "", text[0]) if text else ""
    line = line or type(error).__name__
    return line if len(line) <= 300 else line[:300] + "..."
