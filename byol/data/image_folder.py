"""A folder of the user's own images as a dataset (``image_folder:/path``).

Layout (the same as tfds's ImageFolder, with two relaxations):

* If the folder has a ``train/`` subfolder, its subfolders are splits:
  ``train/`` and, for ``test``, the first of ``test/``, ``validation/``,
  ``val/``. Otherwise the whole folder is ``train`` and there is no ``test``.
* Inside a split, images in a subfolder ``<class>/`` (at any depth below it)
  get that class's label (classes sorted by name, over all splits); images
  directly in the split folder get label -1 (unlabelled). A folder without
  class subfolders is therefore an unlabelled pre-training set.
* Files are recognised by extension (.jpg .jpeg .png .gif .bmp, any case);
  other files and hidden entries are ignored.

Bad files are found at load time, before any batch: a file that cannot be
read, whose first bytes are not an image format's signature, or whose end is
not the format's end (a truncated copy) and which then fails to decode
(`verify`). The first is named in a ValueError, or, with ``skip_bad_images``
(config: ``data.skip_corrupt_images``), every one is left out with a warning
naming it. A file whose ends look right but whose body is garbled is found
while decoding; the input pipeline names it, or skips it likewise.

Examples are ordered by a hash of their relative path (a fixed pseudo-random
order that does not depend on the listing), and ``val`` is the last 10% of
``train`` in that order (at most 10,000). Pure Python; the scan reads the
first 16 and the last 12 bytes of each file (and decodes those that look
truncated), once per process and folder.
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
      paths: per source split (``'train'``, maybe ``'test'``), the image paths
        in their fixed order.
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
    """Returns (relative path, class or '') of the images under `split_dir`."""
    found = []
    for parent, dirs, files in os.walk(split_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel_parent = os.path.relpath(parent, split_dir)
        label = "" if rel_parent == "." else rel_parent.split(os.sep)[0]
        for name in files:
            if not name.startswith(".") and name.lower().endswith(EXTENSIONS):
                found.append((os.path.normpath(os.path.join(rel_parent, name)), label))
    return found


def _looks_complete(head: bytes, tail: bytes, size: int) -> bool:
    """Whether a file ends as its format says a whole image ends."""
    if head.startswith(b"\xff\xd8"):
        return tail.endswith(b"\xff\xd9")  # JPEG end-of-image marker
    if head.startswith(b"\x89PNG"):
        return tail.endswith(b"IEND\xaeB`\x82")  # PNG's IEND chunk
    if head.startswith(b"GIF"):
        return tail.endswith(b";")  # GIF trailer
    # BMP: the header's file size.
    return len(head) >= 6 and int.from_bytes(head[2:6], "little") <= size


def check_image(path: str, verify=None) -> str | None:
    """Why `path` is not a usable image, or None if it looks like one.

    Args:
      path: an image file.
      verify: optional ``verify(path) -> str | None`` (e.g. a full decode),
        called only for a file that does not end as its format says, since
        some writers append bytes after a complete image.

    Returns:
      A reason, such as ``"cannot be read (Permission denied)"``, or None.

    Example:
      >>> check_image('/path/to/photo.jpg')  # doctest: +SKIP
    """
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            size = f.seek(0, os.SEEK_END)
            f.seek(max(size - 12, 0))
            tail = f.read()
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    if not head.startswith(_SIGNATURES):
        return "is not a JPEG/PNG/GIF/BMP image (bad file signature)"
    if _looks_complete(head, tail, size):
        return None
    if verify is None:
        return "is truncated (it does not end as its format says)"
    reason = verify(path)
    return None if reason is None else f"is truncated or corrupt ({reason})"


def _order_key(relative_path: str) -> bytes:
    return hashlib.md5(relative_path.encode("utf-8")).digest()


@functools.lru_cache(maxsize=8)  # every `load` opens its split
def scan(root: str, skip_bad_images: bool = False, verify=None) -> Folder:
    """Lists and checks the images of a folder.

    Args:
      root: the folder (see the module docstring for its layout).
      skip_bad_images: leave out files that are not usable images (with a
        warning naming each) instead of raising.
      verify: see `check_image`.

    Returns:
      The `Folder`.

    Raises:
      FileNotFoundError: if `root` is not a directory or holds no images.
      ValueError: naming the first file that is not a usable image, and how
        many others there are (unless skipped).

    Example:
      >>> folder = scan('/path/to/photos')  # doctest: +SKIP
      >>> folder.paths['train'][:2]  # doctest: +SKIP
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder {root} not found (not a directory)")
    split_dirs = {"train": root}
    if os.path.isdir(os.path.join(root, "train")):
        split_dirs = {"train": os.path.join(root, "train")}
        for name in _TEST_DIRS:
            if os.path.isdir(os.path.join(root, name)):
                split_dirs["test"] = os.path.join(root, name)
                break
    listed = {split: _list_images(d) for split, d in split_dirs.items()}
    class_names = tuple(
        sorted({c for items in listed.values() for _, c in items} - {""})
    )
    class_index = {name: i for i, name in enumerate(class_names)}
    paths, labels, bad = {}, {}, []
    for split, items in listed.items():
        items.sort(key=lambda item: _order_key(item[0]))
        full = [os.path.join(split_dirs[split], rel) for rel, _ in items]
        keep = []
        for path in full:
            reason = check_image(path, verify)
            if reason is not None:
                bad.append(f"{path} {reason}")
            keep.append(reason is None)
        paths[split] = np.array(
            [p for p, k in zip(full, keep, strict=True) if k], dtype=object
        )
        labels[split] = np.array(
            [
                class_index[c] if c else -1
                for (_, c), k in zip(items, keep, strict=True)
                if k
            ],
            dtype=np.int32,
        )
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
