"""One of our splits of a dataset, with random access to its examples.

A `Source` is what `load` reads: fixed-size datasets (Fashion-MNIST, CIFAR,
STL-10) as in-memory uint8 arrays of the process's shard; JPEG datasets as
encoded records read by index (tfds's ArrayRecord data source); image folders
as file paths, read inside the tf.data graph.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Callable

import numpy as np
import tensorflow_datasets as tfds

from byol.data import catalog, fashion_mnist, image_folder
from byol.data.catalog import DatasetNotFoundError


@dataclasses.dataclass(frozen=True)
class Source:
    """A split: its size, classes and how to read its examples.

    Attributes:
      num_examples: examples in the split.
      num_classes: classes (0 for an unlabelled image folder).
      fixed_size: all images share `image_shape` and are cropped on the device;
        otherwise (JPEG) the host decodes and crops.
      image_shape: (H, W, C) of fixed-size datasets, else None.
      num_unlabelled: examples with label -1 (STL-10's unlabelled split).
      read_arrays: ``(start, end) -> (images uint8 [n, H, W, C], labels [n])``
        (fixed-size datasets).
      read_encoded: ``indices -> (encoded images [n] bytes, labels [n])``
        (tfds JPEG datasets).
      paths, labels: image folders: file paths and labels of the examples.
      describe: names example ``index`` in messages (a path, or a record).
    """

    num_examples: int
    num_classes: int
    fixed_size: bool
    image_shape: tuple[int, int, int] | None
    num_unlabelled: int = 0
    read_arrays: Callable | None = None
    read_encoded: Callable | None = None
    paths: np.ndarray | None = None
    labels: np.ndarray | None = None
    describe: Callable[[int], str] = str


def open_split(
    dataset: str,
    data_dir: str,
    split: str,
    *,
    labelled_only: bool = False,
    val_size: int | None = None,
    skip_bad_images: bool = False,
) -> Source:
    """One of `catalog.SPLITS` of a dataset (fashion_mnist built, a folder scanned).

    Raises:
      DatasetNotFoundError: one line saying how to get the dataset, or an
        image folder without the ``test`` split asked for.
      ValueError: an unknown name or split, a bad image file (unless skipped).
    """
    catalog.check_split(split)
    if dataset.startswith(catalog.IMAGE_FOLDER_PREFIX):
        root = dataset[len(catalog.IMAGE_FOLDER_PREFIX) :]
        return _folder_split(root, split, val_size, skip_bad_images, labelled_only)
    spec = catalog.spec(dataset)
    builder = open_builder(dataset, data_dir)
    sizes = {name: s.num_examples for name, s in builder.info.splits.items()}
    ranges = catalog.split_ranges(
        split,
        sizes,
        spec.labelled,
        spec.test,
        spec.val_size if val_size is None else val_size,
        unlabelled=spec.unlabelled,
        labelled_only=labelled_only,
    )
    return _tfds_split(dataset, data_dir, builder, spec, ranges)


def _tfds_split(dataset, data_dir, builder, spec: catalog.Spec, ranges) -> Source:
    offsets = np.cumsum([0] + [end - start for _, start, end in ranges])
    unlabelled = set(spec.unlabelled)

    def labels_of(r, labels):
        if ranges[r][0] in unlabelled:
            return np.full(len(labels), -1, np.int32)
        return np.asarray(labels, np.int32)

    def read_arrays(start: int, end: int):
        images, labels = [], []
        for r, (name, a, b) in enumerate(ranges):
            lo, hi = max(a, start - offsets[r] + a), min(b, end - offsets[r] + a)
            if hi > lo:
                x, y = _read_arrays(data_dir, dataset, name, int(lo), int(hi))
                images.append(x)
                labels.append(labels_of(r, y))
        if len(images) == 1:  # no copy
            return images[0], labels[0]
        return np.concatenate(images), np.concatenate(labels)

    def locate(indices):
        which = np.searchsorted(offsets, indices, side="right") - 1
        for r in np.unique(which):
            here = np.nonzero(which == r)[0]
            yield r, here, indices[here] - offsets[r] + ranges[r][1]

    def read_encoded(indices):
        indices = np.asarray(indices, np.int64)
        payloads = np.empty(len(indices), object)
        labels = np.empty(len(indices), np.int32)
        for r, here, local in locate(indices):
            source = _encoded_records(builder, ranges[r][0])
            items = source.__getitems__([int(i) for i in local])
            payloads[here] = [item["image"] for item in items]
            labels[here] = labels_of(r, [item["label"] for item in items])
        return payloads, labels

    def describe(index: int) -> str:
        ((r, _, local),) = list(locate(np.array([index])))
        return f"{dataset} {ranges[r][0]} record {int(local[0])} in {builder.data_dir}"

    if not spec.fixed_size and not _has_random_access(builder.info):
        raise DatasetNotFoundError(
            f"{dataset} in {builder.data_dir} is stored as "
            f"{builder.info.file_format.value} only; host-side crops need random "
            f"access: run `python -m byol.data.prepare {dataset} --data_dir "
            f"{data_dir}` to add ArrayRecord shards"
        )
    label = builder.info.features["label"]
    return Source(
        num_examples=int(offsets[-1]),
        num_classes=int(getattr(label, "num_classes", 0) or 0),
        fixed_size=spec.fixed_size,
        image_shape=tuple(builder.info.features["image"].shape)
        if spec.fixed_size
        else None,
        num_unlabelled=sum(b - a for s, a, b in ranges if s in unlabelled),
        read_arrays=read_arrays,
        read_encoded=read_encoded,
        describe=describe,
    )


def _folder_split(root, split, val_size, skip_bad_images, labelled_only) -> Source:
    folder = image_folder.scan(root, skip_bad_images, verify=decode_errors)
    if split == "test":
        if "test" not in folder.paths:
            raise DatasetNotFoundError(
                f"image folder {root} has no test split; put test images in "
                f"{os.path.join(root, 'test')}/ and training images in "
                f"{os.path.join(root, 'train')}/"
            )
        paths, labels = folder.paths["test"], folder.labels["test"]
    else:
        paths, labels = folder.paths["train"], folder.labels["train"]
        held_out = folder.val_size if val_size is None else val_size
        (_, start, end), *_ = catalog.split_ranges(
            split, {"train": len(paths)}, "train", "test", held_out
        ) or [("train", 0, 0)]
        paths, labels = paths[start:end], labels[start:end]
    if labelled_only:
        paths, labels = paths[labels >= 0], labels[labels >= 0]
    return Source(
        num_examples=len(paths),
        num_classes=len(folder.class_names),
        fixed_size=False,
        image_shape=None,
        num_unlabelled=int(np.sum(labels < 0)),
        paths=paths,
        labels=labels,
        describe=lambda index: str(paths[index]),
    )


def open_builder(dataset: str, data_dir: str):
    """The prepared tfds builder of `dataset` (fashion_mnist: built on first use)."""
    spec = catalog.spec(dataset)
    if dataset == "fashion_mnist":
        return fashion_mnist.prepare(data_dir)
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


@functools.lru_cache(maxsize=4)  # few: stl10's unlabelled split alone is 2.8 GB
def _read_arrays(data_dir: str, dataset: str, split: str, start: int, end: int):
    """Examples ``[start, end)`` of a tfds split as read-only numpy arrays."""
    builder = open_builder(dataset, data_dir)
    sub = f"{split}[{start}:{end}]"
    if builder.info.file_format == tfds.core.FileFormat.TFRECORD:
        arrays = tfds.as_numpy(builder.as_dataset(split=sub, batch_size=-1))
        images, labels = arrays["image"], arrays["label"]
    else:
        items = builder.as_data_source(split=sub).__getitems__(range(end - start))
        images = np.stack([r["image"] for r in items])
        labels = np.array([r["label"] for r in items])
    images, labels = np.asarray(images, np.uint8), np.asarray(labels)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


@functools.cache
def _encoded_records(builder, split: str):
    return builder.as_data_source(
        split=split, decoders={"image": tfds.decode.SkipDecoding()}
    )


def decode_errors(paths) -> dict[str, str]:
    """Why each of `paths` does not decode cleanly; the clean ones are left out.

    Every file is decoded whole, in parallel, by tf.data; one that fails is
    named with the decoder's message. libjpeg only *warns* about a corrupt
    body ("Corrupt JPEG data: ...", the rest filled in grey), on stderr and
    without a file name, so stderr is captured during the pass and, when it
    warned, the files are decoded again in halves until each warning has its
    file. Verdicts are cached per file (path, size, modification time) in
    ``$XDG_CACHE_HOME/byol`` (default ``~/.cache/byol``), so a folder is
    decoded once.
    """
    cache = _VerdictCache(paths)
    found = _decode_pass(cache.unchecked)
    cache.store(found)
    return {p: r for p, r in cache.verdicts.items() if r}


def _decode_pass(paths: list[str]) -> dict[str, str | None]:
    """Each path's reason (None: clean), bisecting where libjpeg warned."""
    if not paths:
        return {}
    import tensorflow as tf  # noqa: PLC0415

    def decode(index):
        image = tf.io.decode_image(
            tf.io.read_file(tf.gather(paths, index)),
            channels=3,
            expand_animations=False,
        )
        return index, tf.shape(image)[0]

    dataset = (
        tf.data.Dataset.range(len(paths))
        .map(decode, num_parallel_calls=tf.data.AUTOTUNE)
        .ignore_errors()
    )
    with _captured_stderr() as stderr:
        decoded = {int(i) for i, _ in dataset.as_numpy_iterator()}
    verdicts = {p: None for i, p in enumerate(paths) if i in decoded}
    for i, path in enumerate(paths):
        if i not in decoded:
            verdicts[path] = decode_error(path)
    warned = stderr.read()
    if "Corrupt JPEG data" in warned or "Premature end of JPEG" in warned:
        clean = [p for p in paths if verdicts[p] is None]
        if len(clean) == 1:
            verdicts[clean[0]] = warned.strip().splitlines()[0]
        elif clean:
            half = len(clean) // 2
            verdicts.update(_decode_pass(clean[:half]))
            verdicts.update(_decode_pass(clean[half:]))
    return verdicts


class _captured_stderr:  # noqa: N801 (a context manager, used like a function)
    """File descriptor 2 (what C libraries print to) into a temporary file."""

    def __enter__(self):
        import tempfile  # noqa: PLC0415

        self._file = tempfile.TemporaryFile(mode="w+b")
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, *unused):
        os.dup2(self._saved, 2)
        os.close(self._saved)

    def read(self) -> str:
        self._file.seek(0)
        text = self._file.read().decode("utf-8", "replace")
        self._file.close()
        return text


class _VerdictCache:
    """Decode verdicts of files, kept across runs (keyed by path, size, mtime)."""

    def __init__(self, paths):
        import hashlib  # noqa: PLC0415
        import json  # noqa: PLC0415

        self._json = json
        root = os.path.commonpath([os.path.realpath(p) for p in paths]) if paths else ""
        digest = hashlib.sha256(root.encode()).hexdigest()[:16]
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
        self.path = os.path.join(cache, "byol", f"decoded-v1-{digest}.json")
        try:
            with open(self.path) as f:
                saved = json.load(f)
        except (OSError, ValueError):
            saved = {}
        self.keys = {p: self._key(p) for p in paths}
        self.verdicts = {
            p: saved[p][1]
            for p, key in self.keys.items()
            if p in saved and saved[p][0] == key
        }
        self.unchecked = [p for p in paths if p not in self.verdicts]
        self._saved = saved

    @staticmethod
    def _key(path: str):
        try:
            stat = os.stat(path)
        except OSError:
            return None
        return [stat.st_size, stat.st_mtime_ns]

    def store(self, found: dict[str, str | None]) -> None:
        self.verdicts.update(found)
        if not found:
            return
        self._saved.update({p: [self.keys[p], r] for p, r in found.items()})
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(self.path + ".tmp", "w") as f:
                self._json.dump(self._saved, f)
            os.replace(self.path + ".tmp", self.path)
        except OSError:  # an unwritable home: decoded again next time
            pass


def decode_error(path: str) -> str | None:
    """Why TensorFlow cannot decode the image file `path` (one line), or None."""
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
