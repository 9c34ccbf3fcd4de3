"""Tests of byol.export: the .npz layout, its reader, and the command line."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from byol import augmentations, byol_experiment, export

STEP = 3


def _tree(seed, modules):
    rng = np.random.default_rng(seed)
    return {
        module: {
            name: rng.normal(size=shape).astype(np.float32) for name, shape in leaves
        }
        for module, leaves in modules.items()
    }


PARAMS = {
    "res_net50/~/initial_conv": [("w", (3, 3, 1, 4))],
    "res_net50/~/block_group_0/~/block_0/~/batchnorm_0": [
        ("scale", (1, 1, 1, 4)),
        ("offset", (1, 1, 1, 4)),
    ],
    "projector/linear": [("w", (4, 8)), ("b", (8,))],
    "projector/batch_norm": [("scale", (1, 8)), ("offset", (1, 8))],
    "predictor/linear": [("w", (2, 8))],
    "classifier": [("w", (4, 10)), ("b", (10,))],
}
STATE = {
    "res_net50/~/initial_batchnorm/~/mean_ema": [("average", (1, 1, 1, 4))],
    "projector/batch_norm/~/var_ema": [("average", (1, 8))],
}


def _train_state():
    return byol_experiment.TrainState(
        online_params=_tree(0, PARAMS),
        online_state=_tree(1, STATE),
        target_params=_tree(2, PARAMS),
        target_state=_tree(3, STATE),
        opt_state=(),
    )


def _model():
    return ml_collections.ConfigDict({"encoder": "resnet50", "norm": "bn"})


def _assert_same(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def _encoder_only(tree, heads=()):
    keep = ("res_net50", *heads)
    return {m: v for m, v in tree.items() if m.split("/")[0] in keep}


@pytest.mark.parametrize("projector, target", [(False, False), (True, True)])
def test_round_trip_of_a_tiny_tree(tmp_path, projector, target):
    state = _train_state()
    arrays = export.encoder_arrays(
        state, _model(), STEP, projector=projector, target=target
    )
    # The documented layout: <group>/<module>/<name>, module names as Haiku's.
    assert "params/res_net50/~/initial_conv/w" in arrays
    assert "state/res_net50/~/initial_batchnorm/~/mean_ema/average" in arrays
    assert ("params/projector/linear/b" in arrays) == projector
    assert not any("predictor" in k or "classifier" in k for k in arrays)
    path = tmp_path / "encoder.npz"
    np.savez(path, **arrays)
    loaded = export.load_encoder_npz(path)
    heads = ("projector",) if projector else ()
    _assert_same(loaded["params"], _encoder_only(state.online_params, heads))
    _assert_same(loaded["state"], _encoder_only(state.online_state, heads))
    if target:
        _assert_same(loaded["target_params"], _encoder_only(state.target_params, heads))
        _assert_same(loaded["target_state"], _encoder_only(state.target_state, heads))
    else:
        assert "target_params" not in loaded and "target_state" not in loaded
    assert loaded["model"] == {"encoder": "resnet50", "norm": "bn"}
    assert loaded["step"] == STEP


def test_reader_refuses_other_files(tmp_path):
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(ValueError, match="one array"):
        export.load_encoder_npz(tmp_path / "one.npy")
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    with pytest.raises(ValueError, match="no 'format'"):
        export.load_encoder_npz(tmp_path / "other.npz")
    arrays = export.encoder_arrays(_train_state(), _model(), STEP)
    np.savez(
        tmp_path / "new.npz", **{**arrays, "format": np.array("byol-encoder-npz-9")}
    )
    with pytest.raises(ValueError, match="byol-encoder-npz-9"):
        export.load_encoder_npz(tmp_path / "new.npz")
    np.savez(tmp_path / "odd.npz", **{**arrays, "weights/w": np.zeros(1)})
    with pytest.raises(ValueError, match="unknown key 'weights/w'"):
        export.load_encoder_npz(tmp_path / "odd.npz")
    (tmp_path / "text.npz").write_text("not numpy")
    with pytest.raises(ValueError, match="not an exported BYOL encoder"):
        export.load_encoder_npz(tmp_path / "text.npz")


# ------------------------------------------------- a real tiny work directory
@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A tiny BN pre-training work directory: config.json and a checkpoint.

    Written by the training system's own writers (`check_workdir`, which
    records config.json, and `Checkpointer.save`), with a TrainState of the
    run's exact layout filled with random values; running `pretrain` itself
    would take ~30 s of XLA compilation on a CPU.
    """
    pytest.importorskip("tensorflow")
    from byol import checkpointing  # noqa: PLC0415
    from byol import run_dir as run_dirs  # noqa: PLC0415
    from byol.data import pipeline  # noqa: PLC0415
    from tests.fixtures import tiny_config, write_fake_fashion_mnist  # noqa: PLC0415

    data_dir = tmp_path_factory.mktemp("fm_data")
    write_fake_fashion_mnist(str(data_dir), num_train=80, num_test=20)
    config = tiny_config(data_dir, norm="bn", max_steps=STEP)
    run_dir = str(tmp_path_factory.mktemp("pretrain"))
    run_dirs.record_config(run_dir, config)
    info = pipeline.dataset_info("fashion_mnist", str(data_dir), val_size=50)
    experiment = byol_experiment.ByolExperiment(config, info.num_classes)
    batch = {
        "images": jax.ShapeDtypeStruct((2, 1, 28, 28, 1), jnp.uint8),
        "labels": jax.ShapeDtypeStruct((2, 1), jnp.int32),
    }
    shapes = jax.eval_shape(experiment.init, jax.random.key(0), batch)
    rng = np.random.default_rng(0)

    def fill(s):
        # Positive floats: BN's moving variances must be valid variances.
        if np.dtype(s.dtype).kind == "f":
            return rng.uniform(0.5, 1.5, s.shape[1:]).astype(s.dtype)
        return rng.integers(0, 100, s.shape[1:]).astype(s.dtype)

    state = jax.tree.map(fill, shapes)
    checkpointer = checkpointing.Checkpointer(run_dir)
    checkpointer.save(STEP, state, {"seed": config.seed})
    checkpointer.close()
    return run_dir, config, state


def test_cli_exports_the_newest_checkpoint(workdir, tmp_path, capsys):
    run_dir, config, state = workdir
    output = str(tmp_path / "encoder.npz")
    assert export.main(["export", f"--workdir={run_dir}", f"--output={output}"]) == 0
    assert f"Wrote {output}: step {STEP}" in capsys.readouterr().out
    loaded = export.load_encoder_npz(output)
    encoder = {"tiny_res_net"}
    assert {m.split("/")[0] for m in loaded["params"]} == encoder
    assert {m.split("/")[0] for m in loaded["state"]} == encoder
    _assert_same(
        loaded["params"],
        {m: v for m, v in state.online_params.items() if m.startswith("tiny_res_net")},
    )
    _assert_same(
        loaded["state"],
        {m: v for m, v in state.online_state.items() if m.startswith("tiny_res_net")},
    )
    assert "target_params" not in loaded
    assert loaded["model"] == json.loads(json.dumps(config.model.to_dict()))
    assert loaded["step"] == STEP
    assert not os.path.exists(output + ".partial")

    # --projector --target; a second call starts from the default flags.
    both = str(tmp_path / "both.npz")
    argv = ["export", f"--workdir={run_dir}", f"--output={both}", "--projector"]
    assert export.main([*argv, "--target"]) == 0
    loaded = export.load_encoder_npz(both)
    assert {m.split("/")[0] for m in loaded["target_params"]} == {
        "tiny_res_net",
        "projector",
    }
    _assert_same(
        loaded["target_params"]["projector/linear"],
        state.target_params["projector/linear"],
    )
    assert export.main(argv) == 0
    assert "target_params" not in export.load_encoder_npz(both)


def test_exported_encoder_reproduces_the_embedding(workdir, tmp_path):
    from byol import linear_eval  # noqa: PLC0415

    run_dir = workdir[0]
    output = str(tmp_path / "encoder.npz")
    export.export_encoder(run_dir, output)
    loaded = export.load_encoder_npz(output)
    images = np.random.default_rng(1).integers(0, 256, (4, 28, 28, 1), np.uint8)
    x = augmentations.normalize(jnp.asarray(images))
    forward = export.encoder_forward(loaded["model"])
    embedding, _ = forward.apply(loaded["params"], loaded["state"], None, x, False)
    # The features linear evaluation computes from the same checkpoint.
    with open(os.path.join(run_dir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    config.evaluation.pretrain_workdir = run_dir
    restored = linear_eval.restore_encoder(config)
    assert restored.step == STEP and embedding.shape == (4, 64)
    np.testing.assert_allclose(
        embedding, restored.embed(jnp.asarray(images)), rtol=1e-5, atol=1e-6
    )


def test_cli_errors_are_one_line(workdir, tmp_path, capsys):
    output = str(tmp_path / "e.npz")
    assert export.main(["export", f"--workdir={tmp_path}", f"--output={output}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --workdir") and "config.json" in err
    assert "\n" not in err
    assert export.main(["export", f"--output={output}"]) == 2
    assert "workdir" in capsys.readouterr().err
    # The dataset moved: --data_dir says where it is now.
    run_dir = workdir[0]
    argv = ["export", f"--workdir={run_dir}", f"--output={output}"]
    assert export.main([*argv, f"--data_dir={tmp_path / 'nowhere'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert not os.path.exists(output)
