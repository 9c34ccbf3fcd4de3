"""`load`: batches of a dataset split for a pmapped step, resumable at any step.

Batch ``k`` is a pure function of (dataset, split, seed, process index and
count, batch size, k), chosen by `sampling`: resuming at ``start_step=k``
reads nothing before batch k.

* Fixed-size datasets (fashion_mnist, cifar10/100, stl10): the process's shard
  is read into memory once (uint8) and batches are numpy gathers; images go
  to the device raw, ``{'images': [D, B, H, W, C], 'labels': [D, B]}``, and
  are cropped there.
* JPEG datasets (imagenet2012, imagenette, image folders): a tf.data graph,
  parallel at every stage: batch indices → read (files, or ArrayRecord
  records) → decode fused with the random crop → bicubic resize to
  `image_size` → batch. Pre-training batches hold two crops (``view1``,
  ``view2``); ``two_views=False`` gives one (``images``). Crops draw from
  stateless seeds of (seed, process, stream position).

Evaluation (``is_training=False``): one pass over the process's shard in
order, the last batch padded, ``mask`` False (label -1) on padding, the same
number of batches on every process; JPEGs centre-cropped (224/256).
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

from byol import distributed
from byol.data import catalog, sampling, sources


class DatasetInfo(NamedTuple):
    """What a model needs to know about a dataset.

    Attributes:
      num_examples: examples per split of `catalog.SPLITS` (``test`` 0 for an
        image folder without one).
      num_classes: classes (0 for an unlabelled image folder).
      image_shape: (H, W, C) of fixed-size datasets, None for JPEG ones.
      fixed_size: whether the device receives raw images and crops them.
      num_unlabelled: examples with label -1 in ``train`` (stl10: 100,000).
    """

    num_examples: dict[str, int]
    num_classes: int
    image_shape: tuple[int, int, int] | None
    fixed_size: bool
    num_unlabelled: int = 0


def dataset_info(
    dataset: str,
    data_dir: str | None = None,
    val_size: int | None = None,
    skip_bad_images: bool = False,
) -> DatasetInfo:
    """Split sizes, classes and image shape of a dataset (`load`'s arguments)."""
    data_dir = data_dir or catalog.DEFAULT_DATA_DIR
    opened = functools.partial(
        sources.open_split, dataset, data_dir, skip_bad_images=skip_bad_images
    )
    counts = {}
    for split in catalog.SPLITS:
        try:
            counts[split] = opened(split, val_size=val_size).num_examples
        except sources.DatasetNotFoundError:
            if split != "test":
                raise
            counts[split] = 0  # an image folder without test/
    train = opened("train")
    return DatasetInfo(
        num_examples=counts,
        num_classes=train.num_classes,
        image_shape=train.image_shape,
        fixed_size=train.fixed_size,
        num_unlabelled=train.num_unlabelled,
    )


def default_num_threads() -> int:
    """Host decoding threads: this process's share of the host's cores, less one.

    The share is the cores the process may run on, divided by the processes
    a launcher started on this host when none bound them to their own cores.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 2
    if cores >= (os.cpu_count() or cores):  # not bound: the host's cores
        cores //= distributed.local_process_count()
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
    skip_bad_images: bool = False,
    val_size: int | None = None,
    min_crop_area: float = 0.08,
) -> Iterator[dict[str, np.ndarray]]:
    """Yields numpy batches of a split, shaped ``[*batch_dims, ...]``.

    Args:
      dataset: a name of `catalog.DATASETS` (tfds config/version suffix
        allowed) or ``image_folder:/path``.
      split: ``train``, ``train_minus_val``, ``val`` or ``test``.
      is_training: shuffled, endless, random crops; else one padded pass.
      batch_dims: e.g. ``[jax.local_device_count(), per_device_batch]``.
      image_size: side of the host crops (JPEG datasets only).
      data_dir: tfds data directory (default ``data``).
      seed: seed of the shuffles and crops.
      start_step: batches already consumed.
      two_views: JPEG training: ``view1``/``view2``, or one ``images``.
      labelled_only: drop examples without labels (stl10's unlabelled split).
      process_index, process_count: default `jax.process_index()` / count.
      num_threads: host decoding threads (None, 0: `default_num_threads`).
      skip_bad_images: image folders: leave out files that are not usable
        images (warning); in the stream, one that fails to decode is replaced
        by another example of its batch (training) or masked out
        (evaluation), the same way at every resume.
      val_size: examples held out of train as ``val`` (default: `catalog`).
      min_crop_area: the host crops' smallest area (fraction of the image).

    Raises:
      ValueError: bad arguments, or an image that cannot be decoded (named).
      DatasetNotFoundError: a missing dataset (the message says how to get it).
    """
    batch_dims = tuple(int(d) for d in batch_dims)
    if not batch_dims or min(batch_dims) < 1:
        raise ValueError(f"batch_dims {batch_dims} must be non-empty and positive")
    if start_step < 0:
        raise ValueError(f"start_step {start_step} must be >= 0")
    if process_index is None or process_count is None:
        import jax  # noqa: PLC0415

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    source = sources.open_split(
        dataset,
        data_dir or catalog.DEFAULT_DATA_DIR,
        split,
        labelled_only=labelled_only,
        val_size=val_size,
        skip_bad_images=skip_bad_images,
    )
    if source.num_examples == 0:
        raise ValueError(f"split {split!r} of {dataset} is empty")
    if not source.fixed_size and not image_size:
        raise ValueError(f"image_size must be set for {dataset} (host-side crops)")
    batch = math.prod(batch_dims)
    start, end = sampling.shard_bounds(
        source.num_examples, process_index, process_count
    )
    plan, stop = batch_plan(
        source, start, end, batch, is_training, seed, process_index, process_count
    )
    if source.fixed_size:
        batches = _array_batches(source, start, end, plan, start_step, stop)
    else:
        batches = _jpeg_batches(
            source,
            plan,
            start_step,
            stop,
            batch=batch,
            image_size=image_size,
            views=(2 if two_views else 1) if is_training else 0,
            num_threads=num_threads or default_num_threads(),
            skip_bad_images=skip_bad_images,
            min_crop_area=min_crop_area,
        )
    return (
        {k: v.reshape(batch_dims + v.shape[1:]) for k, v in b.items()} for b in batches
    )


def source_settings(data) -> dict:
    """`load`'s and `dataset_info`'s arguments from a config's ``data`` section."""
    return dict(
        data_dir=data.data_dir,
        val_size=None if data.val_size < 0 else data.val_size,
        skip_bad_images=data.skip_corrupt_images,
    )


def load_from_config(data, split: str, **kwargs) -> Iterator[dict[str, np.ndarray]]:
    """`load` of the dataset a config's ``data`` section names, as it sets it."""
    return load(
        data.dataset,
        split,
        image_size=data.image_size,
        num_threads=data.num_threads,
        **source_settings(data),
        **kwargs,
    )


def pretraining_batches(
    config, batch_dims: tuple[int, ...], start_step: int = 0
) -> Iterator[dict[str, np.ndarray]]:
    """The pre-training stream a config describes, from `start_step` on."""
    return load_from_config(
        config.data,
        "train",
        is_training=True,
        batch_dims=batch_dims,
        seed=config.seed,
        start_step=start_step,
        min_crop_area=config.data.min_crop_area,
    )


def batch_plan(
    source, start, end, batch, is_training, seed, process_index, process_count
):
    """``plan(step) -> (indices, mask or None, crop seeds or None)`` and the stop step.

    Training is endless and shuffled; evaluation is one pass in order, padded
    to the same number of batches on every process.
    """
    if is_training:
        order = sampling.TrainOrder(end - start, batch, seed, process_index)

        def plan(step):
            positions = order.positions(step)
            seeds = sampling.example_seeds(seed, process_index, positions)
            return start + order.indices(step), None, seeds

        return plan, None
    stop = sampling.eval_num_batches(source.num_examples, process_count, batch)
    pad_index = start if end > start else 0  # any valid example; masked

    def plan(step):
        local, mask = sampling.eval_indices(end - start, batch, step)
        return np.where(mask, start + local, pad_index), mask, None

    return plan, stop


def _array_batches(source, start, end, plan, start_step, stop):
    """Batches of a fixed-size dataset: gathers from the in-memory shard."""
    # A process with an empty shard (more processes than examples) still
    # yields padded evaluation batches, of example 0.
    lo, hi = (start, end) if end > start else (0, 1)
    images, labels = source.read_arrays(lo, hi)
    steps = itertools.count(start_step) if stop is None else range(start_step, stop)
    for step in steps:
        indices, mask, _ = plan(step)
        local = indices - lo
        out = {"images": images[local], "labels": labels[local]}
        if mask is not None:
            out["labels"] = np.where(mask, out["labels"], -1).astype(np.int32)
            out["mask"] = mask
        yield out


def _jpeg_batches(source, plan, start_step, stop, **options):
    """Batches of a JPEG dataset, restarting the graph when an image fails to decode.

    Every culprit of a failing batch is found at once, so the batch comes out
    the same whenever a run finds them (resumed or not).
    """
    import tensorflow as tf  # noqa: PLC0415

    skip_bad_images = options.pop("skip_bad_images")
    undecodable: set[int] = set()

    def stream(first_step):
        dataset = jpeg_dataset(
            source, plan, first_step, stop, frozenset(undecodable), **options
        )
        return dataset.as_numpy_iterator()

    iterator, step = stream(start_step), start_step
    while stop is None or step < stop:
        try:
            out = next(iterator)
        except StopIteration:
            return
        except tf.errors.OpError as error:
            culprits = _find_undecodable(source, plan(step)[0])
            if not culprits or undecodable.issuperset(culprits):
                raise
            if not skip_bad_images:
                raise ValueError(
                    next(iter(culprits.values()))
                    + "; remove it or set data.skip_corrupt_images=True to leave "
                    "such files out"
                ) from error
            for index, message in culprits.items():
                logging.warning("Skipping %s.", message)
                undecodable.add(index)
            # The errored iterator is freed first (the error's frames held it):
            # tf.data iterators left to interpreter exit can hang it.
            iterator = error = None
            gc.collect()
            iterator = stream(step)
            continue
        yield out
        step += 1


def jpeg_dataset(
    source,
    plan,
    first_step: int,
    stop: int | None,
    undecodable=frozenset(),
    *,
    batch: int,
    image_size: int,
    views: int,
    num_threads: int,
    min_crop_area: float = 0.08,
    upto: str = "batch",
):
    """The tf.data graph of a JPEG source from `first_step`, every stage parallel.

    ``plan`` (batch indices, in numpy, a call per batch) → ``read`` (bytes of
    files, or of records a batch per call) → ``decode`` (fused with the crop,
    resized; `views` 2 or 1 training crops, 0 the evaluation crop) →
    ``batch``. `upto` stops after a stage (the input benchmark times each).
    """
    import tensorflow as tf  # noqa: PLC0415

    from byol.data import preprocess  # noqa: PLC0415

    _hide_accelerators_from_tf()
    parallel = dict(num_parallel_calls=num_threads, deterministic=True)

    def plan_batch(step):
        indices, mask, seeds = plan(int(step))
        if undecodable:
            indices, mask = _replace_undecodable(indices, mask, undecodable)
        if mask is None:
            mask = np.ones(len(indices), bool)
        if seeds is None:
            seeds = np.zeros((len(indices), 2), np.int64)
        return indices.astype(np.int64), seeds.astype(np.int64), mask

    def planned(step):
        indices, seeds, mask = tf.numpy_function(
            plan_batch, [step], (tf.int64, tf.int64, tf.bool), stateful=False
        )
        return dict(
            index=tf.ensure_shape(indices, [batch]),
            seed=tf.ensure_shape(seeds, [batch, 2]),
            mask=tf.ensure_shape(mask, [batch]),
        )

    def read_records(x):  # tfds records, read by index
        encoded, label = tf.numpy_function(
            source.read_encoded, [x["index"]], (tf.string, tf.int32)
        )
        return dict(
            x,
            encoded=tf.ensure_shape(encoded, [batch]),
            label=tf.ensure_shape(label, [batch]),
        )

    def decode(x):
        out = {"labels": tf.where(x["mask"], x["label"], -1)}
        if views:
            crops = preprocess.random_views(
                x["encoded"], x["seed"], image_size, views, min_crop_area
            )
            names = ("view1", "view2") if views == 2 else ("images",)
            out.update(zip(names, crops, strict=True))
        else:
            out["images"] = preprocess.center_view(x["encoded"], image_size)
            out["mask"] = x["mask"]
        return out

    ds = tf.data.Dataset.range(first_step, 2**62 if stop is None else stop)
    ds = ds.map(planned)
    if upto != "plan":
        if source.paths is not None:  # image folder: the graph reads the files
            paths = tf.constant(list(source.paths))
            labels = tf.constant(source.labels)
            ds = ds.unbatch().map(
                lambda x: dict(
                    x,
                    encoded=tf.io.read_file(tf.gather(paths, x["index"])),
                    label=tf.gather(labels, x["index"]),
                ),
                **parallel,
            )
        else:
            ds = ds.map(read_records, **parallel).unbatch()
    if upto in ("decode", "batch"):
        ds = ds.map(decode, **parallel)
    if upto == "batch":
        ds = ds.batch(batch, drop_remainder=True, **parallel).prefetch(2)
    options = tf.data.Options()
    options.deterministic = True
    options.threading.private_threadpool_size = num_threads
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options)


def _replace_undecodable(indices, mask, undecodable):
    """Other examples of the batch stand in for undecodable ones.

    Training (`mask` None): each is replaced by the next decodable example of
    its batch. Evaluation: it is masked out (a decodable one decoded in its
    place keeps the batch's shape).
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
    return indices, None if mask is None else mask & ~bad


def _find_undecodable(source, indices) -> dict[int, str]:
    """The examples of `indices` that fail to decode, each with a message."""
    import tensorflow as tf  # noqa: PLC0415

    found = {}
    for index in dict.fromkeys(int(i) for i in indices):
        try:
            if source.paths is not None:
                encoded = tf.io.read_file(source.paths[index])
            else:
                encoded = source.read_encoded(np.array([index]))[0][0]
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
    import tensorflow as tf  # noqa: PLC0415

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow had already initialised its devices
        logging.info("TensorFlow devices already initialised; not hiding GPUs.")
