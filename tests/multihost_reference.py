r"""The single-process run that a 2-process `python -m byol.main` must reproduce.

    python tests/multihost_reference.py --cpu_devices=4 --workdir=DIR \
        --config=configs/fashion_mnist.py:gn_ws [--config.x=y ...]

One process with 4 CPU devices trains the config, as `byol.train.pretrain`
does, on the global batches of a run of 2 processes x 2 devices: process p's
batch (`byol.data.load` with process_index=p, process_count=2) goes to devices
2p and 2p + 1, which is where the 2-process run's pmap puts it. The final state
is saved as checkpoint `max_steps` of DIR (no probe, logs or results).
"""

import sys

import jax
import numpy as np
from absl import flags

from byol import main as byol_main
from byol import runtime

PROCESSES = 2


def run(config, workdir: str) -> None:
    """Trains `config` for `max_steps` on the 2-process run's global batches."""
    from byol import (  # noqa: PLC0415  (after the XLA flags)
        byol_experiment,
        checkpointing,
        config_checks,
        parallel,
    )
    from byol.data import pipeline  # noqa: PLC0415

    config_checks.check_pretrain_config(config)
    info = pipeline.dataset_info(config.data.dataset, config.data.data_dir, val_size=50)
    local_devices = jax.device_count() // PROCESSES
    per_device = config_checks.per_device_batch(config.training.batch_size)
    streams = [
        pipeline.load(
            config.data.dataset,
            "train",
            is_training=True,
            batch_dims=(local_devices, per_device),
            image_size=config.data.image_size,
            data_dir=config.data.data_dir,
            seed=config.seed,
            process_index=p,
            process_count=PROCESSES,
        )
        for p in range(PROCESSES)
    ]
    experiment = byol_experiment.ByolExperiment(config, info.num_classes)
    state = None
    for step in range(config.training.max_steps):
        parts = [next(stream) for stream in streams]
        batch = jax.tree.map(lambda *xs: np.concatenate(xs), *parts)
        if state is None:
            state = experiment.init(jax.random.key(config.seed), batch)
        state, _ = experiment.update(state, step, batch)
    checkpointer = checkpointing.Checkpointer(workdir)
    checkpointer.save(config.training.max_steps, parallel.unreplicate(state), {})
    checkpointer.close()


if __name__ == "__main__":
    byol_main.parse_flags(sys.argv)
    runtime.set_cpu_flags(flags.FLAGS.cpu_devices)
    run(flags.FLAGS.config, flags.FLAGS.workdir)
