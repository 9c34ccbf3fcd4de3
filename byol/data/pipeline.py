"""`load`: batches of a dataset split for a pmapped step, resumable at any step.

Batch ``k`` is a pure function of (dataset, split, seed, process index and
count, batch size, k), computed by `sampling`. Resuming with ``start_step=k``
computes the indices of batch ``k`` directly: nothing earlier is read or
decoded, whatever the dataset's size. The only cost is drawing the epoch's
permutation, about 40 ns per example of the process's shard (50 ms for all of
ImageNet on one host), the same as at any epoch start.

Two kinds of dataset:

* fixed-size (fashion_mnist, cifar10/100, stl10): the process's shard is read
  into memory once (uint8; stl10's 105k 96x96 images take 2.9 GB, cifar 150 MB)
  and batches are numpy gathers: no TensorFlow in the loop. Images go to the
  device raw, ``{'images': [D, B, H, W, C], 'labels': [D, B]}``, and all
  cropping happens there.
* JPEG (imagenet2012, imagenette, image folders): records are read by index
  (tfds ArrayRecord, or files), decoded fused with the crop by tf.data on a
  private thread pool and resized (bicubic) to ``image_size``. Pre-training
  batches hold two crops ``{'view1', 'view2', 'labels'}``; ``two_views=False``
  gives one, ``{'images', 'labels'}``. Crops use stateless RNG seeded by
  (seed, process, stream position).

Evaluation (``is_training=False``): one pass over the process's shard in order,
the last batch padded; ``mask`` (bool [D, B]) is False on padding (whose label
is -1), and every process yields the same number of batches. JPEG datasets are
centre-cropped (224/256 of the short side) and resized.
"""

from __future__ import annotations

import functools
import gc
import itertools
import logging
import math
import os
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np

from byol.data import catalog, sampling, sources


class DatasetInfo(NamedTuple):
    """What a model needs to know about a dataset.

    Attributes:
      num_examples: examples per split name of `catalog.SPLITS` (``test`` is 0
        for an image folder without one).
      num_classes: number of classes (0 for an unlabelled image folder).
      image_shape: ``(H, W, C)`` of fixed-size datasets, None for JPEG ones
        (whose size is ``image_size``, 3 channels).
      fixed_size: whether the device receives raw images and does the crops.
      num_unlabelled: examples with label -1 in ``train`` (stl10: 100,000).
    """

    num_examples: dict[str, int]
    num_classes: int
    image_shape: tuple[int, int, int] | None
    fixed_size: bool
    num_unlabelled: int = 0


def _data_dir(data_dir: str | None) -> str:
    return os.fspath(data_dir) if data_dir is not None else catalog.DEFAULT_DATA_DIR


def dataset_info(
    dataset: str,
    data_dir: str | None = None,
    val_size: int | None = None,
    skip_bad_images: bool = False,
) -> DatasetInfo:
    """Returns split sizes, classes and image shape of a dataset.

    Args:
      dataset: a name of `DATASETS` or ``image_folder:/path``.
      data_dir: tfds data directory (default ``data``).
      val_size: examples held out as ``val`` (default: see `catalog`).
      skip_bad_images: image folders: count without the files `load` skips.

    Returns:
      The `DatasetInfo`.

    Raises:
      DatasetNotFoundError: if the dataset is not available (message says how
        to get it).

    Example:
      >>> info = dataset_info('fashion_mnist')  # doctest: +SKIP
      >>> info.num_examples['train_minus_val'], info.image_shape  # doctest: +SKIP
      (50000, (28, 28, 1))
    """
    backend = sources.open_dataset(dataset, _data_dir(data_dir), skip_bad_images)
    train = sources.SplitSource(backend, "train")
    counts = {}
    for split in catalog.SPLITS:
        try:
            source = sources.SplitSource(backend, split, val_size=val_size)
            counts[split] = source.num_examples
        except sources.DatasetNotFoundError:
            if split != "test":
                raise
            counts[split] = 0  # An image folder without a test/ subfolder.
    labelled = sources.SplitSource(backend, "train", labelled_only=True)
    return DatasetInfo(
        num_examples=counts,
        num_classes=train.num_classes,
        image_shape=train.image_shape,
        fixed_size=train.fixed_size,
        num_unlabelled=train.num_examples - labelled.num_examples,
    )


def default_num_threads() -> int:
    """Host decoding threads by default: all usable cores but one (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # Not on Linux.
        cores = os.cpu_count() or 2
    return max(1, cores - 1)


def load(
    dataset: str,
    split: str,
    *,
    is_training: bool,
    batch_dims: Sequence[int],
    image_size: int | None = None,
    data_dir: str | None = None,
    seed: int = 0,
    start_step: int = 0,
    two_views: bool = True,
    labelled_only: bool = False,
    process_index: int | None = None,
    process_count: int | None = None,
    num_threads: int | None = None,
    ram_budget_mb: int = 1024,
    skip_bad_images: bool = False,
    eval_crop_fraction: float = 224 / 256,
    val_size: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Yields numpy batches of a split, shaped ``[*batch_dims, ...]``.

    Args:
      dataset: a name of `DATASETS` (tfds config/version suffix allowed, e.g.
        ``'imagenette/160px-v2'``) or ``image_folder:/path/to/dir``.
      split: ``train``, ``train_minus_val``, ``val`` or ``test``.
      is_training: True: shuffled, endless, random crops (JPEG datasets).
        False: one ordered pass, padded, with ``mask``.
      batch_dims: e.g. ``[jax.local_device_count(), per_device_batch]``.
      image_size: output side of host crops; required for JPEG datasets,
        ignored for fixed-size ones (the device crops those).
      data_dir: tfds data directory (default ``data``).
      seed: non-negative seed of the shuffles and crops.
      start_step: batches already consumed: the iterator starts with the batch
        a fresh one would yield after `start_step` batches.
      two_views: JPEG training: two independent crops (``view1``, ``view2``)
        for pre-training, or one (``images``) for linear evaluation.
      labelled_only: drop examples without labels (stl10's unlabelled split).
      process_index: this process (default `jax.process_index()`).
      process_count: number of processes (default `jax.process_count()`).
      num_threads: host decoding threads for JPEG datasets (default
        `default_num_threads`); fixed-size datasets use none.
      ram_budget_mb: tf.data autotune RAM budget (JPEG datasets).
      skip_bad_images: image folders: leave out files that are not usable
        images with a warning instead of raising: at load time those that
        cannot be read, are not images or are truncated; in the stream, one
        that fails to decode is replaced by another example of its batch
        (training) or masked out (evaluation), the same at every resume.
      eval_crop_fraction: evaluation centre-crop side / short image side.
      val_size: examples held out of the labelled train split as ``val``
        (default: see `catalog`).

    Returns:
      An iterator of dicts of numpy arrays: ``images`` or ``view1``/``view2``
      (uint8 ``[*batch_dims, H, W, C]``), ``labels`` (int32 ``batch_dims``,
      -1 when unknown) and, for evaluation, ``mask`` (bool ``batch_dims``).

    Raises:
      ValueError: for bad arguments, or an image file that cannot be decoded
        (naming it; unless `skip_bad_images`).
      DatasetNotFoundError: if the dataset is missing (the message says how to
        get it).

    Example:
      >>> it = load('fashion_mnist', 'train', is_training=True,
      ...           batch_dims=[2, 128])  # doctest: +SKIP
      >>> next(it)['images'].shape  # doctest: +SKIP
      (2, 128, 28, 28, 1)
    """
    batch_dims = tuple(int(d) for d in batch_dims)
    if not batch_dims or min(batch_dims) < 1:
        raise ValueError(f"batch_dims {batch_dims} must be non-empty and positive")
    if start_step < 0:
        raise ValueError(f"start_step {start_step} must be >= 0")
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    catalog.check_split(split)
    backend = sources.open_dataset(dataset, _data_dir(data_dir), skip_bad_images)
    source = sources.SplitSource(
        backend, split, labelled_only=labelled_only, val_size=val_size
    )
    if source.num_examples == 0:
        raise ValueError(f"split {split!r} of {dataset} is empty")
    if not source.fixed_size and not image_size:
        raise ValueError(f"image_size must be set for {dataset} (host-side crops)")
    batch = math.prod(batch_dims)
    start, end = sampling.shard_bounds(
        source.num_examples, process_index, process_count
    )
    if is_training:
        order = sampling.TrainOrder(end - start, batch, seed, process_index)
        stop = None

        def plan(step):
            return start + order.indices(step), None, order.positions(step)

    else:
        stop = sampling.eval_num_batches(source.num_examples, process_count, batch)
        pad_index = start if end > start else 0  # Any valid example; masked.

        def plan(step):
            local, mask = sampling.eval_indices(end - start, batch, step)
            return np.where(mask, start + local, pad_index), mask, None

    if source.fixed_size:
        batches = _array_batches(
            source, start, end, plan, _steps(start_step, stop), is_training
        )
    else:
        batches = _decoded_batches(
            source,
            plan,
            start_step,
            functools.partial(_steps, stop=stop),
            batch=batch,
            is_training=is_training,
            image_size=image_size,
            two_views=two_views,
            seed=seed,
            process_index=process_index,
            num_threads=num_threads or default_num_threads(),
            ram_budget_mb=ram_budget_mb,
            eval_crop_fraction=eval_crop_fraction,
            skip_bad_images=skip_bad_images,
        )
    return (_shape(b, batch_dims) for b in batches)


def _steps(first: int, stop: int | None) -> Iterator[int]:
    return itertools.count(first) if stop is None else iter(range(first, stop))


def _shape(batch: dict[str, np.ndarray], batch_dims) -> dict[str, np.ndarray]:
    return {k: v.reshape(batch_dims + v.shape[1:]) for k, v in batch.items()}


def _array_batches(source, start, end, plan, steps, is_training):
    """Batches of a fixed-size dataset: gathers from the in-memory shard."""
    # A process with an empty shard (more processes than examples) still yields
    # padded evaluation batches, of example 0.
    lo, hi = (start, end) if end > start else (0, 1)
    images, labels = source.read_arrays(lo, hi)
    for step in steps:
        indices, mask, _ = plan(step)
        local = indices - lo
        out = {"images": images[local], "labels": labels[local]}
        if not is_training:
            out["labels"] = np.where(mask, out["labels"], -1).astype(np.int32)
            out["mask"] = mask
        yield out


def _decoded_batches(
    source,
    plan,
    start_step,
    make_steps,
    *,
    batch,
    is_training,
    image_size,
    two_views,
    seed,
    process_index,
    num_threads,
    ram_budget_mb,
    eval_crop_fraction,
    skip_bad_images,
):
    """Batches of a JPEG dataset: tf.data decodes and crops on the host."""
    import tensorflow as tf

    from byol.data import preprocess

    _hide_accelerators_from_tf()
    undecodable: set[int] = set()  # example indices found not to decode

    def generate(first_step, skip):  # Runs on a tf.data thread.
        for step in make_steps(first_step):
            indices, mask, positions = plan(step)
            if skip:
                indices, mask = _replace_undecodable(indices, mask, skip)
            if mask is None:
                mask = np.ones(len(indices), bool)
                seeds = sampling.example_seeds(seed, process_index, positions)
            else:
                seeds = np.zeros((len(indices), 2), np.int64)
            payloads, labels = source.read_encoded(indices)
            yield {
                "payload": np.array(payloads, dtype=object),
                "labels": np.where(mask, labels, -1).astype(np.int32),
                "seed": seeds,
                "mask": mask,
            }

    signature = {
        "payload": tf.TensorSpec([None], tf.string),
        "labels": tf.TensorSpec([None], tf.int32),
        "seed": tf.TensorSpec([None, 2], tf.int64),
        "mask": tf.TensorSpec([None], tf.bool),
    }

    def process(example):
        encoded = example["payload"]
        if source.is_path:
            encoded = tf.io.read_file(encoded)
        out = {"labels": example["labels"]}
        if is_training:
            num_views = 2 if two_views else 1
            views = preprocess.random_views(
                encoded, example["seed"], image_size, num_views
            )
            names = ("view1", "view2") if two_views else ("images",)
            out.update(zip(names, views, strict=True))
        else:
            out["images"] = preprocess.center_view(
                encoded, image_size, eval_crop_fraction
            )
            out["mask"] = example["mask"]
        return out

    def stream(first_step):
        skip = frozenset(undecodable)
        ds = tf.data.Dataset.from_generator(
            lambda: generate(first_step, skip), output_signature=signature
        )
        ds = ds.unbatch()
        ds = ds.map(process, num_parallel_calls=num_threads, deterministic=True)
        ds = ds.batch(batch, drop_remainder=True)
        ds = ds.prefetch(2)
        options = tf.data.Options()
        options.deterministic = True
        options.threading.private_threadpool_size = num_threads
        options.threading.max_intra_op_parallelism = 1
        options.autotune.ram_budget = int(ram_budget_mb) * 2**20
        return ds.with_options(options).as_numpy_iterator()

    iterator = stream(start_step)
    for step in make_steps(start_step):
        while True:
            try:
                out = next(iterator)
                break
            except StopIteration:
                return
            except tf.errors.OpError as error:
                # Every culprit of the batch at once, so that the batch comes
                # out the same whenever the run finds them (resumed or not).
                culprits = _find_undecodable(source, plan(step)[0])
                if not culprits or undecodable.issuperset(culprits):
                    raise
                if not skip_bad_images:
                    raise ValueError(
                        next(iter(culprits.values()))
                        + "; remove it or set data.skip_corrupt_images=True to "
                        "leave such files out"
                    ) from error
                for index, message in culprits.items():
                    logging.warning("Skipping %s.", message)
                    undecodable.add(index)
            # The stream again from this batch, once the errored one is freed
            # (its error's frames held it): tf.data iterators left to
            # interpreter exit can hang it.
            iterator = None
            gc.collect()
            iterator = stream(step)
        yield out


def _replace_undecodable(indices, mask, undecodable):
    """Stands other examples of the batch in for undecodable ones.

    Training (`mask` None): each undecodable example is replaced by the next
    decodable one of its batch. Evaluation: it is masked out (and a decodable
    one decoded in its place, to keep the batch's shape).
    """
    bad = np.array([int(i) in undecodable for i in indices])
    if not bad.any():
        return indices, mask
    good = np.nonzero(~bad)[0]
    if not len(good):
        raise ValueError(
            f"every example of a batch fails to decode (indices {list(indices)})"
        )
    later = np.searchsorted(good, np.arange(len(indices))) % len(good)
    indices = np.where(bad, indices[good[later]], indices)
    if mask is not None:
        mask = mask & ~bad
    return indices, mask


def _find_undecodable(source, indices) -> dict[int, str]:
    """The examples of `indices` that fail to decode, each with a message."""
    import tensorflow as tf

    found = {}
    for index in dict.fromkeys(int(i) for i in indices):
        (payload,), _ = source.read_encoded(np.array([index]))
        try:
            encoded = tf.io.read_file(payload) if source.is_path else payload
            tf.io.decode_image(encoded, channels=3, expand_animations=False)
        except tf.errors.OpError as error:
            found[index] = (
                f"cannot decode image {source.describe(index)}: "
                + sources.op_error_message(error)
            )
    return found


@functools.cache
def _hide_accelerators_from_tf() -> None:
    """Keeps TensorFlow off the GPUs, which belong to JAX."""
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow had already initialised its devices.
        logging.info("TensorFlow devices already initialised; not hiding GPUs.")
