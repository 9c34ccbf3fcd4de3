"""Where examples come from: prepared tfds datasets or an image folder.

A `SplitSource` is one of our splits (see `catalog`) as a sequence of examples
with random access: fixed-size datasets are read into memory as numpy arrays
(only the process's shard), JPEG datasets are read record by record through
tfds's ArrayRecord data source (still encoded), image folders by path.
"""

from __future__ import annotations

import collections
import logging
import os
import re

import numpy as np
import tensorflow_datasets as tfds

from byol.data import catalog, fashion_mnist, image_folder


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not in the data directory; the message says how to get it."""


def fashion_mnist_manual_dir(data_dir: str) -> str:
    """Returns where `make fashion_mnist` puts the IDX files.

    Args:
      data_dir: the data directory.

    Returns:
      ``<data_dir>/downloads/manual/fashion_mnist``.

    Example:
      >>> fashion_mnist_manual_dir('data')
      'data/downloads/manual/fashion_mnist'
    """
    return os.path.join(data_dir, "downloads", "manual", "fashion_mnist")


def prepare_fashion_mnist(data_dir: str, idx_dir: str | None = None):
    """Builds the tfds fashion_mnist dataset from the four IDX files.

    Args:
      data_dir: tfds data directory to write ``fashion_mnist/3.0.1`` into.
      idx_dir: directory with the IDX files; default
        `fashion_mnist_manual_dir(data_dir)`.

    Returns:
      The prepared builder.

    Raises:
      DatasetNotFoundError: if IDX files are missing.

    Example:
      >>> prepare_fashion_mnist('data')  # doctest: +SKIP
    """
    idx_dir = idx_dir or fashion_mnist_manual_dir(data_dir)
    builder_class = fashion_mnist.FashionMnist
    prepared = os.path.join(
        data_dir, builder_class.name, str(builder_class.VERSION), "dataset_info.json"
    )
    # Checked before the builder exists: constructing it over an absent dataset
    # makes tfds log a warning, and the error must be the only line printed.
    if not os.path.exists(prepared) and fashion_mnist.missing_files(idx_dir):
        how = catalog.SPECS["fashion_mnist"].how_to_get.format(data_dir=data_dir)
        raise DatasetNotFoundError(
            f"fashion_mnist not found in {os.path.join(data_dir, 'fashion_mnist')} "
            f"(nor its IDX files in {idx_dir}); {how}"
        )
    builder = builder_class(data_dir=data_dir)
    if builder.is_prepared():
        return builder
    logging.info("Building fashion_mnist in %s from %s.", data_dir, idx_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=idx_dir),
        file_format="tfrecord",
    )
    return builder


def open_builder(dataset: str, data_dir: str):
    """Returns the prepared tfds builder of `dataset`.

    fashion_mnist is built on first use when its IDX files are present; other
    datasets must have been prepared (`python -m byol.data.prepare`).

    Args:
      dataset: a tfds name of the catalogue (config/version suffix allowed).
      data_dir: tfds data directory.

    Returns:
      A prepared `tfds.core.DatasetBuilder`.

    Raises:
      DatasetNotFoundError: one line saying how to get the dataset.

    Example:
      >>> builder = open_builder('fashion_mnist', 'data')  # doctest: +SKIP
    """
    spec = catalog.spec(dataset)
    if dataset == "fashion_mnist":
        return prepare_fashion_mnist(data_dir)
    builder = tfds.builder(dataset, data_dir=data_dir)
    if not builder.is_prepared():
        raise DatasetNotFoundError(
            f"{dataset} not found in {builder.data_dir}; "
            + spec.how_to_get.format(data_dir=data_dir)
        )
    return builder


def _has_random_access(info) -> bool:
    # tfds 4.9.10 reads `alternative_file_formats` from dataset_info.json into
    # the proto only, not into the list `available_file_formats` consults.
    for value in info.as_proto.alternative_file_formats:
        file_format = tfds.core.FileFormat.from_value(value)
        if file_format not in info.available_file_formats():
            info.add_alternative_file_format(file_format)
    random_access = tfds.core.FileFormat.with_random_access()
    return any(f in random_access for f in info.available_file_formats())


_ARRAYS: collections.OrderedDict = collections.OrderedDict()
_ARRAYS_KEPT = 4  # Few: stl10's unlabelled split alone is 2.8 GB.


def _read_arrays(builder, split: str, start: int, end: int):
    """Decodes examples ``[start, end)`` of a tfds split into numpy arrays.

    The last few results are kept (read-only), so that evaluation loaders
    made again and again do not decode again.
    """
    key = (os.fspath(builder.data_dir), split, start, end)
    if key in _ARRAYS:
        _ARRAYS.move_to_end(key)
        return _ARRAYS[key]
    sub = f"{split}[{start}:{end}]"
    if builder.info.file_format == tfds.core.FileFormat.TFRECORD:
        data = tfds.as_numpy(builder.as_dataset(split=sub, batch_size=-1))
        images, labels = data["image"], data["label"]
    else:
        items = builder.as_data_source(split=sub).__getitems__(range(end - start))
        images = np.stack([r["image"] for r in items])
        labels = np.array([r["label"] for r in items])
    images = np.asarray(images, np.uint8)
    labels = np.asarray(labels)
    images.setflags(write=False)
    labels.setflags(write=False)
    _ARRAYS[key] = images, labels
    while len(_ARRAYS) > _ARRAYS_KEPT:
        _ARRAYS.popitem(last=False)
    return images, labels


class _TfdsBackend:
    """Reads examples of a prepared tfds dataset."""

    def __init__(self, dataset: str, builder, spec: catalog.Spec, data_dir: str):
        self.dataset = dataset
        self.builder = builder
        self.fixed_size = spec.fixed_size
        self.is_path = False
        self.labelled, self.test = spec.labelled, spec.test
        self.val_size, self.unlabelled = spec.val_size, spec.unlabelled
        self.no_test_message = f"{dataset} has no {spec.test} split"
        self._sources = {}
        if not self.fixed_size and not _has_random_access(builder.info):
            raise DatasetNotFoundError(
                f"{dataset} in {builder.data_dir} is stored as "
                f"{builder.info.file_format.value} only; host-side crops need "
                f"random access: run `python -m byol.data.prepare {dataset} "
                f"--data_dir {data_dir}` to add ArrayRecord shards"
            )

    def sizes(self) -> dict[str, int]:
        return {name: s.num_examples for name, s in self.builder.info.splits.items()}

    def num_classes(self) -> int:
        label = self.builder.info.features["label"]
        return int(getattr(label, "num_classes", 0) or 0)

    def image_shape(self):
        return tuple(self.builder.info.features["image"].shape)

    def read_arrays(self, split: str, start: int, end: int):
        return _read_arrays(self.builder, split, start, end)

    def _source(self, split: str):
        if split not in self._sources:
            self._sources[split] = self.builder.as_data_source(
                split=split, decoders={"image": tfds.decode.SkipDecoding()}
            )
        return self._sources[split]

    def read_encoded(self, split: str, indices: np.ndarray):
        items = self._source(split).__getitems__([int(i) for i in indices])
        return [r["image"] for r in items], np.array([r["label"] for r in items])

    def describe(self, split: str, index: int) -> str:
        return f"{self.dataset} {split} record {index} in {self.builder.data_dir}"


class _FolderBackend:
    """Reads a user's image folder (always host-decoded)."""

    fixed_size = False
    is_path = True
    labelled, test, unlabelled = "train", "test", ()

    def __init__(self, folder: image_folder.Folder):
        self.folder = folder
        self.val_size = folder.val_size
        root = folder.root
        self.no_test_message = (
            f"image folder {root} has no test split; put test images in "
            f"{os.path.join(root, 'test')}/ and training images in "
            f"{os.path.join(root, 'train')}/"
        )

    def sizes(self) -> dict[str, int]:
        return {split: len(paths) for split, paths in self.folder.paths.items()}

    def num_classes(self) -> int:
        return len(self.folder.class_names)

    def image_shape(self):
        return None

    def read_encoded(self, split: str, indices: np.ndarray):
        return list(self.folder.paths[split][indices]), self.folder.labels[split][
            indices
        ]

    def describe(self, split: str, index: int) -> str:
        return str(self.folder.paths[split][index])


def decode_error(path: str) -> str | None:
    """Why TensorFlow cannot decode the image file `path`, or None if it can.

    Args:
      path: a JPEG/PNG/GIF/BMP file.

    Returns:
      The decoder's message in one line, or None.

    Example:
      >>> decode_error('/path/to/photo.jpg') is None  # doctest: +SKIP
      True
    """
    import tensorflow as tf  # noqa: PLC0415 (already loaded by tfds)

    try:
        tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    except tf.errors.OpError as error:
        return op_error_message(error)
    return None


def op_error_message(error) -> str:
    """A TensorFlow op error's message in one line, without TF's decorations."""
    message = re.sub(r"\{\{.*?\}\}\s*", "", error.message or "").strip()
    message = re.sub(r"\s*\[Op:\w+\].*", "", message, flags=re.DOTALL)
    return message.splitlines()[0] if message else type(error).__name__


def open_dataset(dataset: str, data_dir: str, skip_bad_images: bool = False):
    """Opens a dataset for reading (builds fashion_mnist or scans a folder).

    Args:
      dataset: a catalogue name or ``image_folder:/path``.
      data_dir: tfds data directory (unused for image folders).
      skip_bad_images: image folders: leave out files that are not usable
        images (unreadable, not an image, truncated), with a warning.

    Returns:
      A backend for `SplitSource`.

    Raises:
      DatasetNotFoundError: one line saying how to get the dataset.
      ValueError: naming a bad file of an image folder (unless skipped).

    Example:
      >>> backend = open_dataset('fashion_mnist', 'data')  # doctest: +SKIP
      >>> train = SplitSource(backend, 'train')  # doctest: +SKIP
    """
    if dataset.startswith(catalog.IMAGE_FOLDER_PREFIX):
        root = dataset[len(catalog.IMAGE_FOLDER_PREFIX) :]
        folder = image_folder.scan(
            root, skip_bad_images=skip_bad_images, verify=decode_error
        )
        return _FolderBackend(folder)
    spec = catalog.spec(dataset)
    return _TfdsBackend(dataset, open_builder(dataset, data_dir), spec, data_dir)


class SplitSource:
    """One of our splits of a dataset, with random access to its examples.

    Args:
      backend: from `open_dataset`.
      split: one of `catalog.SPLITS`.
      labelled_only: leave out unlabelled examples (stl10's unlabelled split).
      val_size: examples held out as ``val`` (default: the catalogue's).

    Raises:
      DatasetNotFoundError: for ``test`` of an image folder without one.

    Example:
      >>> backend = open_dataset('fashion_mnist', 'data')  # doctest: +SKIP
      >>> source = SplitSource(backend, 'val')  # doctest: +SKIP
      >>> images, labels = source.read_arrays(0, 10)  # doctest: +SKIP
    """

    def __init__(
        self,
        backend,
        split: str,
        labelled_only: bool = False,
        val_size: int | None = None,
    ):
        catalog.check_split(split)
        self.backend = backend
        sizes = backend.sizes()
        if split == "test" and backend.test not in sizes:
            raise DatasetNotFoundError(backend.no_test_message)
        self.fixed_size = backend.fixed_size
        self.is_path = backend.is_path
        self.num_classes = backend.num_classes()
        self.image_shape = backend.image_shape() if self.fixed_size else None
        self.ranges = catalog.split_ranges(
            split,
            sizes,
            backend.labelled,
            backend.test,
            backend.val_size if val_size is None else val_size,
            unlabelled=backend.unlabelled,
            labelled_only=labelled_only,
        )
        self._unlabelled = set(backend.unlabelled)
        lengths = [b - a for _, a, b in self.ranges]
        self._offsets = np.cumsum([0, *lengths])
        self.num_examples = int(self._offsets[-1])

    def _locate(self, indices: np.ndarray):
        """Yields (range number, positions in `indices`, source-split indices)."""
        which = np.searchsorted(self._offsets, indices, side="right") - 1
        for r in np.unique(which):
            here = np.nonzero(which == r)[0]
            source_split, start, _ = self.ranges[r]
            yield r, here, indices[here] - self._offsets[r] + start

    def _labels(self, r: int, labels: np.ndarray) -> np.ndarray:
        if self.ranges[r][0] in self._unlabelled:
            return np.full(len(labels), -1, np.int32)
        return np.asarray(labels, np.int32)

    def read_arrays(self, start: int, end: int):
        """Reads examples ``[start, end)`` of the split into memory.

        Args:
          start: first index (split-local).
          end: one past the last.

        Returns:
          ``(images uint8 [n, H, W, C], labels int32 [n])``.
        """
        images, labels = [], []
        for r, (source_split, a, b) in enumerate(self.ranges):
            lo = max(a, start - self._offsets[r] + a)
            hi = min(b, end - self._offsets[r] + a)
            if hi > lo:
                x, y = self.backend.read_arrays(source_split, int(lo), int(hi))
                images.append(x)
                labels.append(self._labels(r, y))
        if len(images) == 1:  # No copy.
            return images[0], labels[0]
        return np.concatenate(images), np.concatenate(labels)

    def read_encoded(self, indices: np.ndarray):
        """Reads encoded images (bytes, or file paths) and labels.

        Args:
          indices: split-local example indices.

        Returns:
          ``(payloads, labels int32)``: a list of bytes (tfds) or paths (image
          folder), aligned with `indices`.
        """
        indices = np.asarray(indices, np.int64)
        payloads = [None] * len(indices)
        labels = np.empty(len(indices), np.int32)
        for r, here, local in self._locate(indices):
            items, y = self.backend.read_encoded(self.ranges[r][0], local)
            for position, item in zip(here, items, strict=True):
                payloads[position] = item
            labels[here] = self._labels(r, y)
        return payloads, labels

    def describe(self, index: int) -> str:
        """Names example `index` (a file path, or dataset/split/record)."""
        ((r, _, local),) = list(self._locate(np.array([index])))
        return self.backend.describe(self.ranges[r][0], int(local[0]))
