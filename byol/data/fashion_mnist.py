"""Fashion-MNIST as a tfds builder that reads the four IDX files offline.

tfds's own builder downloads them; this one reads the same files (from the
Debian package `dataset-fashion-mnist`, fetched by `make fashion_mnist`) from
``<data_dir>/downloads/manual/fashion_mnist``, and keeps tfds's name, version
and features, so the prepared dataset is the one `tfds.load` reads.
"""

from __future__ import annotations

import gzip
import os

import numpy as np
import tensorflow_datasets as tfds
from absl import logging as absl_logging

from byol.data import catalog

IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_IDX_DTYPE = {0x08: np.uint8}


def missing_files(directory: str) -> list[str]:
    """The IDX file names that `directory` lacks (empty when complete)."""
    names = [name for pair in IDX_FILES.values() for name in pair]
    return [n for n in names if not os.path.isfile(os.path.join(directory, n))]


def read_idx(path: str) -> np.ndarray:
    """An unsigned-byte IDX file (gzipped or not) as an array, or a ValueError."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPE:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data[4:header], dtype=">u4"))
    size = int(np.prod(shape))
    if len(data) < header + size:
        raise ValueError(f"{path}: {len(data) - header} bytes of data, expected {size}")
    return np.frombuffer(data, np.uint8, count=size, offset=header).reshape(shape)


with tfds.core.registered.skip_registration():
    # Not registered: tfds already has a builder named fashion_mnist (one that
    # downloads); this one is only reached through `byol.data`.

    class FashionMnist(tfds.core.GeneratorBasedBuilder):
        """Fashion-MNIST from the four IDX files in the manual directory."""

        name = "fashion_mnist"
        VERSION = tfds.core.Version("3.0.1")
        # No checksums file to find; tfds 4.9.10 would otherwise look for one
        # through `importlib_resources`, which it does not install on py>=3.9.
        code_path = None
        MANUAL_DOWNLOAD_INSTRUCTIONS = (
            "Put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
            "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz (Debian "
            "package dataset-fashion-mnist; `make fashion_mnist` fetches them) "
            "in the manual directory."
        )

        def _info(self) -> tfds.core.DatasetInfo:
            return tfds.core.DatasetInfo(
                builder=self,
                description="Fashion-MNIST: 28x28 grayscale images of 10 classes.",
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(28, 28, 1)),
                        "label": tfds.features.ClassLabel(names=CLASS_NAMES),
                    }
                ),
                supervised_keys=("image", "label"),
                homepage="https://github.com/zalandoresearch/fashion-mnist",
            )

        def _split_generators(self, dl_manager):
            directory = os.fspath(dl_manager.manual_dir)
            missing = missing_files(directory)
            if missing:
                raise FileNotFoundError(
                    f"fashion_mnist: {', '.join(missing)} missing in {directory}"
                )
            return {
                split: self._generate_examples(
                    os.path.join(directory, images), os.path.join(directory, labels)
                )
                for split, (images, labels) in IDX_FILES.items()
            }

        def _generate_examples(self, images_path: str, labels_path: str):
            images = read_idx(images_path)
            labels = read_idx(labels_path)
            if images.ndim != 3 or images.shape[1:] != (28, 28):
                raise ValueError(f"{images_path}: shape {images.shape}, expected 28x28")
            if labels.shape != images.shape[:1]:
                raise ValueError(
                    f"{labels_path}: {labels.shape[0]} labels for "
                    f"{images.shape[0]} images in {images_path}"
                )
            for index, (image, label) in enumerate(zip(images, labels, strict=True)):
                yield index, {"image": image[..., None], "label": int(label)}


def manual_dir(data_dir: str) -> str:
    """Where `make fashion_mnist` puts the IDX files."""
    return os.path.join(data_dir, "downloads", "manual", "fashion_mnist")


def prepare(data_dir: str):
    """The prepared builder, built from the IDX files on first use."""
    idx_dir = manual_dir(data_dir)
    prepared = os.path.join(
        data_dir, FashionMnist.name, str(FashionMnist.VERSION), "dataset_info.json"
    )
    # Checked before the builder exists: constructing it over an absent dataset
    # makes tfds log a warning, and the error must be the only line printed.
    if not os.path.exists(prepared) and missing_files(idx_dir):
        how = catalog.SPECS["fashion_mnist"].how_to_get.format(data_dir=data_dir)
        raise catalog.DatasetNotFoundError(
            f"fashion_mnist not found in {os.path.join(data_dir, 'fashion_mnist')} "
            f"(nor its IDX files in {idx_dir}); {how}"
        )
    if os.path.exists(prepared):
        return FashionMnist(data_dir=data_dir)
    print(f"Building fashion_mnist in {data_dir} from {idx_dir} (once)", flush=True)
    # tfds's progress bars and its warning about the folder it is creating.
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    tfds.display_progress_bar(False)
    try:
        builder = FashionMnist(data_dir=data_dir)
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=idx_dir),
            file_format="tfrecord",
        )
    finally:
        tfds.display_progress_bar(True)
        absl_logging.set_verbosity(verbosity)
    return builder
