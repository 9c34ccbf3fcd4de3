"""The pre-training job: data → pmapped BYOL (or SimCLR) step → logs, checkpoints.

`pretrain(config, workdir)` resumes from the newest checkpoint in `workdir`,
so a killed run restarted with the same command continues exactly where it
stopped; a corrupt newest checkpoint is set aside and the one before used.
Every step is checked for a non-finite loss, gradient or parameter norm: the
run stops there, or skips the update (`training.skip_nonfinite_updates`).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import time
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np

from byol import checkpointing, config_checks, parallel, probe, reporting
from byol import run_dir as run_dirs
from byol.data import device, pipeline

METHOD_NAMES = {"byol": "BYOL", "simclr": "SimCLR"}  # as titles write them
RESULTS_FILE = "results.json"


def pretrain(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Pre-trains as `config` says; returns (and writes) `<workdir>/results.json`.

    Raises:
        ValueError: a bad config field, or a work directory of another run.
        FileNotFoundError: a missing dataset.
        FloatingPointError: a non-finite update (unless skipped), naming its
            step and the checkpoint kept.
        checkpointing.CheckpointWriteError: a checkpoint could not be written.
    """
    config_checks.check_pretrain_config(config)
    info = run_dirs.dataset_info(config)
    os.makedirs(workdir, exist_ok=True)
    run_dirs.record_config(workdir, config)
    experiment = run_dirs.make_experiment(config, info.num_classes)
    checkpointer = checkpointing.Checkpointer(
        workdir, config.training.max_checkpoints_to_keep
    )
    metrics = None
    try:
        try:
            finished = _finished_results(config, workdir, checkpointer)
            if finished is not None:
                return finished
            run = _restore_or_init(config, experiment, info, checkpointer)
            metrics = reporting.MetricsLog(workdir, run.start_step)
            state, scalars, seconds, images_per_second = _train(
                config, experiment, info, checkpointer, run, metrics
            )
        finally:
            checkpointer.close()
        return _write_results(
            config,
            experiment,
            info,
            workdir,
            metrics,
            state,
            scalars,
            seconds,
            images_per_second,
            run.guard.skipped,
        )
    finally:
        if metrics is not None:
            metrics.close()


def _finished_results(config, workdir, checkpointer) -> dict | None:
    """A finished run's results.json (nothing to train), or None."""
    latest = checkpointer.latest_step() or 0
    max_steps = config.training.max_steps
    if latest > max_steps:
        raise ValueError(
            f"training.max_steps {max_steps} is below step {latest} of the "
            f"newest checkpoint in {workdir}; use a new --workdir"
        )
    path = os.path.join(workdir, RESULTS_FILE)
    if latest != max_steps or not os.path.exists(path):
        return None
    # Re-saving the last step would fail: orbax refuses to overwrite.
    if jax.process_index() == 0:
        print(f"{workdir} holds a finished run; returning its {RESULTS_FILE}")
    with open(path) as f:
        return json.load(f)


class _Run(NamedTuple):
    state: Any  # replicated training state
    start_step: int
    batches: Any  # device batches from `start_step`
    guard: NonFiniteGuard
    last_saved: int | None


def _restore_or_init(config, experiment, info, checkpointer) -> _Run:
    """The state to start from (the newest readable checkpoint, or fresh)."""
    # Restored before the data stream starts: a corrupt newest checkpoint
    # makes the run resume from an older step.
    like = run_dirs.abstract_train_state(experiment, info, config.data.image_size)
    restored = checkpointer.restore_latest(like)
    start_step = restored.step if restored else 0
    batches = device.prefetch_to_device(_train_batches(config, start_step), size=2)
    first = next(batches)
    if restored:
        state = parallel.replicate(restored.state)
        if jax.process_index() == 0:
            print(f"Resumed from step {start_step} in {checkpointer.directory}")
    else:
        state = experiment.init(jax.random.key(config.seed), first)
    guard = NonFiniteGuard(
        skip=config.training.skip_nonfinite_updates,
        skipped=restored.metadata.get("skipped_updates", 0) if restored else 0,
        checkpoints=checkpointer.directory,
        last_saved=start_step if restored else None,
    )
    return _Run(state, start_step, _prepend(first, batches), guard, guard.last_saved)


def _prepend(first, rest):
    yield first
    yield from rest


def _train_batches(config, start_step: int):
    return pipeline.load(
        config.data.dataset,
        "train",
        is_training=True,
        batch_dims=(
            jax.local_device_count(),
            config_checks.per_device_batch(config.training.batch_size),
        ),
        image_size=config.data.image_size,
        data_dir=config.data.data_dir,
        seed=config.seed,
        start_step=start_step,
        num_threads=config.data.num_threads,
        skip_bad_images=config.data.skip_corrupt_images,
    )


def _embed_fn(experiment, state):
    """`embed` with the current online network (this process's first replica)."""
    params, net_state = parallel.local_replica(
        (state.online_params, state.online_state)
    )
    return lambda images: experiment.embed(params, net_state, images)


def _train(config, experiment, info, checkpointer, run: _Run, metrics):
    """Steps from `run.start_step` to the end; logs, probes and saves on the way.

    Returns the final state, the last logged scalars, the seconds trained and
    the last measured images/s.
    """
    training, guard, state = config.training, run.guard, run.state
    progress = reporting.Progress(
        training.max_steps, run.start_step, training.batch_size
    )
    started, scalars = time.perf_counter(), {}
    try:
        steps = range(run.start_step, training.max_steps)
        for step, batch in zip(steps, run.batches, strict=False):
            state, device_scalars = experiment.update(state, step, batch)
            done = step + 1
            guard.push(done, device_scalars)
            last = done == training.max_steps
            log_now = done % training.log_every_steps == 0 or last
            probe_every = config.evaluation.probe_every_steps
            probe_now = bool(probe_every) and done % probe_every == 0 and not last
            save_now = done % training.checkpoint_every_steps == 0 or last
            # Reading a step's flag waits for that step: the newest keeps the
            # device busy unless its state is about to be used.
            guard.check(keep=0 if log_now or probe_now or save_now else 1)
            if log_now:
                scalars = parallel.unreplicate(device_scalars)
                scalars = {k: float(v) for k, v in scalars.items() if k != "finite"}
                scalars["skipped_updates"] = float(guard.skipped)
                progress.update(done, scalars)
                metrics.write(done, scalars)
            if probe_now:
                result = _probe(config, experiment, info, state)
                metrics.write(done, {"probe_top1": result.top1})
                if jax.process_index() == 0:
                    print(f"  probe at step {done}: top-1 {100 * result.top1:.1f}%")
            if save_now:
                metadata = {
                    "seed": config.seed,
                    "dataset": config.data.dataset,
                    "skipped_updates": guard.skipped,
                }
                checkpointer.save(done, parallel.unreplicate(state), metadata)
                guard.last_saved = done
    finally:
        # Stops tf.data's threads now: a stream left to interpreter exit can
        # hang it.
        run.batches.close()
    if not scalars:
        # Restarted after the last checkpoint, before results.json: the last
        # step's scalars are in the log.
        rows = [r for r in metrics.history if "loss" in r]
        scalars = {k: v for k, v in rows[-1].items() if k != "step"} if rows else {}
    return state, scalars, time.perf_counter() - started, progress.images_per_second


def _probe(config, experiment, info, state) -> probe.ProbeResult:
    return probe.run_probe(
        config,
        _embed_fn(experiment, state),
        info.num_classes,
        config.evaluation.probe_max_train_examples,
    )


def _write_results(
    config,
    experiment,
    info,
    workdir,
    metrics,
    state,
    scalars,
    seconds,
    images_per_second,
    skipped,
) -> dict[str, Any]:
    """The final probe; results.json and training.png (process 0)."""
    result = _probe(config, experiment, info, state)
    metrics.write(config.training.max_steps, {"probe_top1": result.top1})
    results = {
        "mode": "pretrain",
        "steps": config.training.max_steps,
        "train_seconds_this_run": seconds,
        "images_per_second": images_per_second,
        "final_scalars": scalars,
        "skipped_updates": skipped,
        "probe": result._asdict(),
        "config": config.to_dict(),
    }
    if jax.process_index() == 0:
        with open(os.path.join(workdir, RESULTS_FILE), "w") as f:
            json.dump(results, f, indent=2)
        reporting.plot_training(
            metrics.history,
            os.path.join(workdir, "training.png"),
            f"{METHOD_NAMES[config.method]} {config.model.norm} on "
            f"{config.data.dataset}",
        )
    return results


class NonFiniteGuard:
    """Reads the update's on-device `finite` flag of every step.

    The flag of step k is read while step k + 1 runs, so checking every step
    costs no device time. A non-finite step raises FloatingPointError naming
    it, its non-finite scalars and the checkpoint kept, or, with `skip`, is
    counted (the update already left the state unchanged on the device).
    """

    def __init__(self, skip, skipped=0, checkpoints="", last_saved=None):
        self.skip = bool(skip)
        self.skipped = int(skipped)
        self.checkpoints = checkpoints
        self.last_saved = last_saved
        self._pending: collections.deque = collections.deque()

    def push(self, step: int, device_scalars: dict[str, Any]) -> None:
        """Queues the (replicated, on-device) scalars of update `step`."""
        self._pending.append((step, device_scalars))

    def check(self, keep: int = 0) -> None:
        """Checks all queued steps but the newest `keep`, oldest first."""
        while len(self._pending) > keep:
            step, device_scalars = self._pending.popleft()
            if np.all(np.asarray(device_scalars["finite"])):
                continue
            values = parallel.unreplicate(device_scalars)
            bad = sorted(
                k for k, v in values.items() if k != "finite" and not np.isfinite(v)
            )
            names = ", ".join(bad) or "scalars"
            if not self.skip:
                raise FloatingPointError(
                    f"non-finite {names} at step {step}; {self._kept()}; "
                    "training.skip_nonfinite_updates=True skips such updates instead"
                )
            self.skipped += 1
            logging.warning(
                "Skipped the update of step %d: non-finite %s (%d skipped so far)",
                step,
                names,
                self.skipped,
            )

    def _kept(self) -> str:
        if self.last_saved is None:
            return "no checkpoint was written"
        return (
            f"the last good checkpoint (step {self.last_saved}) is kept in "
            f"{self.checkpoints}"
        )
