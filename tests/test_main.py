"""Tests of bad input: byol.config_checks, and the command line (byol.main)."""

import json
import os
import subprocess
import sys

import pytest

from byol import config_checks
from byol import run_dir as run_dirs
from tests.fixtures import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _error(config):
    """The one-line message check_pretrain_config raises for `config`."""
    with pytest.raises(ValueError) as info:
        config_checks.check_pretrain_config(config)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_valid_config_passes():
    config_checks.check_pretrain_config(tiny_config("unused"))
    assert config_checks.per_device_batch(16) == 8  # 2 devices (conftest)


@pytest.mark.parametrize(
    "field, value, expected",
    [
        (
            "training.batch_size",
            15,
            "training.batch_size 15 is not divisible by the 2 devices; "
            "use a multiple of 2",
        ),
        ("data.dataset", "mnist", "data.dataset 'mnist' unknown; expected one of: "),
        ("model.encoder", "resnet9", "model.encoder 'resnet9' unknown; expected"),
        ("model.norm", "bm", "model.norm 'bm' unknown; expected one of: bn, gn_ws"),
        ("model.projector_norm", "batch", "model.projector_norm 'batch' unknown"),
        ("mode", "eval", "mode 'eval' unknown; expected one of: pretrain"),
        ("training.max_steps", 0, "training.max_steps must be a positive integer"),
        ("training.log_every_steps", -5, "training.log_every_steps must be a posi"),
        ("training.warmup_steps", 10, "training.warmup_steps (10) must not exceed"),
        ("training.base_target_ema", 1.5, "training.base_target_ema must be in"),
        ("training.base_learning_rate", -1.0, "training.base_learning_rate must be"),
        # Added with the bad-input suite (issue 6): ranges, NaN, dependencies.
        ("data.image_size", 0, "data.image_size must be a positive integer, got 0"),
        ("model.width_multiplier", 0, "model.width_multiplier must be a positive"),
        ("model.num_groups", 0, "model.num_groups must be a positive integer"),
        (
            "model.num_groups",
            3,
            "model.num_groups 3 does not divide the 8 channels that GroupNorm "
            "normalises; use a divisor of 8",
        ),
        ("model.encoder_norm", "group", "model.encoder_norm 'group' unknown"),
        ("model.encoder_ws", 2, "model.encoder_ws must be one of -1, 0, 1, got 2"),
        ("model.mlp_ws", -1, "model.mlp_ws must be one of 0, 1, got -1"),
        ("model.ws_eps", 0.0, "model.ws_eps must be a finite number > 0, got 0.0"),
        ("model.bn_init", True, "model.bn_init needs BN in every component"),
        ("model.projection_size", -16, "model.projection_size must be a positive"),
        (
            "training.base_learning_rate",
            float("nan"),
            "training.base_learning_rate must be a finite number >= 0, got nan",
        ),
        (
            "training.base_learning_rate",
            float("inf"),
            "training.base_learning_rate must be a finite number >= 0, got inf",
        ),
        ("training.weight_decay", -1e-6, "training.weight_decay must be a finite"),
        (
            "training.predictor_lr_multiplier",
            0.0,
            "training.predictor_lr_multiplier must be a finite number > 0",
        ),
        ("training.batch_size", 0, "training.batch_size must be a positive integer"),
        (
            "training.checkpoint_every_steps",
            0,
            "training.checkpoint_every_steps must be a positive integer",
        ),
        (
            "training.max_checkpoints_to_keep",
            0,
            "training.max_checkpoints_to_keep must be a positive integer",
        ),
        ("training.base_target_ema", float("nan"), "training.base_target_ema must"),
        ("data.min_crop_area", 0.0, "data.min_crop_area must be in (0, 1], got 0.0"),
        ("data.min_crop_area", 1.5, "data.min_crop_area must be in (0, 1], got 1.5"),
        (
            "data.val_size",
            -2,
            "data.val_size must be an integer >= -1 (-1: the dataset's default)",
        ),
        ("data.num_threads", -1, "data.num_threads must be an integer >= 0"),
        ("seed", -1, "seed must be an integer >= 0, got -1"),
        (
            "evaluation.probe_every_steps",
            -1,
            "evaluation.probe_every_steps must be a finite number >= 0",
        ),
        (
            "evaluation.probe_max_train_examples",
            0,
            "evaluation.probe_max_train_examples must be a positive integer",
        ),
    ],
)
def test_bad_field_is_named_in_one_line(field, value, expected):
    config = tiny_config("unused", max_steps=4)
    section, _, name = field.rpartition(".")
    (config[section] if section else config)[name] = value
    assert _error(config).startswith(expected)


def test_jpeg_presets_decode_on_every_core_the_process_has():
    """0: `pipeline.default_num_threads` (the ImageNet preset had 2 threads)."""
    from configs import byol as imagenet  # noqa: PLC0415
    from configs import imagenette, stl10  # noqa: PLC0415

    for config in (imagenet.get_config(), imagenette.get_config(), stl10.get_config()):
        assert config.data.num_threads == 0, config.data.dataset


def test_known_dataset_names_pass():
    for dataset in ("cifar10", "imagenette/160px-v2", "image_folder:/some/dir"):
        config = tiny_config("unused")
        config.data.dataset = dataset
        config_checks.check_pretrain_config(config)


@pytest.mark.parametrize("small_image, size, minimum", [(False, 28, 32), (True, 4, 8)])
def test_image_size_the_encoder_cannot_take(small_image, size, minimum):
    config = tiny_config("unused")
    config.model.small_image, config.data.image_size = small_image, size
    message = _error(config)
    assert message.startswith(f"data.image_size {size} is smaller than")
    assert f"(min {minimum})" in message


def test_workdir_with_checkpoints_of_another_config(tmp_path):
    workdir = str(tmp_path)
    config = tiny_config("unused")
    run_dirs.record_config(workdir, config)  # first run: records the config
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["model"]["projection_size"] == 16
    os.makedirs(os.path.join(workdir, "checkpoints"))
    run_dirs.record_config(workdir, config)  # same config: resumable
    other = tiny_config("unused")
    other.training.base_learning_rate = 0.5  # not an architecture field
    run_dirs.record_config(workdir, other)
    other.model.projection_size = 32
    with pytest.raises(ValueError) as info:
        run_dirs.record_config(workdir, other)
    message = str(info.value)
    assert "\n" not in message
    assert "model.projection_size was 16, now 32" in message
    assert "use a new --workdir" in message


def test_workdir_of_a_run_from_before_simclr_counts_as_byol(tmp_path):
    """A config.json without `method` was written by a BYOL run."""
    workdir = str(tmp_path)
    config = tiny_config("unused")
    saved = config.to_dict()
    del saved["method"]
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(saved, f)
    os.makedirs(os.path.join(workdir, "checkpoints"))
    run_dirs.record_config(workdir, config)  # BYOL: resumable
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(saved, f)
    config.method = "simclr"
    with pytest.raises(ValueError, match="method was 'byol', now 'simclr'"):
        run_dirs.record_config(workdir, config)


def test_workdir_without_checkpoints_takes_any_config(tmp_path):
    workdir = str(tmp_path)
    run_dirs.record_config(workdir, tiny_config("unused"))
    other = tiny_config("unused", norm="bn")
    run_dirs.record_config(workdir, other)  # nothing to resume: no error
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["model"]["norm"] == "bn"


def test_absent_dataset_is_a_file_not_found_error(tmp_path):
    pytest.importorskip("tensorflow")
    from byol import train

    config = tiny_config(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError) as info:
        train.pretrain(config, str(tmp_path / "workdir"))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("fashion_mnist not found in ")
    assert "make fashion_mnist" in message
    assert not os.path.exists(tmp_path / "workdir")


# ------------------------------------------------------------- command line
def _cli(*args):
    """Runs `python -m byol.main` with the fashion_mnist config in a subprocess."""
    command = [sys.executable, "-m", "byol.main", *args]
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)


def _assert_one_line_error(result, start):
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith("error: " + start), lines[0]


@pytest.mark.parametrize(
    "config, override, start",
    [
        (
            "gn_ws",
            "--config.training.batch_size=15",
            "training.batch_size 15 is not divisible",
        ),
        ("gn_ws", "--config.model.norm=bm", "model.norm 'bm' unknown"),
        (
            "gn",
            "--config.training.max_steps=10",
            "flag --config=configs/fashion_mnist.py:gn: Error whilst parsing config "
            "file: ValueError: config variant 'gn' unknown",
        ),
        (
            "gn_ws",
            "--config.training.batchsize=15",
            "config field 'batchsize' unknown",
        ),
    ],
)
def test_cli_bad_input_ends_with_one_error_line(tmp_path, config, override, start):
    workdir = str(tmp_path / "workdir")
    result = _cli(
        f"--config=configs/fashion_mnist.py:{config}", f"--workdir={workdir}", override
    )
    _assert_one_line_error(result, start)
    assert not os.path.exists(workdir)


@pytest.mark.parametrize(
    "args, start",
    [
        (
            ["--config=configs/fashion_mnist.py", "--config.training.max_steps=ten"],
            "flag --config.training.max_steps=ten: invalid literal for int() with "
            "base 10: 'ten'",
        ),
        (
            [
                "--config=configs/fashion_mnist.py",
                "--config.training.skip_nonfinite_updates=maybe",
            ],
            "flag --config.training.skip_nonfinite_updates=maybe: ('Non-boolean "
            "argument to boolean flag', 'maybe')",
        ),
        (
            ["--config=configs/no_such_file.py"],
            "--config: [Errno 2] No such file or directory: 'configs/no_such_file.py'",
        ),
    ],
)
def test_cli_bad_flag_ends_with_one_error_line(tmp_path, args, start):
    workdir = str(tmp_path / "workdir")
    _assert_one_line_error(_cli(*args, f"--workdir={workdir}"), start)
    assert not os.path.exists(workdir)


FAULTS = {
    "FloatingPointError": "non-finite grad_norm at step 37; the last good "
    "checkpoint (step 36) is kept in /w/checkpoints",
    "checkpointing.CheckpointWriteError": "cannot write checkpoint 40 to "
    "/w/checkpoints: [Errno 28] No space left on device; checkpoint 36 is intact",
}


@pytest.mark.parametrize("error", sorted(FAULTS))
def test_cli_fault_during_a_run_ends_with_one_error_line(tmp_path, error):
    # The runs raising these are tested in test_nonfinite.py and
    # test_train.py; this is what the command line makes of their errors.
    driver = (
        "from absl import app\n"
        "from byol import checkpointing, main\n"
        "def run(config, workdir):\n"
        f"    raise {error}({FAULTS[error]!r})\n"
        "main.run = run\n"
        "app.run(main.main, flags_parser=main.parse_flags)\n"
    )
    command = [
        sys.executable,
        "-c",
        driver,
        "--config=configs/fashion_mnist.py",
        f"--workdir={tmp_path}",
    ]
    env = dict(os.environ, PYTHONPATH=REPO)
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stderr.splitlines() == ["error: " + FAULTS[error]]


@pytest.fixture(scope="module")
def absent_dataset_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("absent")
    return _cli(
        "--config=configs/fashion_mnist.py",
        f"--workdir={tmp / 'workdir'}",
        f"--config.data.data_dir={tmp / 'empty'}",
    )


def test_cli_absent_dataset_says_how_to_get_it(absent_dataset_run):
    result = absent_dataset_run
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.splitlines()[-1]
    assert last.startswith("error: fashion_mnist not found in "), last
    assert "make fashion_mnist" in last


def test_cli_absent_dataset_is_one_line(absent_dataset_run):
    _assert_one_line_error(absent_dataset_run, "fashion_mnist not found in ")


# ------------------------------------------- bad files, run in-process
def _image_folder(root, bad_name=None, bad_bytes=b""):
    """Three good PNGs in `root`/cats, plus an optional bad file."""
    import tensorflow as tf  # noqa: PLC0415

    os.makedirs(os.path.join(root, "cats"), exist_ok=True)
    image = tf.zeros((20, 20, 3), tf.uint8)
    for i in range(3):
        tf.io.write_file(
            os.path.join(root, "cats", f"{i}.png"), tf.io.encode_png(image)
        )
    if bad_name:
        with open(os.path.join(root, "cats", bad_name), "wb") as f:
            f.write(bad_bytes)
    return root


def _folder_case(bad_name, bad_bytes):
    def setup(tmp):
        return _image_folder(str(tmp / "images"), bad_name, bad_bytes)

    return setup


def _truncated_png(tmp):
    import tensorflow as tf  # noqa: PLC0415

    root = _image_folder(str(tmp / "images"))
    png = tf.io.encode_png(tf.ones((20, 20, 3), tf.uint8)).numpy()
    with open(os.path.join(root, "cats", "cut.png"), "wb") as f:
        f.write(png[: len(png) // 2])
    return root


def _broken_link(tmp):
    root = _image_folder(str(tmp / "images"))
    os.symlink(str(tmp / "nowhere.jpg"), os.path.join(root, "cats", "link.jpg"))
    return root


def _empty_folder(tmp):
    os.makedirs(tmp / "images" / "cats")
    with open(tmp / "images" / "cats" / "notes.txt", "w") as f:
        f.write("not an image, ignored")
    return str(tmp / "images")


RUN_ERRORS = {
    # name: (make the image folder, error type, the message's start)
    "folder missing": (
        lambda tmp: str(tmp / "absent"),
        FileNotFoundError,
        "image folder {root} not found (not a directory)",
    ),
    "folder without images": (
        _empty_folder,
        FileNotFoundError,
        "image folder {root} holds no images (.jpg, .jpeg, .png, .gif, .bmp)",
    ),
    "text file named .jpg": (
        _folder_case("notes.jpg", b"this is text"),
        ValueError,
        "{root}/cats/notes.jpg is not a JPEG/PNG/GIF/BMP image (bad file signature)",
    ),
    "empty .png": (
        _folder_case("empty.png", b""),
        ValueError,
        "{root}/cats/empty.png is empty (0 bytes)",
    ),
    "truncated png": (
        _truncated_png,
        ValueError,
        "{root}/cats/cut.png is truncated or corrupt (",
    ),
    "unreadable file": (
        _broken_link,
        ValueError,
        "{root}/cats/link.jpg cannot be read (No such file or directory)",
    ),
}


@pytest.mark.parametrize("case", sorted(RUN_ERRORS))
def test_bad_image_folder_is_named_in_one_line(tmp_path, case):
    pytest.importorskip("tensorflow")
    from byol import main as byol_main  # noqa: PLC0415

    make, error_type, start = RUN_ERRORS[case]
    root = make(tmp_path)
    config = tiny_config(str(tmp_path / "unused"))
    config.data.dataset = f"image_folder:{root}"
    workdir = str(tmp_path / "workdir")
    with pytest.raises(error_type) as caught:
        byol_main.run(config, workdir)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(start.format(root=root)), message
    if error_type is ValueError:
        assert message.endswith(
            "; remove it or set data.skip_corrupt_images=True to leave such files out"
        )
    assert not os.path.exists(os.path.join(workdir, "checkpoints"))


def test_workdir_that_is_a_file_is_named(tmp_path):
    from byol import main as byol_main  # noqa: PLC0415

    path = tmp_path / "results.txt"
    path.write_text("not a directory")
    with pytest.raises(ValueError) as caught:
        byol_main.run(tiny_config("unused"), str(path))
    assert str(caught.value) == f"--workdir {path} is a file; expected a directory"


def test_pretrain_workdir_of_another_architecture_is_refused(tmp_path):
    pytest.importorskip("tensorflow")
    from byol import main as byol_main  # noqa: PLC0415
    from tests.fixtures import write_fake_fashion_mnist  # noqa: PLC0415

    write_fake_fashion_mnist(str(tmp_path / "data"), num_train=60, num_test=10)
    workdir = tmp_path / "workdir"
    (workdir / "checkpoints").mkdir(parents=True)
    run_dirs.record_config(str(workdir), tiny_config("x"))  # a tiny run's
    config = tiny_config(str(tmp_path / "data"))
    config.model.encoder = "resnet18"
    with pytest.raises(ValueError) as caught:
        byol_main.run(config, str(workdir))
    assert str(caught.value) == (
        f"workdir {workdir} holds checkpoints of another config: model.encoder "
        "was 'tiny', now 'resnet18'; use a new --workdir or the same config"
    )


def test_shipped_and_own_configs_load_from_any_directory(tmp_path):
    """`configs` is installed with the package: no repo on the path is needed."""
    own = tmp_path / "mine.py"
    own.write_text(
        "from configs import fashion_mnist\n\n\n"
        "def get_config():\n"
        "    return fashion_mnist.get_config('bn')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for config in (os.path.join(REPO, "configs", "fashion_mnist.py"), str(own)):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "byol.main",
                f"--config={config}",
                f"--workdir={tmp_path / 'w'}",
                "--config.training.batch_size=15",
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        )
        _assert_one_line_error(result, "training.batch_size 15 is not divisible")
