"""What each dataset is made of: tfds splits, the held-out part, how to get it.

Pure Python, so names and split rules can be checked without TensorFlow. Our
splits, as in the reference code: ``train`` (everything pre-training sees;
stl10: unlabelled + train), ``val`` (the last ``val_size`` examples of the
labelled train split, a fixed pseudo-random subset since tfds stores examples
hash-shuffled), ``train_minus_val``, and ``test`` (the split reported on:
ImageNet's and Imagenette's ``validation``). Held out: imagenet2012 10,009 (the
paper's count), cifar and fashion_mnist 10,000, imagenette and stl10 1,000, an
image folder 10% of train (at most 10,000).
"""

from __future__ import annotations

import dataclasses

SPLITS = ("train", "train_minus_val", "val", "test")
IMAGE_FOLDER_PREFIX = "image_folder:"
DEFAULT_DATA_DIR = "data"


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not in the data directory; the message says how to get it."""


@dataclasses.dataclass(frozen=True)
class Spec:
    """How one dataset maps onto tfds.

    Attributes:
      labelled: the tfds split with labels; ``val`` is the end of it.
      test: the tfds split reported on.
      val_size: examples held out of ``labelled``.
      unlabelled: tfds splits without labels, part of ``train`` (label -1).
      fixed_size: all images of one small shape, cropped on the device;
        otherwise (JPEG) the host decodes and crops.
      how_to_get: one line saying how to get it (may use ``{data_dir}``).
    """

    labelled: str
    test: str
    val_size: int
    unlabelled: tuple[str, ...] = ()
    fixed_size: bool = True
    how_to_get: str = ""


def _from_internet(name: str) -> str:
    return (
        f"on a machine with internet run `python -m byol.data.prepare {name} "
        "--data_dir {data_dir}` (tfds downloads it), then copy "
        f"{{data_dir}}/{name} here"
    )


SPECS: dict[str, Spec] = {
    "fashion_mnist": Spec(
        "train",
        "test",
        10_000,
        how_to_get=(
            "run `make fashion_mnist DATA_DIR={data_dir}` (fetches the IDX files "
            "of the Debian package dataset-fashion-mnist; the first load builds "
            "the tfds dataset from them)"
        ),
    ),
    "cifar10": Spec("train", "test", 10_000, how_to_get=_from_internet("cifar10")),
    "cifar100": Spec("train", "test", 10_000, how_to_get=_from_internet("cifar100")),
    "stl10": Spec(
        "train",
        "test",
        1_000,
        unlabelled=("unlabelled",),
        how_to_get=_from_internet("stl10"),
    ),
    "imagenette": Spec(
        "train",
        "validation",
        1_000,
        fixed_size=False,
        how_to_get=_from_internet("imagenette"),
    ),
    "imagenet2012": Spec(
        "train",
        "validation",
        10_009,
        fixed_size=False,
        how_to_get=(
            "download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from "
            "https://image-net.org into {data_dir}/downloads/manual/ (tfds manual "
            "download), then run `python -m byol.data.prepare imagenet2012 "
            "--data_dir {data_dir}`"
        ),
    ),
}
DATASETS = (*SPECS, IMAGE_FOLDER_PREFIX + "<dir>")


def base_name(dataset: str) -> str:
    """The catalogue name of a tfds name with config/version.

    >>> base_name('imagenette/160px-v2')
    'imagenette'
    """
    return dataset.split("/")[0].split(":")[0]


def spec(dataset: str) -> Spec:
    """The `Spec` of a tfds dataset of the catalogue (a ValueError names the others).

    >>> spec('cifar10').val_size
    10000
    """
    found = SPECS.get(base_name(dataset))
    if found is None:
        raise ValueError(
            f"dataset {dataset!r} unknown; expected one of: {', '.join(DATASETS)}"
        )
    return found


def check_split(split: str) -> None:
    """A ValueError unless `split` is one of `SPLITS`."""
    if split not in SPLITS:
        raise ValueError(
            f"split {split!r} unknown; expected one of: {', '.join(SPLITS)}"
        )


def split_ranges(
    split: str,
    sizes: dict[str, int],
    labelled: str,
    test: str,
    val_size: int,
    unlabelled: tuple[str, ...] = (),
    labelled_only: bool = False,
) -> list[tuple[str, int, int]]:
    """One of our splits as ``[(source_split, start, end), ...]``, empty ranges dropped.

    ``val`` is the last `val_size` examples of `labelled`; ``train`` adds the
    `unlabelled` splits first unless `labelled_only`.

    >>> split_ranges('val', {'train': 100, 'test': 10}, 'train', 'test', 20)
    [('train', 80, 100)]
    """
    check_split(split)
    n = sizes[labelled]
    if split in ("train_minus_val", "val") and not 0 <= val_size < n:
        raise ValueError(
            f"val_size {val_size} must be smaller than the {n} examples of the "
            f"labelled split {labelled!r}"
        )
    extra = [] if labelled_only else [(s, 0, sizes[s]) for s in unlabelled]
    if split == "test":
        ranges = [(test, 0, sizes[test])]
    elif split == "val":
        ranges = [(labelled, n - val_size, n)]
    else:
        end = n if split == "train" else n - val_size
        ranges = [*extra, (labelled, 0, end)]
    return [(s, a, b) for s, a, b in ranges if b > a]
