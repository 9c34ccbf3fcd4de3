"""A pre-training run's work directory: its config, its experiment, its checkpoints.

    <workdir>/config.json      the run's full config (written before step 1)
    <workdir>/checkpoints/     orbax checkpoints (`byol.checkpointing`)
    <workdir>/metrics.jsonl, tensorboard/, results.json, training.png
    <workdir>/.lock.<process>  held while a pre-training run is in it

The three jobs (`byol.train`, `byol.linear_eval`, `byol.export`) meet here:
pre-training holds the directory, records the config and refuses a
directory holding checkpoints of another network or in use by another run;
evaluation and export rebuild the experiment from config.json and restore
its newest checkpoint, writing nothing there.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import tempfile
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np

from byol import byol_experiment, checkpointing, simclr_experiment
from byol.data import pipeline
from configs import common

CONFIG_FILE = "config.json"
# `model.*` fields a run may change on resume: they change how the network
# computes, not what it is. Every other `model.*` field (a future one too),
# `method`, `data.dataset` and `data.image_size` define the network.
RESUMABLE_MODEL_FIELDS = ("compute_dtype",)


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """A run's config.json over today's defaults (fields added since then)."""
    path = os.path.join(workdir, CONFIG_FILE)
    with open(path) as f:
        try:
            saved = json.load(f)
        except ValueError as error:
            raise ValueError(f"{path} is not a config.json ({error})") from None
    if not isinstance(saved, dict):
        raise ValueError(f"{path} is not a config.json (a {type(saved).__name__})")
    config = common.base_config().to_dict()
    for section, values in saved.items():
        if isinstance(values, dict) and isinstance(config.get(section), dict):
            config[section].update(values)
        else:
            config[section] = values
    return ml_collections.ConfigDict(config)


def architecture(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The fields that define a run's network, dotted name → value."""
    fields = {
        "method": config.method,
        "data.dataset": config.data.dataset,
        "data.image_size": config.data.image_size,
    }
    for name, value in config.model.items():
        if name not in RESUMABLE_MODEL_FIELDS:
            fields[f"model.{name}"] = value
    return fields


def writable_dir(directory: str, flag: str = "--workdir") -> None:
    """Raises a one-line ValueError unless `directory` can be written.

    Checked before any work, so a long run does not end unable to save it.
    Creates nothing: a run refused later (a missing dataset) leaves no trace.
    """
    existing = os.path.abspath(directory)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    try:
        if not os.path.isdir(existing):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise ValueError(
            f"{flag} {directory} cannot be written ({error.strerror or error}); "
            "give a directory you can write"
        ) from None


@contextlib.contextmanager
def claimed(workdir: str):
    """Holds `workdir` for one pre-training run: a second one there is refused.

    Two runs in one directory would overwrite each other's checkpoints and
    interleave their metrics. Each process holds an advisory lock on its own
    file (the processes of one multi-host run do not block each other); the
    kernel releases it when the process ends, so a crash leaves nothing to
    clean up. A file system without locks is not checked.

    Raises:
        ValueError: another run holds the directory (its pid and host named).
    """
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, f".lock.{jax.process_index()}")
    with open(path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise ValueError(
                f"workdir {workdir} is in use by another run ({holder}); wait "
                "for it to end or use another --workdir"
            ) from None
        except OSError as error:
            logging.getLogger(__name__).warning(
                "%s cannot be locked (%s): not checking for another run there",
                path,
                error.strerror or error,
            )
        lock.truncate(0)
        lock.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        lock.flush()
        yield


def record_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Writes config.json; refuses a directory holding another network's checkpoints.

    Raises:
        ValueError: the directory holds checkpoints and no config.json, or
            checkpoints written under other architecture fields (named).
    """
    path = os.path.join(workdir, CONFIG_FILE)
    checkpoints = os.path.join(workdir, "checkpoints")
    has_checkpoints = os.path.isdir(checkpoints)
    if not os.path.exists(path) and has_checkpoints and os.listdir(checkpoints):
        raise ValueError(
            f"workdir {workdir} holds checkpoints but no {CONFIG_FILE}, so "
            "nothing says which network they are of; use a new --workdir"
        )
    if has_checkpoints and os.path.exists(path):
        saved, now = architecture(read_config(workdir)), architecture(config)
        for field, value in now.items():
            if saved.get(field) != value:
                raise ValueError(
                    f"workdir {workdir} holds checkpoints of another config: "
                    f"{field} was {saved.get(field)!r}, now {value!r}; use a new "
                    "--workdir or the same config"
                )
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        # Written aside and renamed: other processes may be reading it.
        with open(path + ".tmp", "w") as f:
            json.dump(config.to_dict(), f, indent=2)
        os.replace(path + ".tmp", path)


def dataset_info(config: ml_collections.ConfigDict):
    """`byol.data.dataset_info` of the config's dataset."""
    return pipeline.dataset_info(
        config.data.dataset, **pipeline.source_settings(config.data)
    )


def make_experiment(config: ml_collections.ConfigDict, num_classes: int):
    """The experiment `config.method` names; both expose `init`, `update`, `embed`."""
    if config.method == "simclr":
        return simclr_experiment.SimclrExperiment(config, num_classes)
    return byol_experiment.ByolExperiment(config, num_classes)


def abstract_train_state(experiment, info, image_size: int):
    """One replica's training state as zeros of the right shapes, without compute."""
    shape = info.image_shape or (image_size, image_size, 3)
    devices = jax.local_device_count()
    images = jax.ShapeDtypeStruct((devices, 2, *shape), np.uint8)
    names = ("images",) if info.fixed_size else ("view1", "view2")
    batch = {name: images for name in names}
    batch["labels"] = jax.ShapeDtypeStruct((devices, 2), np.int32)
    replicated = jax.eval_shape(experiment.init, jax.random.key(0), batch)
    return jax.tree.map(lambda x: np.zeros(x.shape[1:], x.dtype), replicated)


class RestoredRun(NamedTuple):
    """The newest checkpoint of a run and what rebuilt its model.

    Attributes:
        experiment: the `ByolExperiment` or `SimclrExperiment` of config.json.
        state: the whole training state (host arrays).
        step: the checkpoint's step.
        config: the run's config, data paths as given.
        info: the run's dataset's `DatasetInfo`.
    """

    experiment: Any
    state: Any
    step: int
    config: ml_collections.ConfigDict
    info: Any


def restore_run(
    workdir: str, config: ml_collections.ConfigDict, source: str = "--workdir"
) -> RestoredRun:
    """Restores the newest readable checkpoint of `workdir`, writing nothing there.

    Args:
        workdir: a pre-training work directory.
        config: its config (`read_config`, maybe with this machine's data paths).
        source: the flag or field that named `workdir`, for the errors.

    Raises:
        FileNotFoundError: no checkpoints/ or no readable checkpoint.
        ValueError: a checkpoint that does not fit config.json's model.
    """
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise FileNotFoundError(
            f"{source} {workdir!r} has no checkpoints/ directory; pre-train there first"
        )
    # Read-only: the run may still be writing (no clean-up, no moves).
    checkpointer = checkpointing.Checkpointer(
        workdir, config.training.max_checkpoints_to_keep, read_only=True
    )
    try:
        if checkpointer.latest_step() is None:
            raise FileNotFoundError(
                f"{source} {workdir!r} has no complete checkpoint in "
                f"{checkpointer.directory}"
            )
        info = dataset_info(config)
        experiment = make_experiment(config, info.num_classes)
        like = abstract_train_state(experiment, info, config.data.image_size)
        try:
            latest = checkpointer.restore_latest(like)  # skips corrupt ones
            if latest is None:
                raise FileNotFoundError(
                    f"{source} {workdir!r} has no readable checkpoint in "
                    f"{checkpointer.directory}"
                )
            # Orbax restores other shapes as saved: compare them too.
            _check_same_shapes(latest.state, like)
        except (ValueError, KeyError, TypeError) as error:
            lines = str(error).strip().splitlines() or [type(error).__name__]
            reason = lines[0] if len(lines[0]) <= 200 else lines[0][:200] + "..."
            raise ValueError(
                f"the newest checkpoint in {checkpointer.directory} does not fit "
                f"the model of {os.path.join(workdir, CONFIG_FILE)} (another "
                f"architecture?): {reason}"
            ) from error
    finally:
        checkpointer.close()
    return RestoredRun(experiment, latest.state, int(latest.step), config, info)


def _check_same_shapes(restored, like) -> None:
    got = jax.tree_util.tree_leaves_with_path(restored)
    want = jax.tree_util.tree_leaves_with_path(like)
    if [p for p, _ in got] != [p for p, _ in want]:
        raise ValueError("the parameter names differ")
    for (path, a), (_, b) in zip(got, want, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or a.dtype != b.dtype:
            raise ValueError(
                f"{jax.tree_util.keystr(path)} is {a.dtype}{list(a.shape)} there, "
                f"{b.dtype}{list(b.shape)} in this model"
            )
