"""A folder of the user's own images as a dataset (``image_folder:/path``).

Layout (tfds's ImageFolder, with two relaxations):

* A folder with a ``train/`` subfolder has splits: ``train/`` and, as
  ``test``, the first of ``test/``, ``validation/``, ``val/``. Otherwise the
  whole folder is ``train`` and there is no ``test``.
* Inside a split, images below a subfolder ``<class>/`` (at any depth;
  symbolic links followed) get that class's label, classes sorted by name;
  images directly in the split folder are unlabelled (-1): a folder without
  class subfolders is an unlabelled pre-training set. Pre-training uses
  unlabelled images; the probes and linear evaluation leave them out.
* Files are images by extension (.jpg .jpeg .png .gif .bmp, any case);
  others and hidden entries are ignored. Grayscale, alpha, 16-bit and CMYK
  images become 8-bit RGB. EXIF orientation is not applied (as tfds and the
  reference pipeline): images are used as stored.

Bad files are found before any batch: one that cannot be read, is empty, has
no image format's signature, or does not decode cleanly (the whole file is
decoded once, `byol.data.sources.decode_errors`, which also catches a body
that libjpeg only warns about and fills in grey). The first is named in a
ValueError, or, with ``skip_bad_images`` (``data.skip_corrupt_images``), each
is left out with a warning naming it.

Examples are ordered by a hash of their relative path (a fixed pseudo-random
order), and ``val`` is the last 10% of ``train`` in it (at most 10,000).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os

import numpy as np

EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")
_TEST_DIRS = ("test", "validation", "val")


@dataclasses.dataclass(frozen=True)
class Folder:
    """The scanned contents of an image folder.

    Attributes:
      root: the folder.
      paths: per source split (``train``, maybe ``test``), image paths in order.
      labels: per source split, int32 labels (-1: unlabelled).
      class_names: sorted class names; label ``i`` is ``class_names[i]``.
    """

    root: str
    paths: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    class_names: tuple[str, ...]

    @property
    def val_size(self) -> int:
        """Examples of ``train`` held out as ``val``."""
        return min(10_000, len(self.paths["train"]) // 10)


def _list_images(split_dir: str) -> list[tuple[str, str]]:
    """(relative path, class or '') of the images under `split_dir`."""
    found, seen = [], set()
    for parent, dirs, files in os.walk(split_dir, followlinks=True):
        real = os.path.realpath(parent)
        if real in seen:  # a link back up the tree
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel_parent = os.path.relpath(parent, split_dir)
        label = "" if rel_parent == "." else rel_parent.split(os.sep)[0]
        for name in files:
            if not name.startswith(".") and name.lower().endswith(EXTENSIONS):
                found.append((os.path.normpath(os.path.join(rel_parent, name)), label))
    return found


def check_image(path: str) -> str | None:
    """Why `path` is not a usable image by its first bytes, or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            size = f.seek(0, os.SEEK_END)
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    if size == 0:
        return "is empty (0 bytes)"
    if not head.startswith(_SIGNATURES):
        return "is not a JPEG/PNG/GIF/BMP image (bad file signature)"
    return None


def _order_key(relative_path: str) -> bytes:
    return hashlib.md5(relative_path.encode("utf-8")).digest()


def _split_dirs(root: str) -> dict[str, str]:
    if not os.path.isdir(os.path.join(root, "train")):
        return {"train": root}
    dirs = {"train": os.path.join(root, "train")}
    for name in _TEST_DIRS:
        if os.path.isdir(os.path.join(root, name)):
            return {**dirs, "test": os.path.join(root, name)}
    return dirs


def _check_classes(listed: dict, split_dirs: dict) -> None:
    """Test classes must be training classes; loose files among classes warn."""
    train = {c for _, c in listed["train"]} - {""}
    extra = sorted({c for _, c in listed.get("test", [])} - {""} - train)
    if extra:
        raise ValueError(
            f"class {extra[0]!r} of {split_dirs['test']} has no images in "
            f"{split_dirs['train']}, so nothing can learn it; add some there or "
            "remove it from the test split"
        )
    for split, items in listed.items():
        loose = [rel for rel, c in items if not c]
        if loose and len(loose) < len(items):
            logging.warning(
                "%d images directly in %s (e.g. %s) have no class folder: "
                "pre-training uses them unlabelled, the probes leave them out",
                len(loose),
                split_dirs[split],
                loose[0],
            )


@functools.lru_cache(maxsize=8)  # every `load` opens its split
def scan(root: str, skip_bad_images: bool = False, verify=None) -> Folder:
    """Lists and checks the images of a folder (layout: the module docstring).

    ``verify(paths) -> {path: reason}`` decodes the files that passed the
    byte checks and names those that do not decode cleanly.

    Raises:
      FileNotFoundError: `root` is not a directory or holds no images.
      ValueError: naming the first file that is not a usable image and how
        many others there are (unless skipped), or a test class that
        training lacks.
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder {root} not found (not a directory)")
    split_dirs = _split_dirs(root)
    listed = {split: _list_images(d) for split, d in split_dirs.items()}
    _check_classes(listed, split_dirs)
    class_names = tuple(
        sorted({c for items in listed.values() for _, c in items} - {""})
    )
    class_index = {name: i for i, name in enumerate(class_names)}
    paths, labels, bad = {}, {}, []
    for split, items in listed.items():
        items.sort(key=lambda item: _order_key(item[0]))
        kept = []
        for rel, label in items:
            path = os.path.join(split_dirs[split], rel)
            reason = check_image(path)
            if reason is None:
                kept.append((path, class_index[label] if label else -1))
            else:
                bad.append(f"{path} {reason}")
        failed = verify([p for p, _ in kept]) if verify and kept else {}
        bad += [
            f"{path} is truncated or corrupt ({failed[path]})"
            for path, _ in kept
            if path in failed
        ]
        kept = [(p, label) for p, label in kept if p not in failed]
        paths[split] = np.array([p for p, _ in kept], dtype=object)
        labels[split] = np.array([label for _, label in kept], dtype=np.int32)
    if bad and not skip_bad_images:
        others = f" (and {len(bad) - 1} more bad files)" if len(bad) > 1 else ""
        raise ValueError(
            f"{bad[0]}{others}; remove it or set data.skip_corrupt_images=True "
            "to leave such files out"
        )
    for report in bad:
        logging.warning("Skipping %s.", report)
    if not len(paths["train"]):
        raise FileNotFoundError(
            f"image folder {root} holds no images ({', '.join(EXTENSIONS)})"
        )
    return Folder(root, paths, labels, class_names)
