"""The pre-training loop: data → pmapped BYOL step → logs, probes, checkpoints.

`pretrain(config, workdir)` resumes from the newest checkpoint in `workdir`
when there is one, so a killed run restarted with the same command continues
exactly where it stopped (same parameters as an uninterrupted run).
"""

from __future__ import annotations

import json
import os
import time
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
)


def replicate(tree: Any) -> Any:
    """Copies a host pytree onto every local device, ready for the pmapped step."""
    devices = jax.local_devices()
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
    )


def probe_features(
    config: ml_collections.ConfigDict,
    embed,
    max_train_examples: int | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Frozen features of the train (minus validation), validation and test splits."""
    return {
        "train": eval_experiment.extract_features(
            embed, _eval_batches(config, "train_minus_val"), max_train_examples
        ),
        "val": eval_experiment.extract_features(embed, _eval_batches(config, "val")),
        "test": eval_experiment.extract_features(embed, _eval_batches(config, "test")),
    }


def run_probe(config, embed, num_classes: int, max_train_examples=None):
    """The fast linear probe of `embed`'s features (see `linear_probe`)."""
    feats = probe_features(config, embed, max_train_examples)
    return eval_experiment.linear_probe(
        feats["train"], feats["val"], feats["test"], num_classes
    )


def pretrain(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Pre-trains BYOL as `config` says, checkpointing into `workdir`.

    Args:
        config: a full config (see configs/common.py).
        workdir: where checkpoints, logs, plots and `results.json` go.

    Returns:
        The results dictionary also written to `<workdir>/results.json`.
    """
    config_checks.check_pretrain_config(config)
    training = config.training
    info = data.dataset_info(
        config.data.dataset, config.data.data_dir, val_size=_val_size(config)
    )
    per_device_batch = config_checks.per_device_batch(training.batch_size)
    os.makedirs(workdir, exist_ok=True)
    config_checks.check_workdir(workdir, config)

    experiment = byol_experiment.ByolExperiment(config, info.num_classes)
    checkpointer = checkpointing.Checkpointer(workdir, training.max_checkpoints_to_keep)
    start_step = checkpointer.latest_step() or 0
    if start_step > training.max_steps:
        checkpointer.close()
        raise ValueError(
            f"training.max_steps {training.max_steps} is below step {start_step} "
            f"of the newest checkpoint in {workdir}; use a new --workdir"
        )
    results_path = os.path.join(workdir, "results.json")
    if start_step == training.max_steps and os.path.exists(results_path):
        # A finished run restarted: nothing to train, and re-saving the last
        # step would fail (orbax refuses to overwrite a checkpoint).
        checkpointer.close()
        print(f"{workdir} holds a finished run; returning its results.json")
        with open(results_path) as f:
            return json.load(f)
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
    )
    batches = data.prefetch_to_device(batches, size=2)
    first_batch = next(batches)
    state = experiment.init(jax.random.key(config.seed), first_batch)
    if start_step:
        restored, _ = checkpointer.restore(
            start_step, byol_experiment.unreplicate(state)
        )
        state = replicate(restored)
        print(f"Resumed from step {start_step} in {checkpointer.directory}")

    metadata = {"seed": config.seed, "dataset": config.data.dataset}
    metrics = reporting.MetricsLog(workdir, start_step)
    progress = reporting.Progress(training.max_steps, start_step, training.batch_size)
    embed = lambda images: experiment.embed(  # noqa: E731
        jax.tree.map(lambda x: x[0], state.online_params),
        jax.tree.map(lambda x: x[0], state.online_state),
        images,
    )
    started = time.perf_counter()
    scalars: dict[str, float] = {}
    for step in range(start_step, training.max_steps):
        batch = first_batch if step == start_step else next(batches)
        state, device_scalars = experiment.update(state, step, batch)
        done = step + 1
        if done % training.log_every_steps == 0 or done == training.max_steps:
            scalars = byol_experiment.unreplicate(device_scalars)
            scalars = {k: float(v) for k, v in scalars.items()}
            _check_finite(done, scalars)
            progress.update(done, scalars)
            metrics.write(done, scalars)
        probe_every = config.evaluation.probe_every_steps
        if probe_every and done % probe_every == 0 and done < training.max_steps:
            result = run_probe(
                config,
                embed,
                info.num_classes,
                config.evaluation.probe_max_train_examples,
            )
            metrics.write(done, {"probe_top1": result.top1})
            print(f"  probe at step {done}: top-1 {100 * result.top1:.1f}%")
        if done % training.checkpoint_every_steps == 0 and done < training.max_steps:
            checkpointer.save(done, byol_experiment.unreplicate(state), metadata)
    if start_step < training.max_steps:
        checkpointer.save(
            training.max_steps, byol_experiment.unreplicate(state), metadata
        )
    checkpointer.close()
    train_seconds = time.perf_counter() - started

    result = run_probe(
        config, embed, info.num_classes, config.evaluation.probe_max_train_examples
    )
    metrics.write(training.max_steps, {"probe_top1": result.top1})
    results = {
        "mode": "pretrain",
        "steps": training.max_steps,
        "train_seconds_this_run": train_seconds,
        "images_per_second": progress.images_per_second,
        "final_scalars": scalars,
        "probe": result._asdict(),
        "config": config.to_dict(),
    }
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
        reporting.plot_training(
            metrics.history,
            os.path.join(workdir, "training.png"),
            f"BYOL {config.model.norm} on {config.data.dataset}",
        )
    return results


def _check_finite(step: int, scalars: dict[str, float]) -> None:
    bad = [k for k, v in scalars.items() if not np.isfinite(v)]
    if bad:
        raise FloatingPointError(
            f"non-finite {', '.join(bad)} at step {step}; the last checkpoint "
            "before it is kept in the work directory"
        )
