"""Tests of byol.linear_eval and of every config file in configs/.

One tiny BN model is pre-trained for 2 steps on a fake Fashion-MNIST (module
fixture); both protocols then evaluate its checkpoint.
"""

import importlib
import json
import os
import shutil

import jax
import numpy as np
import pytest

pytest.importorskip("tensorflow")

from byol import (  # noqa: E402
    config_checks,
    linear_eval,
    parallel,
    probe,
    train,
)
from byol import main as byol_main  # noqa: E402
from byol.data import pipeline  # noqa: E402
from configs import common  # noqa: E402
from configs import eval as eval_configs  # noqa: E402
from tests.fixtures import tiny_config, write_fake_fashion_mnist  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAIN_STEPS = 2
RATES = (0.1, 0.05)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """(pre-training config, its work directory, its results) after 2 BN steps."""
    data_dir = tmp_path_factory.mktemp("fm_data")
    write_fake_fashion_mnist(str(data_dir), num_train=300, num_test=70)
    config = tiny_config(data_dir, norm="bn", max_steps=PRETRAIN_STEPS)
    workdir = str(tmp_path_factory.mktemp("pretrain"))
    results = train.pretrain(config, workdir)
    return config, workdir, results


def _eval_config(workdir, protocol):
    config = eval_configs.get_config(f"protocol={protocol}")
    config.data.num_threads = 1
    config.evaluation.pretrain_workdir = workdir
    config.evaluation.update(
        dict(
            batch_size=16,
            epochs=1,
            learning_rates=RATES,
            log_every_steps=5,
            probe_max_train_examples=200,
        )
    )
    return config


def test_probe_protocol_reproduces_the_pretraining_probe(pretrained, tmp_path):
    _, pretrain_dir, pretrain_results = pretrained
    config = _eval_config(pretrain_dir, "probe")
    results = byol_main.run(config, str(tmp_path))  # through the CLI's dispatch
    with open(tmp_path / linear_eval.RESULTS_FILE) as f:
        written = json.load(f)
    assert written["top1"] == results["top1"]
    assert (results["protocol"], results["checkpoint_step"]) == (
        "probe",
        PRETRAIN_STEPS,
    )
    assert results["l2"] in probe.DEFAULT_L2_GRID
    # The final probe of pre-training ran on the same (final) parameters: the
    # restored checkpoint must give the same features, hence the same fit.
    for key in ("top1", "top5", "val_top1", "l2"):
        assert results[key] == pytest.approx(pretrain_results["probe"][key], abs=1e-6)


def test_reference_protocol_sweeps_and_reports(pretrained, tmp_path):
    _, pretrain_dir, _ = pretrained
    config = _eval_config(pretrain_dir, "reference")
    results = linear_eval.evaluate(config, str(tmp_path))
    with open(tmp_path / linear_eval.RESULTS_FILE) as f:
        written = json.load(f)
    assert written["learning_rate"] == results["learning_rate"]
    assert results["learning_rate"] in RATES
    sweep = results["sweep"]
    assert [s["learning_rate"] for s in sweep] == pytest.approx(RATES)
    assert results["val_top1"] == max(s["val_top1"] for s in sweep)
    chosen = next(s for s in sweep if s["learning_rate"] == results["learning_rate"])
    assert chosen["val_top1"] == results["val_top1"]
    # 300 train - 50 val = 250 examples, 1 epoch at batch 16.
    assert (results["train_examples"], results["steps"]) == (250, 250 // 16)
    assert all(np.isfinite(s["final_train_loss"]) for s in sweep)
    assert 0.0 <= results["top5"] <= 1.0 and results["top1"] <= results["top5"]


def test_encoder_stays_frozen_and_classifiers_learn(pretrained):
    config, pretrain_dir, _ = pretrained
    encoder = linear_eval.restore_encoder(_eval_config(pretrain_dir, "reference"))
    experiment = linear_eval.LinearEvalExperiment(encoder, 16, total_steps=10)
    initial = experiment.init(jax.random.key(0), num_learning_rates=len(RATES))
    state = parallel.replicate(initial)
    batches = pipeline.load(
        "fashion_mnist",
        "train_minus_val",
        is_training=True,
        batch_dims=(jax.local_device_count(), 16 // jax.device_count()),
        data_dir=config.data.data_dir,
        labelled_only=True,
        val_size=config.data.val_size,
    )
    state, _ = experiment.update(state, 0, next(batches), RATES)
    first = parallel.unreplicate(state.classifier)
    for step in (1, 2):
        state, scalars = experiment.update(state, step, next(batches), RATES)
    final = parallel.unreplicate(state)

    # The encoder, BN moving statistics included (inference mode), is untouched.
    assert jax.tree.leaves(encoder.state), "a BN model has moving statistics"
    jax.tree.map(np.testing.assert_array_equal, final.encoder_params, encoder.params)
    jax.tree.map(np.testing.assert_array_equal, final.encoder_state, encoder.state)
    # All classifiers start equal and see the same first gradient; from zero
    # momentum the first step is -(1 + 0.9) * rate * 16/256 * grad, so the two
    # steps differ by the ratio of the rates.
    for before, after in zip(
        jax.tree.leaves(initial.classifier), jax.tree.leaves(first), strict=True
    ):
        delta = after - before
        assert np.abs(delta).max() > 0
        np.testing.assert_allclose(
            delta[1], delta[0] * RATES[1] / RATES[0], rtol=1e-4, atol=1e-7
        )
    assert np.all(np.isfinite(scalars["loss"]))


def test_missing_pretrain_workdir_is_a_one_line_error(tmp_path):
    config = _eval_config("", "probe")
    with pytest.raises(ValueError, match="evaluation.pretrain_workdir") as error:
        linear_eval.evaluate(config, str(tmp_path / "eval"))
    assert "\n" not in str(error.value)
    config.evaluation.pretrain_workdir = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="evaluation.pretrain_workdir") as error:
        linear_eval.evaluate(config, str(tmp_path / "eval"))
    assert "\n" not in str(error.value)
    # A work directory with a config but no checkpoint.
    os.makedirs(tmp_path / "empty")
    with open(tmp_path / "empty" / "config.json", "w") as f:
        json.dump(tiny_config(tmp_path).to_dict(), f)
    config.evaluation.pretrain_workdir = str(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="evaluation.pretrain_workdir"):
        linear_eval.evaluate(config, str(tmp_path / "eval"))
    assert not os.path.exists(tmp_path / "empty" / "checkpoints")


def test_checkpoint_of_another_architecture_is_refused(pretrained, tmp_path):
    _, pretrain_dir, _ = pretrained
    copy = str(tmp_path / "copy")
    shutil.copytree(pretrain_dir, copy)
    with open(os.path.join(copy, "config.json")) as f:
        saved = json.load(f)
    saved["model"]["projection_size"] *= 2
    with open(os.path.join(copy, "config.json"), "w") as f:
        json.dump(saved, f)
    with pytest.raises(ValueError, match="does not fit the model") as error:
        linear_eval.restore_encoder(_eval_config(copy, "probe"))
    assert "\n" not in str(error.value)


def test_corrupt_checkpoint_is_reported_and_left_in_place(pretrained, tmp_path, caplog):
    _, pretrain_dir, _ = pretrained
    copy = str(tmp_path / "copy")
    shutil.copytree(pretrain_dir, copy)
    step_dir = os.path.join(copy, "checkpoints", str(PRETRAIN_STEPS))
    data_dir = os.path.join(step_dir, "state", "d")
    for name in os.listdir(data_dir):
        with open(os.path.join(data_dir, name), "wb") as f:
            f.write(b"garbage")
    before = sorted(os.listdir(os.path.join(copy, "checkpoints")))
    with pytest.raises(FileNotFoundError) as error:
        linear_eval.restore_encoder(_eval_config(copy, "probe"))
    assert str(error.value) == (
        f"evaluation.pretrain_workdir {copy!r} has no readable checkpoint in "
        f"{os.path.join(copy, 'checkpoints')}"
    )
    assert f"checkpoint {PRETRAIN_STEPS} ({step_dir}) is corrupt: " in caplog.text
    # Another run's directory: reported, not moved.
    assert sorted(os.listdir(os.path.join(copy, "checkpoints"))) == before


def test_eval_config_rejects_another_dataset(pretrained):
    _, pretrain_dir, _ = pretrained
    config = _eval_config(pretrain_dir, "probe")
    config.data.dataset = "cifar10"
    with pytest.raises(ValueError, match="data.dataset 'cifar10' differs"):
        linear_eval.pretrain_config(config)


@pytest.mark.parametrize(
    "field, value",
    [
        ("protocol", "full"),
        ("batch_size", 0),
        ("batch_size", 15),  # not divisible by the 2 test devices
        ("epochs", 0),
        ("learning_rates", ()),
        ("learning_rates", (0.1, -0.2)),
    ],
)
def test_check_linear_eval_config_names_the_field(field, value):
    config = _eval_config("somewhere", "reference")
    config.evaluation[field] = value
    with pytest.raises(ValueError, match=f"evaluation.{field}"):
        config_checks.check_linear_eval_config(config)


# ------------------------------------------------------------------ configs
CONFIG_DIR = os.path.join(REPO, "configs")
# Variants known per file; every file is also loaded with its default.
VARIANTS = {
    "byol": [
        "epochs=40,norm=bn",
        "epochs=100,norm=gn_ws",
        "epochs=300,norm=none",
        "epochs=1000,norm=bn_init",
        "epochs=300,norm=enc_bn",
    ],
    "fashion_mnist": list(common.NORM_VARIANTS),
    "imagenette": list(common.NORM_VARIANTS),
    "cifar10": list(common.NORM_VARIANTS),
    "stl10": list(common.NORM_VARIANTS),
    "eval": ["protocol=probe", "protocol=reference"],
}
CONFIG_FILES = sorted(
    name[:-3]
    for name in os.listdir(CONFIG_DIR)
    if name.endswith(".py") and name not in ("__init__.py", "common.py")
)


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_config_file_loads_and_passes_checks(name):
    module = importlib.import_module(f"configs.{name}")
    assert module.__doc__ and "python -m byol.main --config=configs/" in module.__doc__
    configs = [module.get_config()]
    configs += [module.get_config(variant) for variant in VARIANTS.get(name, [])]
    base_fields = set(common.base_config().to_dict()["evaluation"])
    for config in configs:
        assert set(config.evaluation) >= base_fields
        if config.mode == "pretrain":
            config_checks.check_pretrain_config(config)
        else:
            assert config.mode == "linear_eval"
            config.evaluation.pretrain_workdir = "workdirs/somewhere"
            config_checks.check_linear_eval_config(config)


@pytest.mark.parametrize("name", ["imagenette", "cifar10", "stl10", "eval"])
def test_config_unknown_variant_is_a_value_error(name):
    module = importlib.import_module(f"configs.{name}")
    with pytest.raises(ValueError, match="unknown"):
        module.get_config("protocol=bogus" if name == "eval" else "bogus")


def test_small_scale_configs_match_their_recipes():
    from configs import cifar10, imagenette, stl10  # noqa: PLC0415

    nette = imagenette.get_config()
    assert (nette.model.encoder, nette.data.image_size) == ("resnet18", 128)
    assert nette.training.batch_size == 256
    assert nette.training.base_learning_rate == 2.0
    assert nette.training.weight_decay == 1e-6
    assert nette.training.max_steps == 1000 * 9469 // 256
    assert nette.model.norm == "bn" and not nette.model.bn_init
    cifar = cifar10.get_config("gn_ws")
    assert cifar.model.small_image and cifar.data.image_size == 32
    assert cifar.model.norm == "gn_ws"
    stl = stl10.get_config("bn_init")
    assert (stl.data.dataset, stl.data.image_size) == ("stl10", 96)
    assert stl.model.bn_init and stl.model.norm == "bn"
