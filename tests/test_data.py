"""Tests of byol.data: builders, splits, resume, sharding, host crops, prefetch."""

import gzip
import itertools
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from byol import data
from byol.data import catalog, device, sampling

tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")

from byol.data import pipeline, prepare, preprocess, sources  # noqa: E402
from tests.fixtures import write_fake_fashion_mnist  # noqa: E402

NUM_TRAIN, NUM_TEST, VAL = 300, 70, 50
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def fm(tmp_path_factory):
    """A tiny fashion_mnist (random images) prepared from IDX files."""
    data_dir = str(tmp_path_factory.mktemp("fm_data"))
    return data_dir, write_fake_fashion_mnist(data_dir, NUM_TRAIN, NUM_TEST)


def _load(fm_dir, split, **kwargs):
    kwargs.setdefault("process_index", 0)
    kwargs.setdefault("process_count", 1)
    return pipeline.load(
        "fashion_mnist", split, data_dir=fm_dir, val_size=VAL, **kwargs
    )


def _eval_pass(fm_dir, split, batch_dims=(2, 16), **kwargs):
    """Concatenates the unmasked examples of one evaluation pass."""
    batches = list(
        _load(fm_dir, split, is_training=False, batch_dims=batch_dims, **kwargs)
    )
    images = np.concatenate([b["images"][b["mask"]] for b in batches])
    labels = np.concatenate([b["labels"][b["mask"]] for b in batches])
    return batches, images, labels


def _take(iterator, n):
    return list(itertools.islice(iterator, n))


def _keys(images):
    return [x.tobytes() for x in images]


def test_import_does_not_import_tensorflow():
    code = (
        "import sys, byol.data as d; d.DATASETS; "
        "assert 'tensorflow' not in sys.modules, 'tf imported'; "
        "assert 'tensorflow_datasets' not in sys.modules, 'tfds imported'"
    )
    env = dict(os.environ, PYTHONPATH=REPO)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True)
    assert result.returncode == 0, result.stderr.decode()[-2000:]


def test_fashion_mnist_built_from_idx_files(fm):
    fm_dir, arrays = fm
    info = pipeline.dataset_info("fashion_mnist", data_dir=fm_dir, val_size=VAL)
    assert info.num_examples == {
        "train": NUM_TRAIN,
        "train_minus_val": NUM_TRAIN - VAL,
        "val": VAL,
        "test": NUM_TEST,
    }
    assert (info.num_classes, info.image_shape, info.fixed_size) == (
        10,
        (28, 28, 1),
        True,
    )
    for split in ("train", "test"):
        batches, images, labels = _eval_pass(fm_dir, split)
        assert batches[0]["images"].dtype == np.uint8
        assert batches[0]["images"].shape == (2, 16, 28, 28, 1)
        assert batches[0]["labels"].dtype == np.int32
        assert batches[0]["mask"].dtype == bool
        # Same (image, label) pairs as the IDX files, in tfds's stored order.
        expected = dict(
            zip(_keys(arrays[split][0][..., None]), arrays[split][1], strict=True)
        )
        got = dict(zip(_keys(images), labels, strict=True))
        assert len(got) == len(images) == len(expected)
        assert got == {k: int(v) for k, v in expected.items()}


def test_read_idx_rejects_bad_magic(tmp_path):
    from byol.data import fashion_mnist

    path = tmp_path / "bad.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"\x12\x34\x56\x78" + b"\0" * 16)
    with pytest.raises(ValueError, match="bad magic"):
        fashion_mnist.read_idx(str(path))


def test_held_out_split_is_disjoint_tail_of_train(fm):
    fm_dir, _ = fm
    _, train, train_labels = _eval_pass(fm_dir, "train")
    _, minus, minus_labels = _eval_pass(fm_dir, "train_minus_val")
    _, val, val_labels = _eval_pass(fm_dir, "val")
    assert len(minus) + len(val) == len(train)
    assert not set(_keys(minus)) & set(_keys(val))
    np.testing.assert_array_equal(np.concatenate([minus, val]), train)
    np.testing.assert_array_equal(
        np.concatenate([minus_labels, val_labels]), train_labels
    )


def test_eval_pass_in_stored_order_with_padding_mask(fm):
    fm_dir, _ = fm
    builder = tfds.builder_from_directory(
        os.path.join(fm_dir, "fashion_mnist", "3.0.1")
    )
    stored = tfds.as_numpy(builder.as_dataset(split="test", batch_size=-1))
    batches, images, labels = _eval_pass(fm_dir, "test", batch_dims=(2, 8))
    assert len(batches) == -(-NUM_TEST // 16)
    np.testing.assert_array_equal(images, stored["image"])
    np.testing.assert_array_equal(labels, stored["label"])
    last = batches[-1]
    valid = NUM_TEST - 16 * (len(batches) - 1)
    np.testing.assert_array_equal(last["mask"].reshape(-1), np.arange(16) < valid)
    assert (last["labels"].reshape(-1)[valid:] == -1).all()


def test_missing_datasets_say_how_to_get_them(tmp_path):
    empty = str(tmp_path)
    cases = {
        "fashion_mnist": "make fashion_mnist",
        "cifar10": "python -m byol.data.prepare cifar10",
        "imagenet2012": "ILSVRC2012_img_train.tar",
    }
    for name, hint in cases.items():
        with pytest.raises(data.DatasetNotFoundError) as caught:
            pipeline.dataset_info(name, data_dir=empty)
        message = str(caught.value)
        assert hint in message and empty in message and "\n" not in message


def test_bad_names_raise_value_error(fm):
    fm_dir, _ = fm
    with pytest.raises(ValueError, match="dataset 'mnist' unknown; expected one of"):
        pipeline.load(
            "mnist", "train", is_training=True, batch_dims=[2, 4], data_dir=fm_dir
        )
    with pytest.raises(ValueError, match="split 'valid' unknown"):
        pipeline.load("fashion_mnist", "valid", is_training=True, batch_dims=[2, 4])


def test_stl10_splits_add_unlabelled_to_train():
    sizes = {"unlabelled": 100_000, "train": 5_000, "test": 8_000}
    spec = catalog.spec("stl10")

    def ranges(split, **kwargs):
        return catalog.split_ranges(
            split,
            sizes,
            spec.labelled,
            spec.test,
            spec.val_size,
            unlabelled=spec.unlabelled,
            **kwargs,
        )

    assert ranges("train") == [("unlabelled", 0, 100_000), ("train", 0, 5_000)]
    assert ranges("train_minus_val") == [
        ("unlabelled", 0, 100_000),
        ("train", 0, 4_000),
    ]
    assert ranges("val") == [("train", 4_000, 5_000)]
    assert ranges("test") == [("test", 0, 8_000)]
    assert ranges("train", labelled_only=True) == [("train", 0, 5_000)]


def test_prepare_works_around_tfds_importlib_resources():
    from byol.data import prepare

    prepare._work_around_tfds_importlib_resources()
    # Reached by download_and_prepare; fails without the work-around when the
    # `importlib_resources` backport is not installed.
    assert type(tfds.builder("cifar10", data_dir="/nonexistent")).url_infos


@pytest.mark.parametrize("k", [1, 9, 10, 17])
def test_resume_yields_the_same_batches(fm, k):
    # 250 examples at 32 per batch: epochs end inside batches 7, 15 and 23.
    fm_dir, _ = fm
    kwargs = dict(is_training=True, batch_dims=(2, 16), seed=3)
    fresh = _take(_load(fm_dir, "train_minus_val", **kwargs), k + 6)
    resumed = _take(_load(fm_dir, "train_minus_val", start_step=k, **kwargs), 6)
    for expected, got in zip(fresh[k:], resumed, strict=True):
        for key in ("images", "labels"):
            np.testing.assert_array_equal(got[key], expected[key])


def test_training_stream_covers_each_epoch_once(fm):
    fm_dir, _ = fm
    n = NUM_TRAIN - VAL
    batches = _load(fm_dir, "train_minus_val", is_training=True, batch_dims=(2, 16))
    first = _take(batches, 2 * -(-n // 32))
    images = np.concatenate([b["images"].reshape(-1, 28, 28, 1) for b in first])
    _, all_images, _ = _eval_pass(fm_dir, "train_minus_val")
    for epoch in range(2):
        seen = sorted(_keys(images[epoch * n : (epoch + 1) * n]))
        assert seen == sorted(_keys(all_images))
    assert not np.array_equal(images[:n], images[n : 2 * n])  # Reshuffled.


def test_train_order_is_pure_and_seeded():
    a = sampling.TrainOrder(10, 4, seed=1)
    b = sampling.TrainOrder(10, 4, seed=1)
    c = sampling.TrainOrder(10, 4, seed=2)
    stream = np.concatenate([a.indices(k) for k in range(10)])
    np.testing.assert_array_equal(
        stream, np.concatenate([b.indices(k) for k in range(10)])
    )
    for epoch in range(4):
        assert sorted(stream[epoch * 10 : (epoch + 1) * 10]) == list(range(10))
    np.testing.assert_array_equal(b.indices(7), a.indices(7))  # Any order of calls.
    assert not np.array_equal(
        stream[:10], np.concatenate([c.indices(k) for k in range(3)])[:10]
    )


@pytest.mark.parametrize("n, count", [(300, 2), (7, 3), (2, 3)])
def test_shards_are_disjoint_and_cover(n, count):
    bounds = [sampling.shard_bounds(n, p, count) for p in range(count)]
    covered = np.concatenate([np.arange(a, b) for a, b in bounds])
    np.testing.assert_array_equal(covered, np.arange(n))
    assert max(b - a for a, b in bounds) - min(b - a for a, b in bounds) <= 1


@pytest.mark.parametrize("count", [2, 3])
def test_processes_read_disjoint_shards_covering_the_split(fm, count):
    fm_dir, _ = fm
    _, everything, _ = _eval_pass(fm_dir, "test")
    passes = [
        _eval_pass(fm_dir, "test", process_index=p, process_count=count)
        for p in range(count)
    ]
    assert len({len(batches) for batches, _, _ in passes}) == 1  # Same step count.
    shards = [_keys(images) for _, images, _ in passes]
    # In order: the shards, one after the other, are the whole split.
    assert sum(shards, []) == _keys(everything)
    # Training streams stay inside their process's shard.
    for p in range(count):
        stream = _load(
            fm_dir,
            "test",
            is_training=True,
            batch_dims=(2, 16),
            process_index=p,
            process_count=count,
        )
        seen = {
            key
            for b in _take(stream, 3)
            for key in _keys(b["images"].reshape(-1, 28, 28, 1))
        }
        assert seen == set(shards[p])  # 96 draws cover a shard of <= 35.


# --- JPEG / image-folder path ---------------------------------------------


def _write_image(path, image):
    encode = tf.io.encode_png if path.endswith(".png") else tf.io.encode_jpeg
    tf.io.write_file(path, encode(tf.constant(image)))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """train/{cat,dog} and test/{cat,dog} with JPEGs and PNGs of varied sizes."""
    root = str(tmp_path_factory.mktemp("images"))
    rng = np.random.default_rng(1)
    for split, n in (("train", 12), ("test", 5)):
        for label in ("cat", "dog"):
            os.makedirs(os.path.join(root, split, label))
            for i in range(n):
                h, w = rng.integers(24, 80, size=2)
                image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                name = f"{i}.png" if i % 3 == 0 else f"{i}.jpg"
                _write_image(os.path.join(root, split, label, name), image)
    with open(os.path.join(root, "train", "README.txt"), "w") as f:
        f.write("not an image, ignored by extension")
    return root


def _folder_load(root, split, **kwargs):
    kwargs.setdefault("process_index", 0)
    kwargs.setdefault("process_count", 1)
    return pipeline.load(f"image_folder:{root}", split, image_size=16, **kwargs)


def test_image_folder_host_crops_two_views(folder):
    info = pipeline.dataset_info(f"image_folder:{folder}")
    assert info.num_examples == {
        "train": 24,
        "train_minus_val": 22,
        "val": 2,
        "test": 10,
    }
    assert (info.num_classes, info.image_shape, info.fixed_size) == (2, None, False)
    batch = next(_folder_load(folder, "train", is_training=True, batch_dims=(2, 4)))
    assert set(batch) == {"view1", "view2", "labels"}
    assert batch["view1"].shape == batch["view2"].shape == (2, 4, 16, 16, 3)
    assert batch["view1"].dtype == np.uint8 and batch["labels"].dtype == np.int32
    assert set(batch["labels"].reshape(-1)) <= {0, 1}
    for i in range(8):  # Independent crops per view.
        v1, v2 = (
            batch["view1"].reshape(8, 16, 16, 3)[i],
            batch["view2"].reshape(8, 16, 16, 3)[i],
        )
        assert not np.array_equal(v1, v2)
    single = next(
        _folder_load(
            folder, "train", is_training=True, batch_dims=(2, 4), two_views=False
        )
    )
    assert set(single) == {"images", "labels"}


def test_image_folder_resume_reproduces_crops(folder):
    kwargs = dict(is_training=True, batch_dims=(2, 4), seed=5)
    fresh = _take(_folder_load(folder, "train", **kwargs), 8)
    resumed = _take(_folder_load(folder, "train", start_step=5, **kwargs), 3)
    for expected, got in zip(fresh[5:], resumed, strict=True):
        for key in ("view1", "view2", "labels"):
            np.testing.assert_array_equal(got[key], expected[key])


def test_image_folder_eval_is_centre_crop(folder):
    batches = list(_folder_load(folder, "test", is_training=False, batch_dims=(2, 4)))
    assert sum(int(b["mask"].sum()) for b in batches) == 10
    source = sources.open_split(f"image_folder:{folder}", "", "test")
    paths, labels = source.paths, source.labels
    images = np.concatenate([b["images"][b["mask"]] for b in batches])
    np.testing.assert_array_equal(
        np.concatenate([b["labels"][b["mask"]] for b in batches]), labels
    )
    for path, got in zip(paths, images, strict=True):
        if not path.endswith(".png"):
            continue  # JPEG decoding may differ slightly between decoders.
        full = tf.io.decode_png(tf.io.read_file(path)).numpy()
        h, w = full.shape[:2]
        side = int(224 / 256 * min(h, w))
        y, x = (h - side + 1) // 2, (w - side + 1) // 2
        crop = full[y : y + side, x : x + side]
        expected = tf.image.resize(crop, [16, 16], method="bicubic").numpy()
        expected = np.clip(np.round(expected), 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(got, expected)


def test_random_crop_window_follows_the_recipe():
    shape = tf.constant([300, 400, 3])
    windows = np.stack(
        [
            preprocess.random_crop_window(shape, tf.constant([7, s])).numpy()
            for s in range(300)
        ]
    )
    y, x, h, w = windows.T
    assert (
        (y >= 0).all()
        and (x >= 0).all()
        and (y + h <= 300).all()
        and (x + w <= 400).all()
    )
    area = h * w / (300 * 400)
    assert 0.06 < area.min() < 0.15 and area.max() <= 1.0
    unclipped = (h < 300) & (w < 400)
    aspect = w[unclipped] / h[unclipped]
    assert aspect.min() > 0.73 and aspect.max() < 1.37
    assert len({tuple(row) for row in windows}) == 300


def test_non_image_file_named_in_error(folder, tmp_path):
    root = str(tmp_path)
    os.makedirs(os.path.join(root, "cats"))
    good = np.zeros((20, 20, 3), np.uint8)
    for i in range(3):
        _write_image(os.path.join(root, "cats", f"{i}.jpg"), good)
    bad = os.path.join(root, "cats", "notes.jpg")
    with open(bad, "w") as f:
        f.write("this is text")
    with pytest.raises(ValueError, match="notes.jpg is not a JPEG/PNG/GIF/BMP image"):
        next(_folder_load(root, "train", is_training=True, batch_dims=(1, 2)))
    batch = next(
        _folder_load(
            root, "train", is_training=True, batch_dims=(1, 2), skip_bad_images=True
        )
    )
    assert batch["view1"].shape == (1, 2, 16, 16, 3)


def _jpeg_folder(root, n=3):
    """`n` valid 40x40 JPEGs `0.jpg`, ...; returns their encoded bytes."""
    image = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    encoded = tf.io.encode_jpeg(tf.constant(image)).numpy()
    for i in range(n):
        with open(os.path.join(root, f"{i}.jpg"), "wb") as f:
            f.write(encoded)
    return encoded


def test_truncated_image_named_before_any_batch(tmp_path, caplog):
    root = str(tmp_path)
    encoded = _jpeg_folder(root)
    with open(os.path.join(root, "1.jpg"), "wb") as f:
        f.write(encoded[: len(encoded) // 3])  # an interrupted copy
    # Found when the folder is opened (the decoder confirms it), not mid-epoch.
    with pytest.raises(ValueError) as caught:
        pipeline.dataset_info(f"image_folder:{root}")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(
        f"{os.path.join(root, '1.jpg')} is truncated or corrupt ("
    )
    assert message.endswith("set data.skip_corrupt_images=True to leave such files out")
    with caplog.at_level("WARNING"):
        info = pipeline.dataset_info(f"image_folder:{root}", skip_bad_images=True)
        batches = list(
            _folder_load(
                root,
                "train",
                is_training=False,
                batch_dims=(1, 3),
                skip_bad_images=True,
            )
        )
    assert info.num_examples["train"] == 2
    assert sum(int(b["mask"].sum()) for b in batches) == 2
    assert f"Skipping {os.path.join(root, '1.jpg')} is truncated" in caplog.text


def test_jpeg_with_trailing_bytes_is_not_truncated(tmp_path):
    root = str(tmp_path)
    encoded = _jpeg_folder(root)
    with open(os.path.join(root, "1.jpg"), "ab") as f:
        f.write(b"appended by a camera")  # after the end marker: decodes fine
    assert pipeline.dataset_info(f"image_folder:{root}").num_examples["train"] == 3
    del encoded


def test_unreadable_file_named_before_any_batch(tmp_path):
    root = str(tmp_path)
    _jpeg_folder(root)
    os.symlink(os.path.join(root, "gone.jpg"), os.path.join(root, "link.jpg"))
    with pytest.raises(ValueError) as caught:
        pipeline.dataset_info(f"image_folder:{root}")
    assert str(caught.value).startswith(
        f"{os.path.join(root, 'link.jpg')} cannot be read (No such file or directory);"
    )
    info = pipeline.dataset_info(f"image_folder:{root}", skip_bad_images=True)
    assert info.num_examples["train"] == 3


def _garble(path):
    """A flipped byte in a PNG's pixel data: bad CRC, its ends still right."""
    with open(path, "rb") as f:
        png = bytearray(f.read())
    png[len(png) // 2] ^= 0xFF
    with open(path, "wb") as f:
        f.write(png)


@pytest.fixture(scope="module")
def garbled_folder(tmp_path_factory):
    """good/ and bad/ classes: bad/x.png garbled after the folder was scanned.

    The scan (which decodes every file) saw it whole, so it fails while the
    stream decodes it, as a file damaged during a run would. Its label
    (class 0, "bad") appears on no other image, so a batch holding that label
    holds the garbled image.
    """
    root = str(tmp_path_factory.mktemp("garbled"))
    rng = np.random.default_rng(2)
    for label in ("bad", "good"):
        os.makedirs(os.path.join(root, label))
    for i in range(11):
        image = rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)
        _write_image(os.path.join(root, "good", f"{i}.png"), image)
    _write_image(os.path.join(root, "bad", "x.png"), image)
    for skip in (False, True):
        pipeline.dataset_info(f"image_folder:{root}", skip_bad_images=skip)
    _garble(os.path.join(root, "bad", "x.png"))
    return root


def test_garbled_image_is_named_before_any_batch(tmp_path):
    root = str(tmp_path)
    image = np.random.default_rng(3).integers(0, 256, (30, 30, 3), dtype=np.uint8)
    for i in range(3):
        _write_image(os.path.join(root, "good", f"{i}.png"), image)
    _garble(os.path.join(root, "good", "1.png"))
    with pytest.raises(ValueError) as caught:
        pipeline.dataset_info(f"image_folder:{root}")
    assert str(caught.value).startswith(
        f"{os.path.join(root, 'good', '1.png')} is truncated or corrupt ("
    )


def test_garbled_image_is_named_mid_stream(garbled_folder):
    path = os.path.join(garbled_folder, "bad", "x.png")
    stream = _folder_load(garbled_folder, "train", is_training=True, batch_dims=(1, 4))
    with pytest.raises(ValueError) as caught:
        _take(stream, 6)  # 24 draws of 12 examples: it comes up
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"cannot decode image {path}: ")
    assert "set data.skip_corrupt_images=True" in message


def test_garbled_image_is_skipped_the_same_way_on_resume(garbled_folder, caplog):
    kwargs = dict(is_training=True, batch_dims=(1, 4), skip_bad_images=True, seed=3)
    with caplog.at_level("WARNING"):
        fresh = _take(_folder_load(garbled_folder, "train", **kwargs), 9)
    path = os.path.join(garbled_folder, "bad", "x.png")
    assert f"Skipping cannot decode image {path}: " in caplog.text
    assert all((b["labels"] == 1).all() for b in fresh)  # never the bad class
    # A run resumed after the bad image was found (and one resumed before)
    # sees the same batches as the run that found it.
    for start in (2, 7):
        resumed = _take(
            _folder_load(garbled_folder, "train", start_step=start, **kwargs), 2
        )
        for expected, got in zip(fresh[start : start + 2], resumed, strict=True):
            for key in ("view1", "view2", "labels"):
                np.testing.assert_array_equal(got[key], expected[key])


def test_garbled_image_is_masked_out_of_evaluation(garbled_folder):
    batches = list(
        _folder_load(
            garbled_folder,
            "train",
            is_training=False,
            batch_dims=(1, 4),
            skip_bad_images=True,
        )
    )
    assert sum(int(b["mask"].sum()) for b in batches) == 11
    labels = np.concatenate([b["labels"][b["mask"]] for b in batches])
    assert (labels == 1).all()


# --- tfds JPEG datasets (ArrayRecord random access) --------------------------


def test_tfds_jpeg_dataset_converted_to_array_record(tmp_path):
    """A stand-in `imagenette` prepared as TFRecord: refused, converted, read."""
    with tfds.core.registered.skip_registration():

        class FakeImagenette(tfds.core.GeneratorBasedBuilder):
            name = "imagenette"
            code_path = None
            VERSION = tfds.core.Version("1.0.0")
            BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="full-size-v2")]

            def _info(self):
                features = {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
                return tfds.core.DatasetInfo(
                    builder=self, features=tfds.features.FeaturesDict(features)
                )

            def _split_generators(self, dl_manager):
                return {
                    "train": self._generate_examples(20),
                    "validation": self._generate_examples(6),
                }

            def _generate_examples(self, n):
                rng = np.random.default_rng(n)
                for i in range(n):
                    h, w = rng.integers(20, 50, size=2)
                    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                    yield i, {"image": image, "label": i % 10}

    data_dir = str(tmp_path)
    FakeImagenette(data_dir=data_dir).download_and_prepare(file_format="tfrecord")
    kwargs = dict(image_size=16, data_dir=data_dir, process_index=0, process_count=1)
    with pytest.raises(data.DatasetNotFoundError, match="byol.data.prepare imagenette"):
        pipeline.load(
            "imagenette", "train", is_training=True, batch_dims=(1, 4), **kwargs
        )
    prepare.prepare_dataset("imagenette", data_dir)
    batch = next(
        pipeline.load(
            "imagenette", "train", is_training=True, batch_dims=(1, 4), **kwargs
        )
    )
    assert batch["view1"].shape == (1, 4, 16, 16, 3)
    batches = list(
        pipeline.load(
            "imagenette", "test", is_training=False, batch_dims=(2, 2), **kwargs
        )
    )
    labels = np.concatenate([b["labels"][b["mask"]] for b in batches])
    np.testing.assert_array_equal(np.sort(labels), np.sort(np.arange(6) % 10))


# --- prefetch_to_device ------------------------------------------------------


def test_prefetch_to_device_shards_without_copy():
    devices = jax.local_devices()
    assert len(devices) == 2
    host = [
        {
            "images": np.full((2, 3, 4), i, np.uint8),
            "labels": np.arange(6).reshape(2, 3),
        }
        for i in range(5)
    ]
    out = list(device.prefetch_to_device(iter(host), size=2))
    assert len(out) == 5
    pmapped = jax.pmap(lambda b: b["images"].astype(np.int32) + b["labels"][:, None])
    reference = pmapped(host[0])  # pmap's own output sharding.
    for i, batch in enumerate(out):
        for key, leaf in batch.items():
            assert [s.device for s in leaf.addressable_shards] == devices
            assert [s.data.shape for s in leaf.addressable_shards] == [
                (1, *leaf.shape[1:])
            ] * 2
            np.testing.assert_array_equal(np.asarray(leaf), host[i][key])
            assert leaf.sharding.is_equivalent_to(reference.sharding, leaf.ndim)
    # pmap consumes donated inputs in place only when they need no copy: a
    # copied input (e.g. devices in another order) would survive the call.
    donating = jax.pmap(lambda x: x + 1, donate_argnums=0)
    result = donating(out[3]["images"])
    assert out[3]["images"].is_deleted()
    np.testing.assert_array_equal(np.asarray(result), host[3]["images"] + 1)
    reordered = device.device_sharding(devices[::-1])
    copied = jax.device_put(host[3]["images"], reordered)
    donating(copied)
    assert not copied.is_deleted()


def test_prefetch_keeps_size_batches_ahead():
    pulled = []

    def source():
        for i in range(6):
            pulled.append(i)
            yield {"x": np.zeros((2, 1), np.float32) + i}

    stream = device.prefetch_to_device(source(), size=3)
    next(stream)
    assert pulled == [0, 1, 2, 3]  # One consumed, three in flight.


# --- the real dataset, when prepared (`make fashion_mnist`) -------------------


@pytest.mark.skipif(
    not os.path.isdir(os.path.join(REPO, "data", "fashion_mnist")),
    reason="real fashion_mnist not prepared in data/",
)
def test_real_fashion_mnist_sizes():
    info = pipeline.dataset_info("fashion_mnist", data_dir=os.path.join(REPO, "data"))
    assert info.num_examples == {
        "train": 60_000,
        "train_minus_val": 50_000,
        "val": 10_000,
        "test": 10_000,
    }
    assert catalog.spec("fashion_mnist").val_size == 10_000
