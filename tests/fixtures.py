"""Shared test helpers: a tiny fake Fashion-MNIST, tiny configs, child runs."""

import gzip
import os

import numpy as np


def write_idx(path, array):
    """Writes an unsigned-byte IDX file (magic 0x0000080N, big-endian dims)."""
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_fake_fashion_mnist(data_dir, num_train=300, num_test=70, seed=0):
    """Writes random 28x28 images and labels as the four Fashion-MNIST IDX files.

    They go where `byol.data` looks for them (`<data_dir>/downloads/manual/
    fashion_mnist`); the first `byol.data.load` builds the tfds dataset.

    Args:
        data_dir: the data directory (created if needed).
        num_train: examples of the train split.
        num_test: examples of the test split.
        seed: numpy seed of the images and labels.

    Returns:
        `{"train": (images, labels), "test": (images, labels)}`, uint8 arrays
        as written ([N, 28, 28] and [N]).
    """
    from byol.data import fashion_mnist  # noqa: PLC0415  (imports TensorFlow)

    idx_dir = fashion_mnist.manual_dir(str(data_dir))
    os.makedirs(idx_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, prefix, n in (("train", "train", num_train), ("test", "t10k", num_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(os.path.join(idx_dir, f"{prefix}-images-idx3-ubyte.gz"), images)
        write_idx(os.path.join(idx_dir, f"{prefix}-labels-idx1-ubyte.gz"), labels)
        arrays[split] = (images, labels)
    return arrays


def tiny_config(data_dir, norm="gn_ws", **training):
    """A Fashion-MNIST config small enough to compile and run in seconds.

    TinyResNet 1x (small-image stem) with 4 GN groups (its widths are 8-64), 32/16
    heads, batch 16, a few steps; `training` overrides `config.training` fields.
    """
    from configs import fashion_mnist  # noqa: PLC0415

    config = fashion_mnist.get_config(norm)
    config.data.data_dir = str(data_dir)
    config.data.num_threads = 1
    config.data.val_size = 50  # read by byol.train (the catalogue's is 10,000)
    config.model.width_multiplier = 1
    config.model.num_groups = 4
    config.model.projector_hidden_size = 32
    config.model.projection_size = 16
    config.model.predictor_hidden_size = 32
    config.training.update(
        dict(
            batch_size=16,
            max_steps=4,
            warmup_steps=1,
            base_target_ema=0.99,
            log_every_steps=1,
            checkpoint_every_steps=100,
            max_checkpoints_to_keep=2,
        )
    )
    config.training.update(training)
    config.evaluation.probe_every_steps = 0
    config.evaluation.probe_max_train_examples = 200
    return config


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_cli_flags(data_dir, **training):
    """`tiny_config(data_dir, **training)` as `python -m byol.main` flags.

    `--config` first, then one override per field that differs from the
    Fashion-MNIST GN+WS config.
    """
    from configs import fashion_mnist  # noqa: PLC0415

    base = fashion_mnist.get_config("gn_ws").to_dict()
    flags = ["--config=configs/fashion_mnist.py:gn_ws"]
    for section, fields in tiny_config(data_dir, **training).to_dict().items():
        if isinstance(fields, dict):
            flags += [
                f"--config.{section}.{name}={value}"
                for name, value in fields.items()
                if value != base[section][name]
            ]
    return tuple(flags)


def child_env(cache_dir, **variables):
    """The environment of a `byol.main` child process started from the repo.

    Its output is unbuffered (logs survive a kill) and compiled programs are
    shared through a persistent XLA cache in `cache_dir`, so only the first
    child pays for compiling.
    """
    return dict(
        os.environ,
        PYTHONPATH=REPO,
        PYTHONUNBUFFERED="1",
        JAX_COMPILATION_CACHE_DIR=str(cache_dir),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
        **variables,
    )


def read_text(path):
    with open(path) as f:
        return f.read()


def checkpointed_state(workdir, step):
    """The training state saved at `step` in `workdir`, as host arrays."""
    import orbax.checkpoint as ocp  # noqa: PLC0415

    path = os.path.join(workdir, "checkpoints", str(step), "state")
    return ocp.PyTreeCheckpointer().restore(path)
