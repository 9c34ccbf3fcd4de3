"""Image folders of every shape a user has: layouts, links, formats, bad files.

The images are generated with a photograph's structure (1/f spectrum, edges;
`experiments.benchmark_input.photo_like`), written by PIL in each format.
"""

import io
import logging
import os

import numpy as np
import pytest

pytest.importorskip("tensorflow")
from PIL import Image  # noqa: E402

from byol.data import pipeline, preprocess, sources  # noqa: E402
from experiments.benchmark_input import photo_like  # noqa: E402
from tests.fixtures import tiny_config  # noqa: E402

RNG = np.random.default_rng(0)


def _photo(height=40, width=48):
    return photo_like(RNG, height, width)


def _write(path, image=None, fmt="JPEG", **kwargs):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = Image.fromarray(_photo() if image is None else image)
    image.save(path, fmt, **kwargs)
    return path


def _classes(root, names=("cat", "dog"), n=4, split=""):
    for name in names:
        for i in range(n):
            _write(os.path.join(root, split, name, f"{i}.jpg"))
    return root


def _load(root, split="train", **kwargs):
    kwargs.setdefault("is_training", False)
    kwargs.setdefault("batch_dims", (1, 4))
    return list(
        pipeline.load(
            f"image_folder:{root}",
            split,
            image_size=16,
            process_index=0,
            process_count=1,
            **kwargs,
        )
    )


def _labels(batches):
    return np.concatenate([b["labels"][b["mask"]] for b in batches]).tolist()


# ------------------------------------------------------------------ layouts
def test_symlinked_class_folder_is_followed_and_a_link_loop_ends(tmp_path):
    root = _classes(str(tmp_path / "photos"), names=("cat",))
    elsewhere = _classes(str(tmp_path / "elsewhere"), names=("dog",))
    os.symlink(os.path.join(elsewhere, "dog"), os.path.join(root, "dog"))
    os.symlink(root, os.path.join(root, "cat", "loop"))  # back up the tree
    info = pipeline.dataset_info(f"image_folder:{root}")
    assert info.num_classes == 2 and info.num_examples["train"] == 8


def test_loose_images_beside_classes_are_unlabelled_and_left_out_of_probes(
    tmp_path, caplog
):
    root = _classes(str(tmp_path), n=5)
    for i in range(3):
        _write(os.path.join(root, f"loose_{i}.jpg"))
    with caplog.at_level(logging.WARNING):
        info = pipeline.dataset_info(f"image_folder:{root}", val_size=0)
    assert (
        "3 images directly in" in caplog.text and "have no class folder" in caplog.text
    )
    assert info.num_classes == 2 and info.num_unlabelled == 3
    everything = _labels(_load(root, val_size=0))
    assert sorted(everything) == [-1] * 3 + [0] * 5 + [1] * 5
    labelled = _labels(_load(root, labelled_only=True, val_size=0))
    assert sorted(labelled) == [0] * 5 + [1] * 5  # what the probes see


def test_a_test_class_that_training_lacks_is_refused(tmp_path):
    root = str(tmp_path)
    _classes(root, names=("cat", "dog"), split="train")
    _classes(root, names=("cat", "owl"), split="test")
    with pytest.raises(ValueError, match="class 'owl' of .*test has no images in"):
        pipeline.dataset_info(f"image_folder:{root}")


def _refused_before_step_1(config, tmp_path, match):
    from byol import train  # noqa: PLC0415

    workdir = tmp_path / "workdir"
    with pytest.raises(ValueError, match=match) as error:
        train.pretrain(config, str(workdir))
    assert "\n" not in str(error.value)
    assert not workdir.exists()  # nothing written


def _folder_config(root, **evaluation):
    config = tiny_config("unused", max_steps=2)
    config.data.dataset = f"image_folder:{root}"
    config.data.image_size = 16
    config.data.val_size = -1
    config.evaluation.update(evaluation)
    return config


def test_missing_splits_and_labels_are_refused_before_step_1(tmp_path):
    no_test = _classes(str(tmp_path / "no_test"), split="train", n=10)
    _refused_before_step_1(_folder_config(no_test), tmp_path, "has no test examples")
    both = str(tmp_path / "both")
    _classes(both, split="train", n=10)
    _classes(both, split="test")
    config = _folder_config(both)
    config.data.val_size = 0
    _refused_before_step_1(config, tmp_path, r"no val examples \(data.val_size 0\)")
    unlabelled = str(tmp_path / "unlabelled")
    for i in range(12):
        _write(os.path.join(unlabelled, f"{i}.jpg"))
    _refused_before_step_1(
        _folder_config(unlabelled),
        tmp_path,
        "has no labels, so it cannot be probed; give it class folders, or set "
        "evaluation.final_evaluation=False",
    )


def test_an_unlabelled_folder_pre_trains_without_evaluations(tmp_path):
    from byol import train  # noqa: PLC0415

    root = str(tmp_path / "photos")
    for i in range(12):
        _write(os.path.join(root, f"{i}.jpg"))
    config = _folder_config(root, final_evaluation=False, probe_every_steps=0)
    config.training.checkpoint_every_steps = 1
    results = train.pretrain(config, str(tmp_path / "run"))
    assert results["steps"] == 2 and "evaluation" not in results
    assert np.isfinite(results["final_scalars"]["repr_loss"])
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["1", "2"]


# ------------------------------------------------------------------ formats
def _encoded(image, fmt, mode=None, **kwargs):
    picture = Image.fromarray(image)
    if mode:
        picture = picture.convert(mode)
    buffer = io.BytesIO()
    picture.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


FORMATS = {
    "grayscale jpeg": lambda im: _encoded(im[..., 0], "JPEG"),
    "cmyk jpeg": lambda im: _encoded(im, "JPEG", "CMYK"),
    "rgba png": lambda im: _encoded(np.dstack([im, im[..., :1]]), "PNG"),
    "16-bit png": lambda im: _encoded(im[..., 0].astype(np.uint16) * 257, "PNG"),
    "palette gif": lambda im: _encoded(im, "GIF", "P"),
    "bmp": lambda im: _encoded(im, "BMP"),
}


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_format_decodes_to_the_rgb_that_pil_reads(name):
    data = FORMATS[name](_photo())
    whole = preprocess.decode_and_crop(
        preprocess.tf.constant(data),
        lambda shape: preprocess.tf.stack([0, 0, *shape[:2]]),
    ).numpy()
    picture = Image.open(io.BytesIO(data))
    if picture.mode == "I;16":
        expected = np.repeat((np.asarray(picture) // 257)[..., None], 3, axis=-1)
    else:
        expected = np.asarray(picture.convert("RGB"))
    assert whole.dtype == np.uint8 and whole.shape == expected.shape
    # JPEG decoders may round differently by a level or two.
    assert np.abs(whole.astype(int) - expected.astype(int)).max() <= 2


def test_exif_orientation_is_not_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees to view"
    path = _write(
        str(tmp_path / "cat" / "tall.jpg"), _photo(60, 30), exif=exif.tobytes()
    )
    assert Image.open(path).getexif()[0x0112] == 6
    encoded = preprocess.tf.io.read_file(path)
    stored = preprocess.tf.io.decode_jpeg(encoded).shape
    assert tuple(stored[:2]) == (60, 30)  # as stored, not as shown


# ----------------------------------------------------------------- bad files
def test_a_jpeg_corrupt_in_its_middle_is_named_in_evaluation(tmp_path):
    root = _classes(str(tmp_path), n=3)
    path = os.path.join(root, "cat", "bad.jpg")
    data = bytearray(_encoded(_photo(96, 96), "JPEG", quality=90))
    # An end-of-image marker mid-scan: libjpeg always notices it. (Bytes
    # overwritten at random may still parse as Huffman codes: undetectable,
    # and in a third of photos with 200 bytes of 0x55.)
    middle = len(data) // 2
    data[middle : middle + 2] = b"\xff\xd9"  # its ends intact
    with open(path, "wb") as f:
        f.write(data)
    assert sources.image_folder.check_image(path) is None  # its bytes look right
    # libjpeg only warns, and fills the rest in grey; the scan names it.
    with pytest.raises(ValueError) as error:
        _load(root)
    assert str(error.value).startswith(
        f"{path} is truncated or corrupt (Corrupt JPEG data: "
    )
    batches = _load(root, skip_bad_images=True)
    assert sum(int(b["mask"].sum()) for b in batches) == 6


def test_decode_verdicts_are_kept_per_file_across_scans(tmp_path, monkeypatch):
    root = _classes(str(tmp_path), names=("cat",), n=3)
    paths = sorted(
        os.path.join(root, "cat", name)
        for name in os.listdir(os.path.join(root, "cat"))
    )
    decoded = []
    real = sources._decode_pass
    monkeypatch.setattr(
        sources, "_decode_pass", lambda ps: decoded.append(list(ps)) or real(ps)
    )
    assert sources.decode_errors(paths) == {}
    assert sources.decode_errors(paths) == {}  # from the cache: nothing decoded
    _write(paths[1])  # rewritten: decoded again, alone
    assert sources.decode_errors(paths) == {}
    assert decoded == [paths, [], [paths[1]]]
