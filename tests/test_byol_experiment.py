"""Tests of byol.byol_experiment: multi-device step, shared forward, monitors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byol import augmentations, byol_experiment, metrics, parallel
from byol import model as models
from byol.byol_experiment import ByolExperiment
from byol.normalization import NormConfig
from byol.parallel import AXIS
from tests.fixtures import tiny_config

NUM_CLASSES = 10
BATCH = 16
STEPS = 3
_VIEW_KEY = jax.random.key(1234)


def _index_keyed_views(rng, batch):
    """Two augmented views whose randomness depends on the global example index.

    `ByolExperiment.views` draws from the step key folded with the device index,
    so the same example is augmented differently on 1 and on 2 devices. This
    stand-in runs the same augmentation ops with a key per *global* example
    (device index x per-device batch + position), so the device count cannot
    change a view and the runs can be compared exactly.
    """
    del rng
    images = batch["images"]
    n, height, width, _ = images.shape
    first = jax.lax.axis_index(AXIS) * n
    keys = jax.vmap(lambda i: jax.random.fold_in(_VIEW_KEY, i))(first + jnp.arange(n))
    views = []
    for index, config in enumerate((augmentations.VIEW1, augmentations.VIEW2)):
        params = jax.vmap(
            lambda key, c=config, i=index: augmentations.sample_augmentation_params(
                jax.random.fold_in(key, i), c, height, width
            )
        )(keys)
        views.append(
            augmentations.normalize(
                augmentations.apply_augmentation_params(images, params, config)
            )
        )
    return tuple(views)


def _random_params(forward, images, seed):
    """Random parameters of `forward` (numpy), without compiling its initialiser.

    Compiling a Haiku initialiser takes XLA:CPU ~10 s (one threefry per
    parameter); the shapes alone come from `jax.eval_shape`.
    """
    rng = np.random.default_rng(seed)
    shapes, state = jax.eval_shape(
        lambda x: forward.init(jax.random.key(0), x, is_training=True), images
    )
    assert not jax.tree.leaves(state), "batch-independent networks have no state"

    def draw(path, leaf):
        noise = rng.normal(size=leaf.shape).astype(np.float32)
        if len(leaf.shape) > 1:  # conv / linear weights: unit-variance outputs
            return noise / np.float32(np.sqrt(np.prod(leaf.shape[:-1])))
        if jax.tree_util.keystr(path).endswith("['scale']"):
            return 1.0 + 0.1 * noise
        return 0.1 * noise  # offsets and biases

    return jax.tree_util.tree_map_with_path(draw, shapes), {}


def _random_state(experiment, images):
    online_params, online_state = _random_params(experiment.forward, images, 0)
    target_params, target_state = _random_params(experiment.forward, images, 1)
    return byol_experiment.TrainState(
        online_params=online_params,
        online_state=online_state,
        target_params=target_params,
        target_state=target_state,
        opt_state=experiment.optimizer.init(online_params),
    )


def _batches(num, seed=0):
    rng = np.random.default_rng(seed)
    return [
        {
            "images": rng.integers(0, 256, (BATCH, 28, 28, 1), dtype=np.uint8),
            "labels": rng.integers(0, NUM_CLASSES, (BATCH,)).astype(np.int32),
        }
        for _ in range(num)
    ]


def _split(batch, devices):
    """[B, ...] -> [devices, B / devices, ...] numpy arrays."""
    return jax.tree.map(lambda x: x.reshape((devices, -1) + x.shape[1:]), batch)


def _run(experiment, state, batches, devices):
    scalars = []
    for step, batch in enumerate(batches):
        state, s = experiment.update(state, step, _split(batch, len(devices)))
        scalars.append(jax.device_get(s))
    return jax.device_get(state), scalars


@pytest.fixture(scope="module")
def device_runs():
    """The same GN+WS training steps on 2 devices and on 1 device."""
    assert jax.device_count() == 2, "tests/conftest.py should give 2 CPU devices"
    config = tiny_config("unused", warmup_steps=1, max_steps=10)
    two, one = jax.devices(), jax.devices()[:1]
    exp2 = ByolExperiment(config, NUM_CLASSES)
    exp1 = ByolExperiment(config, NUM_CLASSES, devices=one)
    for exp in (exp2, exp1):
        exp.views = _index_keyed_views
    batches = _batches(STEPS)
    host_state = _random_state(exp2, jnp.zeros((BATCH, 28, 28, 1), jnp.float32))
    state2, scalars2 = _run(exp2, parallel.replicate(host_state, two), batches, two)
    state1, scalars1 = _run(exp1, parallel.replicate(host_state, one), batches, one)
    return host_state, state2, scalars2, state1, scalars1


def _assert_trees_close(actual, expected, rtol=1e-5, atol=1e-6):
    chex_paths = jax.tree_util.tree_leaves_with_path(actual)
    expected_leaves = jax.tree.leaves(expected)
    assert len(chex_paths) == len(expected_leaves)
    for (path, a), e in zip(chex_paths, expected_leaves, strict=True):
        np.testing.assert_allclose(
            np.asarray(a).astype(np.float64),
            np.asarray(e).astype(np.float64),
            rtol=rtol,
            atol=atol,
            err_msg=jax.tree_util.keystr(path),
        )


def test_two_devices_equal_one_device_for_gn_ws(device_runs):
    host_state, state2, scalars2, state1, scalars1 = device_runs
    # Training moved the parameters (so agreement below is not trivial).
    moved = jax.tree.map(
        lambda a, b: np.max(np.abs(a[0] - b)),
        state2.online_params,
        host_state.online_params,
    )
    assert max(jax.tree.leaves(moved)) > 1e-4
    # Both replicas of the 2-device run hold the same state (grads were averaged).
    _assert_trees_close(
        jax.tree.map(lambda x: x[1], state2), jax.tree.map(lambda x: x[0], state2)
    )
    # Same parameters, target, optimiser state and scalars as one device.
    _assert_trees_close(
        jax.tree.map(lambda x: x[0], state2), jax.tree.map(lambda x: x[0], state1)
    )
    for s2, s1 in zip(scalars2, scalars1, strict=True):
        _assert_trees_close(
            jax.tree.map(lambda x: x[0], s2), jax.tree.map(lambda x: x[0], s1)
        )


def test_update_scalars_are_sane(device_runs):
    _, _, scalars2, _, _ = device_runs
    first = jax.tree.map(lambda x: float(x[0]), scalars2[0])
    expected = {
        "repr_loss",
        "classifier_loss",
        "loss",
        "top1",
        "top5",
        "collapse",
        "tau",
        "learning_rate",
        "grad_norm",
        "param_norm",
        "update_norm",
        "finite",  # loss, grad_norm and param_norm are finite: read every step
    }
    assert set(first) == expected
    assert first["finite"] == 1.0
    assert 0.0 <= first["repr_loss"] <= 8.0  # two directions of 2 - 2cos
    np.testing.assert_allclose(
        first["loss"], first["repr_loss"] + first["classifier_loss"], rtol=1e-6
    )
    assert 0.0 <= first["top1"] <= first["top5"] <= 1.0
    # Step 0: warm-up starts at lr 0 and tau at its base value (0.99).
    assert first["learning_rate"] == 0.0
    np.testing.assert_allclose(first["tau"], 0.99, rtol=1e-6)


# ------------------------------------ gradient accumulation, mixed precision
def _variant(**overrides):
    config = tiny_config("unused", warmup_steps=1, max_steps=10)
    config.training.accumulation_steps = overrides.get("accumulation_steps", 1)
    config.model.compute_dtype = overrides.get("compute_dtype", "float32")
    exp = ByolExperiment(config, NUM_CLASSES)
    exp.views = _index_keyed_views  # as in `device_runs`, whose run is float32's
    return exp


@pytest.fixture(scope="module")
def variant_runs(device_runs):
    """`device_runs`' 2-device steps again: in 2 micro-batches, and in bfloat16.

    `float32` (from `device_runs`) takes each device's 8 examples in one pass,
    `accumulated` in 2 micro-batches of 4, `bfloat16` computes in bfloat16.
    """
    host_state, state2, scalars2, _, _ = device_runs
    devices = jax.devices()
    experiments = dict(
        accumulated=_variant(accumulation_steps=2),
        bfloat16=_variant(compute_dtype="bfloat16"),
    )
    runs = {
        name: _run(
            exp, parallel.replicate(host_state, devices), _batches(STEPS), devices
        )
        for name, exp in experiments.items()
    }
    runs["float32"] = (state2, scalars2)
    return experiments, host_state, runs


def test_accumulated_micro_batches_equal_one_batch_for_gn_ws(variant_runs):
    experiments, host_state, runs = variant_runs
    assert experiments["accumulated"].accumulation_steps == 2
    (whole, whole_scalars), (accumulated, accumulated_scalars) = (
        runs["float32"],
        runs["accumulated"],
    )
    moved = jax.tree.map(
        lambda a, b: np.max(np.abs(a[0] - b)),
        accumulated.online_params,
        host_state.online_params,
    )
    assert max(jax.tree.leaves(moved)) > 1e-4
    # Parameters, target and optimiser state of one step per k micro-batches.
    _assert_trees_close(
        jax.tree.map(lambda x: x[0], accumulated), jax.tree.map(lambda x: x[0], whole)
    )
    # Schedules count optimiser steps, not micro-batches.
    counts = [
        int(x[0]) for x in jax.tree.leaves(accumulated.opt_state) if x.dtype.kind == "i"
    ]
    assert counts and all(c == STEPS for c in counts), counts
    # Each micro-batch ran on its own: the collapse indicator, a statistic of
    # the (global) batch, is that of 2 x 4 examples, not 2 x 8.
    assert not np.isclose(
        accumulated_scalars[0]["collapse"][0], whole_scalars[0]["collapse"][0]
    )
    # The losses are means over the micro-batches, i.e. over the whole batch.
    for a, w in zip(accumulated_scalars, whole_scalars, strict=True):
        for key in ("repr_loss", "classifier_loss", "top1", "learning_rate", "tau"):
            np.testing.assert_allclose(a[key][0], w[key][0], rtol=1e-5, err_msg=key)


def test_bfloat16_compute_stays_close_to_float32(variant_runs):
    experiments, _, runs = variant_runs
    (f32, f32_scalars), (bf16, bf16_scalars) = runs["float32"], runs["bfloat16"]
    # Parameters, optimiser state and target stay float32.
    assert {x.dtype for x in jax.tree.leaves(bf16)} <= {
        np.dtype(np.float32),
        np.dtype(np.int32),
    }
    losses = np.array(
        [[s["loss"][0] for s in f32_scalars], [s["loss"][0] for s in bf16_scalars]]
    )
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-2)
    assert not np.array_equal(losses[1], losses[0])  # bfloat16 did round
    # The convolutions themselves run in bfloat16.
    batch = _split(_batches(1)[0], jax.device_count())
    hlo = {
        name: exp.update.lower(f32, 0, batch).as_text()
        for name, exp in (
            ("float32", _variant()),
            ("bfloat16", experiments["bfloat16"]),
        )
    }
    convs = {
        name: [line for line in text.splitlines() if "convolution" in line]
        for name, text in hlo.items()
    }
    assert convs["bfloat16"] and all("bf16" in line for line in convs["bfloat16"])
    assert not any("bf16" in line for line in convs["float32"])


# ------------------------------------------------- batch-independent forward
def _norm_config(norm):
    """gn_ws / none presets, or every component with a per-channel affine."""
    config = tiny_config("unused", norm="none" if norm == "affine" else norm)
    if norm == "affine":
        for field in ("encoder_norm", "projector_norm", "predictor_norm"):
            config.model[field] = "affine"
    return config


@pytest.mark.parametrize("norm", ["gn_ws", "none", "affine"])
def test_shared_forward_of_both_views_equals_two_passes(norm):
    exp = ByolExperiment(_norm_config(norm), NUM_CLASSES)
    assert exp.batch_independent
    rng = np.random.default_rng(1)
    view1, view2 = (
        jnp.asarray(rng.normal(size=(8, 28, 28, 1)), jnp.float32) for _ in range(2)
    )
    # Random scales and offsets, so an affine layer is not the identity.
    params, state = _random_params(exp.forward, view1, seed=2)

    def apply(x):
        return exp.forward.apply(params, state, None, x, is_training=True)[0]

    shared = jax.jit(lambda a, b: exp._two_view_forward(params, state, a, b)[:2])
    out1, out2 = shared(view1, view2)
    apply = jax.jit(apply)
    for out, view in ((out1, view1), (out2, view2)):
        expected = apply(view)
        assert set(out) == {"embedding", "projection", "prediction", "logits"}
        _assert_trees_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "norm, encoder_norm, independent",
    [("bn", "", False), ("gn_ws", "bn", False), ("bn_encoder", "gn", True)],
)
def test_batch_statistics_force_separate_passes(norm, encoder_norm, independent):
    config = tiny_config("unused", norm="gn_ws")
    config.model.norm, config.model.encoder_norm = norm, encoder_norm
    assert ByolExperiment(config, NUM_CLASSES).batch_independent == independent


# ------------------------------------------------------- collapse indicator
def test_collapse_indicator_is_zero_for_identical_rows():
    row = np.random.default_rng(0).normal(size=(1, 64))
    z = jnp.asarray(np.repeat(row, 32, axis=0), jnp.float32)
    np.testing.assert_allclose(metrics.collapse_indicator(z), 0.0, atol=1e-5)
    # Rows along one direction but of different lengths are collapsed too.
    scaled = z * jnp.arange(1, 33, dtype=jnp.float32)[:, None]
    np.testing.assert_allclose(metrics.collapse_indicator(scaled), 0.0, atol=1e-5)


def test_collapse_indicator_is_one_for_gaussian_rows():
    # Each coordinate of x / |x|, x ~ N(0, I_d), has mean 0 and variance 1/d
    # (the d squared coordinates sum to 1), so its batch std times sqrt(d) -> 1.
    x = np.random.default_rng(0).normal(size=(4096, 512)).astype(np.float32)
    value = float(metrics.collapse_indicator(jnp.asarray(x)))
    np.testing.assert_allclose(value, 1.0, atol=0.01)
    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(value, z.std(axis=0).mean() * np.sqrt(512), rtol=1e-4)


def test_collapse_indicator_of_two_opposite_directions():
    # Half the rows e_1, half -e_1: coordinate 1 has std 1, the others 0.
    d = 16
    z = np.zeros((8, d), np.float32)
    z[:4, 0], z[4:, 0] = 3.0, -2.0
    value = metrics.collapse_indicator(jnp.asarray(z))
    np.testing.assert_allclose(value, 1 / np.sqrt(d), rtol=1e-6)


# ------------------------------------------------------------ network_norms
def test_network_norms_gn_ws_preset():
    model = tiny_config("unused").model  # gn_ws, 4 groups
    model.ws_eps = 1e-5
    norms = models.network_norms(model)
    assert norms.encoder == NormConfig(kind="gn", num_groups=4, ws=True, ws_eps=1e-5)
    for head in (norms.projector, norms.predictor):
        assert head == NormConfig(kind="gn", num_groups=4, ws=False, ws_eps=1e-5)


def test_network_norms_overrides():
    model = tiny_config("unused").model
    model.encoder_ws, model.mlp_ws = 0, 1
    model.projector_norm, model.predictor_norm = "none", "bn"
    norms = models.network_norms(model)
    assert (norms.encoder.kind, norms.encoder.ws) == ("gn", False)
    assert (norms.projector.kind, norms.projector.ws) == ("none", True)
    assert (norms.predictor.kind, norms.predictor.ws) == ("bn", True)
    # Only BN averages statistics over the devices.
    assert norms.predictor.cross_replica_axis == AXIS
    assert norms.encoder.cross_replica_axis is None
    assert norms.projector.cross_replica_axis is None


def test_network_norms_bn_preset_syncs_every_component():
    model = tiny_config("unused", norm="bn").model
    norms = models.network_norms(model)
    for norm in norms:
        assert dataclasses.replace(norm, num_groups=16) == NormConfig(
            kind="bn", cross_replica_axis=AXIS, ws_eps=model.ws_eps
        )
    model.encoder_norm, model.encoder_ws = "ln", 1
    encoder = models.network_norms(model).encoder
    assert (encoder.kind, encoder.ws, encoder.cross_replica_axis) == ("ln", True, None)


def test_bn_init_needs_bn_everywhere():
    config = tiny_config("unused", norm="bn_init")
    exp = ByolExperiment(config, NUM_CLASSES)
    # After the BN-statistics initialisation, the network trains without BN.
    assert all(n.kind == "affine" for n in exp.norms) and exp.batch_independent
