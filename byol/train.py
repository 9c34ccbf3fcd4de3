"""The pre-training loop: data → pmapped BYOL (or SimCLR) step → logs, checkpoints.

`pretrain(config, workdir)` resumes from the newest checkpoint in `workdir`
when there is one, so a killed run restarted with the same command continues
exactly where it stopped (same parameters as an uninterrupted run); a corrupt
newest checkpoint is set aside and the one before it used. Every step is
checked for a non-finite loss, gradient or parameter norm (`NonFiniteGuard`):
the run stops there, or skips the update with
`training.skip_nonfinite_updates`.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from byol import (
    byol_experiment,
    checkpointing,
    config_checks,
    data,
    eval_experiment,
    reporting,
    simclr_experiment,
)

# How `config.method` is written in titles.
METHOD_NAMES = {"byol": "BYOL", "simclr": "SimCLR"}


def make_experiment(config: ml_collections.ConfigDict, num_classes: int):
    """The experiment `config.method` names: BYOL (default) or SimCLR.

    Both expose `init`, `update`, `embed` and `forward` on states with
    `online_params` / `online_state`, so the loop below runs either.

    Args:
        config: a full config (see configs/common.py).
        num_classes: classes of the online linear classifier.

    Returns:
        A `byol_experiment.ByolExperiment` or a
        `simclr_experiment.SimclrExperiment`.

    Raises:
        ValueError: an unknown `config.method`.

    Example:
        >>> experiment = make_experiment(config, 10)  # doctest: +SKIP
    """
    method = config.get("method", "byol")
    if method == "byol":
        return byol_experiment.ByolExperiment(config, num_classes)
    if method == "simclr":
        return simclr_experiment.SimclrExperiment(config, num_classes)
    raise ValueError(
        f"method {method!r} unknown; expected one of: " + ", ".join(METHOD_NAMES)
    )


def replicate(tree: Any, devices: Sequence[jax.Device] | None = None) -> Any:
    """Copies a host pytree onto each device, ready for the pmapped step.

    Args:
        tree: host arrays.
        devices: the devices of the pmapped step (default: every local one);
            the copies get a leading axis this long.
    """
    devices = list(devices) if devices is not None else jax.local_devices()
    # The layout of pmap's own outputs (jax.sharding.PmapSharding is gone in
    # JAX 0.10). A mesh axis named otherwise would make the first step after a
    # resume compile the update twice (once for this layout, once for pmap's).
    sharding = jax.sharding.NamedSharding(
        jax.sharding.Mesh(np.array(devices), (byol_experiment.AXIS,)),
        jax.sharding.PartitionSpec(byol_experiment.AXIS),
    )

    def put(x):
        x = np.asarray(x)
        stacked = np.broadcast_to(x, (len(devices),) + x.shape)
        return jax.device_put(stacked, sharding)

    return jax.tree.map(put, tree)


def _val_size(config) -> int | None:
    """`data.val_size` (held-out examples); absent, None or < 0: the catalogue's."""
    value = config.data.get("val_size")
    return None if value is None or value < 0 else value


def _eval_batches(config, split: str, batch_size: int = 1000):
    return data.load(
        config.data.dataset,
        split,
        is_training=False,
        batch_dims=(batch_size,),
        image_size=config.data.image_size,
        data_dir=config.data.data_dir,
        val_size=_val_size(config),
        # The probe is supervised: STL-10's unlabelled images (label -1) stay out.
        labelled_only=True,
        skip_bad_images=_skip_corrupt_images(config),
    )


def probe_features(
    config: ml_collections.ConfigDict,
    embed,
    max_train_examples: int | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Frozen features of the train (minus validation), validation and test splits.

    Each process embeds its shard of each split; every process gets them all.
    """
    processes = jax.process_count()
    per_process = max_train_examples and -(-max_train_examples // processes)
    train = eval_experiment.extract_features(
        embed, _eval_batches(config, "train_minus_val"), per_process
    )
    train = tuple(x[:max_train_examples] for x in _from_all_processes(train))
    return {
        "train": train,
        "val": _from_all_processes(
            eval_experiment.extract_features(embed, _eval_batches(config, "val"))
        ),
        "test": _from_all_processes(
            eval_experiment.extract_features(embed, _eval_batches(config, "test"))
        ),
    }


def _from_all_processes(arrays: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """Every process's rows of `arrays` (equal lengths), in process order."""
    if jax.process_count() == 1:
        return arrays
    from jax.experimental import multihost_utils  # noqa: PLC0415

    counts = multihost_utils.process_allgather(np.int32(len(arrays[0])))
    longest = int(counts.max())
    # process_allgather takes the same shape everywhere: pad, gather, trim.
    padded = [
        np.concatenate([x, np.zeros((longest - len(x), *x.shape[1:]), x.dtype)])
        for x in arrays
    ]
    gathered = multihost_utils.process_allgather(padded)
    return tuple(
        np.concatenate([x[p, :n] for p, n in enumerate(counts)]) for x in gathered
    )


def run_probe(config, embed, num_classes: int, max_train_examples=None):
    """The fast linear probe of `embed`'s features (see `linear_probe`)."""
    feats = probe_features(config, embed, max_train_examples)
    return eval_experiment.linear_probe(
        feats["train"], feats["val"], feats["test"], num_classes
    )


def pretrain(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Pre-trains BYOL (or SimCLR, `config.method`) as `config` says.

    Checkpoints, logs, plots and results go into `workdir`.

    Args:
        config: a full config (see configs/common.py).
        workdir: where checkpoints, logs, plots and `results.json` go.

    Returns:
        The results dictionary also written to `<workdir>/results.json`.

    Raises:
        ValueError: a bad config field, or a work directory of another run.
        FileNotFoundError: a missing dataset.
        FloatingPointError: a non-finite update (unless skipped), naming its
            step; the checkpoints before it are kept.
        checkpointing.CheckpointWriteError: a checkpoint could not be written.
    """
    config_checks.check_pretrain_config(config)
    training = config.training
    info = data.dataset_info(
        config.data.dataset,
        config.data.data_dir,
        val_size=_val_size(config),
        skip_bad_images=_skip_corrupt_images(config),
    )
    per_device_batch = config_checks.per_device_batch(training.batch_size)
    os.makedirs(workdir, exist_ok=True)
    config_checks.check_workdir(workdir, config)

    experiment = make_experiment(config, info.num_classes)
    checkpointer = checkpointing.Checkpointer(workdir, training.max_checkpoints_to_keep)
    latest = checkpointer.latest_step() or 0
    if latest > training.max_steps:
        checkpointer.close()
        raise ValueError(
            f"training.max_steps {training.max_steps} is below step {latest} "
            f"of the newest checkpoint in {workdir}; use a new --workdir"
        )
    results_path = os.path.join(workdir, "results.json")
    if latest == training.max_steps and os.path.exists(results_path):
        # A finished run restarted: nothing to train, and re-saving the last
        # step would fail (orbax refuses to overwrite a checkpoint).
        checkpointer.close()
        if jax.process_index() == 0:
            print(f"{workdir} holds a finished run; returning its results.json")
        with open(results_path) as f:
            return json.load(f)
    # Restored before the data stream starts: a corrupt newest checkpoint
    # makes the run resume from an older step.
    restored = checkpointer.restore_latest(
        abstract_train_state(experiment, info, config.data.image_size)
    )
    start_step = restored.step if restored else 0
    batches = data.load(
        config.data.dataset,
        "train",
        is_training=True,
        batch_dims=(jax.local_device_count(), per_device_batch),
        image_size=config.data.image_size,
        data_dir=config.data.data_dir,
        seed=config.seed,
        start_step=start_step,
        num_threads=config.data.num_threads,
        skip_bad_images=_skip_corrupt_images(config),
    )
    batches = data.prefetch_to_device(batches, size=2)
    first_batch = next(batches)
    if restored:
        state = replicate(restored.state)
        if jax.process_index() == 0:
            print(f"Resumed from step {start_step} in {checkpointer.directory}")
    else:
        state = experiment.init(jax.random.key(config.seed), first_batch)

    guard = NonFiniteGuard(
        skip=training.get("skip_nonfinite_updates", False),
        skipped=restored.metadata.get("skipped_updates", 0) if restored else 0,
    )
    metrics = reporting.MetricsLog(workdir, start_step)
    progress = reporting.Progress(training.max_steps, start_step, training.batch_size)

    def embed_fn():
        """`embed` with the current online network (one replica, local)."""
        params, net_state = byol_experiment.local_replica(
            (state.online_params, state.online_state)
        )
        return lambda images: experiment.embed(params, net_state, images)

    def save(step: int) -> None:
        metadata = {
            "seed": config.seed,
            "dataset": config.data.dataset,
            "skipped_updates": guard.skipped,
        }
        checkpointer.save(step, byol_experiment.unreplicate(state), metadata)

    started = time.perf_counter()
    scalars: dict[str, float] = {}
    last_saved = start_step if restored else None
    try:
        for step in range(start_step, training.max_steps):
            batch = first_batch if step == start_step else next(batches)
            state, device_scalars = experiment.update(state, step, batch)
            done = step + 1
            guard.push(done, device_scalars)
            log_now = done % training.log_every_steps == 0 or done == training.max_steps
            probe_every = config.evaluation.probe_every_steps
            probe_now = probe_every and done % probe_every == 0
            probe_now = probe_now and done < training.max_steps
            save_now = done % training.checkpoint_every_steps == 0
            save_now = save_now or done == training.max_steps
            try:
                # Reading a step's flag waits for that step only: the newest
                # keeps the device busy, unless its state is about to be used.
                guard.check(keep=0 if log_now or probe_now or save_now else 1)
            except FloatingPointError as error:
                kept = (
                    f"the last good checkpoint (step {last_saved}) is kept in "
                    f"{checkpointer.directory}"
                    if last_saved is not None
                    else "no checkpoint was written"
                )
                raise FloatingPointError(
                    f"{error}; {kept}; training.skip_nonfinite_updates=True "
                    "skips such updates instead"
                ) from None
            if log_now:
                scalars = byol_experiment.unreplicate(device_scalars)
                scalars = {k: float(v) for k, v in scalars.items() if k != "finite"}
                scalars["skipped_updates"] = float(guard.skipped)
                progress.update(done, scalars)
                metrics.write(done, scalars)
            if probe_now:
                result = run_probe(
                    config,
                    embed_fn(),
                    info.num_classes,
                    config.evaluation.probe_max_train_examples,
                )
                metrics.write(done, {"probe_top1": result.top1})
                if jax.process_index() == 0:
                    print(f"  probe at step {done}: top-1 {100 * result.top1:.1f}%")
            if save_now:
                save(done)
                last_saved = done
    finally:
        checkpointer.close()
        # Stops tf.data's threads now: an image-folder stream left to
        # interpreter exit can hang it.
        batches.close()
    train_seconds = time.perf_counter() - started
    if not scalars:
        # Restarted after the last checkpoint, before results.json: the last
        # step's scalars are in the log.
        rows = [r for r in metrics.history if "loss" in r]
        scalars = {k: v for k, v in rows[-1].items() if k != "step"} if rows else {}

    result = run_probe(
        config, embed_fn(), info.num_classes, config.evaluation.probe_max_train_examples
    )
    metrics.write(training.max_steps, {"probe_top1": result.top1})
    metrics.close()
    results = {
        "mode": "pretrain",
        "steps": training.max_steps,
        "train_seconds_this_run": train_seconds,
        "images_per_second": progress.images_per_second,
        "final_scalars": scalars,
        "skipped_updates": guard.skipped,
        "probe": result._asdict(),
        "config": config.to_dict(),
    }
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
        reporting.plot_training(
            metrics.history,
            os.path.join(workdir, "training.png"),
            f"{METHOD_NAMES[config.get('method', 'byol')]} {config.model.norm} "
            f"on {config.data.dataset}",
        )
    return results


def abstract_train_state(experiment, info, image_size: int):
    """One replica's `TrainState` as zeros of the right shapes, without compute.

    Args:
        experiment: a `ByolExperiment` or `SimclrExperiment`.
        info: the dataset's `DatasetInfo` (image shape, fixed size or JPEG).
        image_size: the side of JPEG datasets' crops.

    Returns:
        A host training state (`TrainState` / `SimclrState`) of zeros, e.g.
        to restore a checkpoint into.

    Example:
        >>> like = abstract_train_state(experiment, info, 28)  # doctest: +SKIP
    """
    devices = jax.local_device_count()
    shape = info.image_shape or (image_size, image_size, 3)
    images = jax.ShapeDtypeStruct((devices, 2, *shape), np.uint8)
    labels = jax.ShapeDtypeStruct((devices, 2), np.int32)
    names = ("images",) if info.fixed_size else ("view1", "view2")
    batch = {name: images for name in names}
    batch["labels"] = labels
    replicated = jax.eval_shape(experiment.init, jax.random.key(0), batch)
    return jax.tree.map(lambda x: np.zeros(x.shape[1:], x.dtype), replicated)


class NonFiniteGuard:
    """Reads the update's on-device `finite` flag of every step.

    The flag of step k is read while step k + 1 runs, so checking every step
    costs no device time. A non-finite step raises FloatingPointError naming
    it and its non-finite scalars, or, with `skip`, is counted (the update
    itself already left the state unchanged on the device).

    Example:
        >>> guard = NonFiniteGuard(skip=False)
        >>> guard.push(1, scalars)  # doctest: +SKIP
        >>> guard.check(keep=1)     # doctest: +SKIP
    """

    def __init__(self, skip: bool, skipped: int = 0):
        """Starts with `skipped` updates already skipped (from a checkpoint)."""
        self.skip = bool(skip)
        self.skipped = int(skipped)
        self._pending: collections.deque = collections.deque()

    def push(self, step: int, device_scalars: dict[str, Any]) -> None:
        """Queues the (replicated, on-device) scalars of the update `step`."""
        self._pending.append((step, device_scalars))

    def check(self, keep: int = 0) -> None:
        """Checks all queued steps but the newest `keep`, oldest first."""
        while len(self._pending) > keep:
            step, device_scalars = self._pending.popleft()
            if np.all(np.asarray(device_scalars["finite"])):
                continue
            values = byol_experiment.unreplicate(device_scalars)
            bad = sorted(
                k for k, v in values.items() if k != "finite" and not np.isfinite(v)
            )
            names = ", ".join(bad) or "scalars"
            if not self.skip:
                raise FloatingPointError(f"non-finite {names} at step {step}")
            self.skipped += 1
            logging.warning(
                "Skipped the update of step %d: non-finite %s (%d skipped so far)",
                step,
                names,
                self.skipped,
            )


def _skip_corrupt_images(config) -> bool:
    return bool(config.data.get("skip_corrupt_images", False))
