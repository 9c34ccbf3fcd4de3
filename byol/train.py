"""The pre-training job: data → pmapped BYOL (or SimCLR) step → logs, checkpoints.

`pretrain(config, workdir)` resumes from the newest checkpoint in `workdir`,
so a killed run restarted with the same command continues exactly where it
stopped; a corrupt newest checkpoint is set aside and the one before used.
Every step is checked for a non-finite loss, gradient or parameter norm: the
run stops there, or skips the update (`training.skip_nonfinite_updates`).
Every `evaluation.probe_every_steps` it logs the probe monitor (linear probe,
kNN, effective ranks: `byol.probe.monitor`); at the end (and, with
`evaluation.evaluate_at_start`, before step 1) the full suite
(`byol.probe.evaluate`).
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

from byol import (
    checkpointing,
    config_checks,
    distributed,
    parallel,
    probe,
    reporting,
    runtime,
)
from byol import run_dir as run_dirs
from byol.data import device, pipeline

METHOD_NAMES = {"byol": "BYOL", "simclr": "SimCLR"}  # as titles write them
RESULTS_FILE = "results.json"
START_FILE = "start_evaluation.json"  # the suite on the untrained network


class _Job(NamedTuple):
    """What every stage of a run reads."""

    config: ml_collections.ConfigDict
    workdir: str
    experiment: Any
    info: Any  # the dataset's DatasetInfo


def pretrain(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Pre-trains as `config` says; returns (and writes) `<workdir>/results.json`.

    Raises:
        ValueError: a bad config field, a dataset the evaluations cannot use,
            or a work directory of another run or in use by one.
        FileNotFoundError: a missing dataset.
        FloatingPointError: a non-finite update (unless skipped), naming its
            step and the checkpoint kept.
        checkpointing.CheckpointWriteError: a checkpoint could not be written.
    """
    config_checks.check_pretrain_config(config)
    run_dirs.writable_dir(workdir)
    info = run_dirs.dataset_info(config)
    _check_evaluations(config, info)
    with run_dirs.claimed(workdir):
        run_dirs.record_config(workdir, config)
        experiment = run_dirs.make_experiment(config, info.num_classes)
        return _run(_Job(config, workdir, experiment, info))


def _run(job: _Job) -> dict[str, Any]:
    """Finishes the run: resumes or starts it, trains, writes its results."""
    checkpointer = checkpointing.Checkpointer(
        job.workdir, job.config.training.max_checkpoints_to_keep
    )
    metrics = None
    try:
        try:
            finished = _finished_results(job, checkpointer)
            if finished is not None:
                return finished
            run = _restore_or_init(job, checkpointer)
            metrics = reporting.MetricsLog(job.workdir, run.start_step)
            start = _start_evaluation(job, run, metrics)
            with runtime.interrupts_at_step_ends():
                state, scalars, seconds, images_per_second = _train(
                    job, checkpointer, run, metrics
                )
        finally:
            checkpointer.close()
        summary = dict(
            train_seconds_this_run=seconds,
            images_per_second=images_per_second,
            final_scalars=scalars,
            skipped_updates=run.guard.skipped,
        )
        return _write_results(job, metrics, state, summary, start)
    finally:
        if metrics is not None:
            metrics.close()


def _check_evaluations(config, info) -> None:
    """Before step 1: the evaluations asked for have the splits they need."""
    evaluation = config.evaluation
    if not (evaluation.final_evaluation or evaluation.probe_every_steps):
        return
    off = "or set evaluation.final_evaluation=False and evaluation.probe_every_steps=0"
    if info.num_classes == 0:
        raise ValueError(
            f"data.dataset {config.data.dataset} has no labels, so it cannot be "
            f"probed; give it class folders, {off}"
        )
    for split in ("val", "test", "train_minus_val"):
        if not info.num_examples[split]:
            raise ValueError(
                f"data.dataset {config.data.dataset} has no {split} examples "
                f"(data.val_size {config.data.val_size}), which the probe needs; "
                + (
                    "put test images in a test/ folder, "
                    if split == "test"
                    else "set data.val_size > 0, "
                )
                + off
            )


def _finished_results(job: _Job, checkpointer) -> dict | None:
    """A finished run's results.json (nothing to train), or None."""
    latest = checkpointer.latest_step() or 0
    max_steps = job.config.training.max_steps
    if latest > max_steps:
        raise ValueError(
            f"training.max_steps {max_steps} is below step {latest} of the "
            f"newest checkpoint in {job.workdir}; use a new --workdir"
        )
    path = os.path.join(job.workdir, RESULTS_FILE)
    if latest != max_steps or not os.path.exists(path):
        return None
    # Re-saving the last step would fail: orbax refuses to overwrite.
    if jax.process_index() == 0:
        print(f"{job.workdir} holds a finished run; returning its {RESULTS_FILE}")
    with open(path) as f:
        return json.load(f)


class _Run(NamedTuple):
    state: Any  # replicated training state
    start_step: int
    batches: Any  # device batches from `start_step`
    guard: NonFiniteGuard


def _restore_or_init(job: _Job, checkpointer) -> _Run:
    """The state to start from: the newest readable checkpoint, or a fresh one."""
    config = job.config
    # Restored before the data stream starts: a corrupt newest checkpoint
    # makes the run resume from an older step.
    like = run_dirs.abstract_train_state(
        job.experiment, job.info, config.data.image_size
    )
    restored = checkpointer.restore_latest(like)
    start_step = restored.step if restored else 0
    per_device = config_checks.per_device_batch(config.training.batch_size)
    batch_dims = (jax.local_device_count(), per_device)
    batches = device.prefetch_to_device(
        pipeline.pretraining_batches(config, batch_dims, start_step), size=2
    )
    first = next(batches)
    distributed.barrier("byol_init")
    if restored:
        state = parallel.replicate(restored.state)
        if jax.process_index() == 0:
            print(f"Resumed from step {start_step} in {checkpointer.directory}")
    else:
        state = job.experiment.init(jax.random.key(config.seed), first)
    # Every process waits for the others before the first step's all-reduce:
    # gloo gives a late one only 30 s.
    distributed.barrier("byol_first_step")
    guard = NonFiniteGuard(
        skip=config.training.skip_nonfinite_updates,
        skipped=restored.metadata.get("skipped_updates", 0) if restored else 0,
        checkpoints=checkpointer.directory,
        last_saved=start_step if restored else None,
    )
    return _Run(state, start_step, _prepend(first, batches), guard)


def _prepend(first, rest):
    yield first
    yield from rest


def _features(job: _Job, state):
    """Frozen embedding and projection of the probe's splits (current network)."""
    params, net_state = parallel.local_replica(
        (state.online_params, state.online_state)
    )
    represent = lambda images: job.experiment.represent(params, net_state, images)  # noqa: E731
    return probe.probe_features(
        job.config, represent, job.config.evaluation.probe_max_train_examples
    )


def _start_evaluation(job: _Job, run: _Run, metrics) -> dict | None:
    """The suite on the untrained network (`evaluation.evaluate_at_start`), kept."""
    if not job.config.evaluation.evaluate_at_start:
        return None
    path = os.path.join(job.workdir, START_FILE)
    if os.path.exists(path):  # a resumed run: computed before its first step
        with open(path) as f:
            return json.load(f)
    if run.start_step:
        return None  # a run resumed from before the option was set
    feats = _features(job, run.state)
    start = probe.evaluate(feats, job.info.num_classes, job.config.seed)
    metrics.write(0, probe.monitor(feats, job.info.num_classes))
    if jax.process_index() == 0:
        _write_json(path, start)
        print(f"  at step 0: {_summary_line(start)}")
    return start


def _train(job: _Job, checkpointer, run: _Run, metrics):
    """Steps from `run.start_step` to the end; logs, probes and saves on the way.

    Returns the final state, the last logged scalars, the seconds trained and
    the last measured images/s.
    """
    config, training = job.config, job.config.training
    guard, state = run.guard, run.state
    progress = reporting.Progress(
        training.max_steps, run.start_step, training.batch_size
    )
    started, scalars = time.perf_counter(), {}
    try:
        steps = range(run.start_step, training.max_steps)
        for step, batch in zip(steps, run.batches, strict=False):
            state, device_scalars = job.experiment.update(state, step, batch)
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
                monitored = probe.monitor(_features(job, state), job.info.num_classes)
                metrics.write(done, monitored)
                if jax.process_index() == 0:
                    print(f"  probe at step {done}: {_monitor_line(monitored)}")
            if save_now:
                metadata = {
                    "seed": config.seed,
                    "dataset": config.data.dataset,
                    "skipped_updates": guard.skipped,
                }
                checkpointer.save(done, parallel.unreplicate(state), metadata)
                guard.last_saved = done
            runtime.raise_if_interrupted()
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


def _monitor_line(scalars: dict[str, float]) -> str:
    parts = [f"linear top-1 {100 * scalars['probe_top1']:.1f}%"]
    parts += [
        f"kNN-{k} {100 * scalars[f'knn{k}_top1']:.1f}%"
        for k in probe.KNN_K
        if f"knn{k}_top1" in scalars
    ]
    parts += [
        f"rank {name} {scalars[f'rank_{name}']:.1f}"
        for name in ("embedding", "projection")
        if f"rank_{name}" in scalars
    ]
    return ", ".join(parts)


def _summary_line(suite: dict) -> str:
    few = ", ".join(
        f"{name}-label {100 * r['top1_mean']:.1f} ± {100 * r['top1_std']:.1f}%"
        for name, r in suite["few_label"].items()
    )
    return (
        f"linear top-1 {100 * suite['linear']['top1']:.1f}%, kNN "
        f"{100 * suite['knn']['best_top1']:.1f}% (k {suite['knn']['k']}), {few}, "
        f"rank {suite['rank']['embedding']:.1f}"
    )


def _write_results(job: _Job, metrics, state, summary, start) -> dict[str, Any]:
    """The final suite; results.json and training.png (process 0)."""
    config = job.config
    results = {"mode": "pretrain", "steps": config.training.max_steps, **summary}
    if config.evaluation.final_evaluation:
        feats = _features(job, state)
        suite = probe.evaluate(feats, job.info.num_classes, config.seed)
        monitored = probe.monitor(feats, job.info.num_classes, suite["linear"])
        metrics.write(config.training.max_steps, monitored)
        results.update(probe=suite["linear"], evaluation=suite)
    if start is not None:
        results["start_evaluation"] = start
    results["config"] = config.to_dict()
    if jax.process_index() == 0:
        _write_json(os.path.join(job.workdir, RESULTS_FILE), results)
        reporting.plot_training(
            metrics.history,
            os.path.join(job.workdir, "training.png"),
            f"{METHOD_NAMES[config.method]} {config.model.norm} on "
            f"{config.data.dataset}",
        )
        final = _summary_line(results["evaluation"]) if "evaluation" in results else ""
        print(
            f"Pre-trained {config.training.max_steps} steps in {job.workdir}"
            + (f": {final}" if final else "")
        )
    return results


def _write_json(path: str, value) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=2)
    os.replace(path + ".tmp", path)


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
