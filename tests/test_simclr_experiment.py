"""Tests of byol.simclr_experiment: the pmapped SimCLR step against a direct one."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from byol import augmentations, config_checks, losses, parallel, simclr_experiment
from tests.fixtures import tiny_config

NUM_CLASSES = 10
BATCH = 16  # global: 8 per device
TEMPERATURE = 0.2


def _config(norm="none", **training):
    config = tiny_config(
        "unused",
        norm=norm,
        max_steps=20,
        warmup_steps=0,  # the first update already moves the parameters
        base_learning_rate=2.0,
        temperature=TEMPERATURE,
        **training,
    )
    config.method = "simclr"
    return config


def _fixed_views(rng, batch):
    """Deterministic views (image, its mirror image): the same on any device."""
    del rng
    images = batch["images"]
    return (
        augmentations.normalize(images),
        augmentations.normalize(images[:, :, ::-1]),
    )


def _random_params(forward, images, seed=0):
    """Random parameters without compiling the initialiser (shapes only)."""
    rng = np.random.default_rng(seed)
    shapes, state = jax.eval_shape(
        lambda x: forward.init(jax.random.key(0), x, is_training=True), images
    )
    assert not jax.tree.leaves(state), "a network without BN has no state"

    def draw(leaf):
        noise = rng.normal(size=leaf.shape).astype(np.float32)
        if len(leaf.shape) > 1:  # unit-variance outputs
            return noise / np.float32(np.sqrt(np.prod(leaf.shape[:-1])))
        return 0.1 * noise

    return jax.tree.map(draw, shapes), {}


def _assert_trees_close(actual, expected):
    paths = jax.tree_util.tree_leaves_with_path(actual)
    expected_leaves = jax.tree.leaves(expected)
    assert len(paths) == len(expected_leaves)
    for (path, a), e in zip(paths, expected_leaves, strict=True):
        np.testing.assert_allclose(
            np.asarray(a, np.float64),
            np.asarray(e, np.float64),
            rtol=1e-4,
            atol=1e-6,
            err_msg=jax.tree_util.keystr(path),
        )


@pytest.fixture(scope="module")
def steps():
    """Seven SimCLR updates on 2 devices, the same batch and views each time."""
    assert jax.device_count() == 2, "tests/conftest.py should give 2 CPU devices"
    exp = simclr_experiment.SimclrExperiment(_config(), NUM_CLASSES)
    exp.views = _fixed_views
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (BATCH, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, BATCH).astype(np.int32)
    params, state = _random_params(exp.forward, jnp.zeros((8, 28, 28, 1)))
    host = simclr_experiment.SimclrState(
        params, state, jax.device_get(exp.optimizer.init(params))
    )
    batch = {"images": images.reshape(2, 8, 28, 28, 1), "labels": labels.reshape(2, 8)}
    device_state, trace = parallel.replicate(host, jax.devices()), []
    for step in range(7):
        device_state, scalars = exp.update(device_state, step, batch)
        trace.append((jax.device_get(device_state), jax.device_get(scalars)))
    return exp, host, images, labels, trace


def test_one_update_equals_the_global_batch_loss_gradient_step(steps):
    exp, host, images, labels, trace = steps
    after, scalars = trace[0]
    view1, view2 = _fixed_views(None, {"images": images})

    # The whole batch on one "device", no pmap: NT-Xent over all 16 images,
    # the classifier's cross-entropy over view 1, then LARS.
    def loss_fn(params):
        out, _ = exp.forward.apply(
            params, {}, None, jnp.concatenate([view1, view2]), is_training=True
        )
        z1, z2 = out["projection"][:BATCH], out["projection"][BATCH:]
        xent = optax.softmax_cross_entropy_with_integer_labels(
            out["logits"][:BATCH], labels
        )
        nt_xent = losses.nt_xent_loss(z1, z2, TEMPERATURE)
        return nt_xent + jnp.mean(xent), nt_xent

    (loss, nt_xent), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        host.online_params
    )
    updates, opt_state = exp.optimizer.update(grads, host.opt_state, host.online_params)
    expected = optax.apply_updates(host.online_params, updates)

    np.testing.assert_allclose(scalars["repr_loss"], nt_xent, rtol=1e-5)
    np.testing.assert_allclose(scalars["loss"], loss, rtol=1e-5)
    np.testing.assert_allclose(scalars["grad_norm"], optax.tree.norm(grads), rtol=1e-4)
    assert float(optax.tree.norm(updates)) > 1e-3  # the step moved the params
    for device in range(2):  # both replicas hold the global-batch update
        _assert_trees_close(
            jax.tree.map(lambda x, d=device: x[d], after.online_params), expected
        )
        _assert_trees_close(
            jax.tree.map(lambda x, d=device: x[d], after.opt_state), opt_state
        )


def test_simclr_steps_lower_the_contrastive_loss(steps):
    *_, trace = steps
    repr_loss = [float(scalars["repr_loss"][0]) for _, scalars in trace]
    assert all(np.isfinite(repr_loss))
    # Same batch, same views: every update lowers the loss.
    assert np.all(np.diff(repr_loss) < 0), repr_loss
    assert repr_loss[-1] < repr_loss[0] - 0.02, repr_loss
    assert all(float(s["finite"][0]) == 1.0 for _, s in trace)


def test_state_and_network_have_no_target_and_no_predictor(steps):
    exp, host, *_ = steps
    assert simclr_experiment.SimclrState._fields == (
        "online_params",
        "online_state",
        "opt_state",
    )
    modules = set(host.online_params)
    assert {"projector/linear", "projector/linear_1", "classifier"} <= modules
    assert not any(m.startswith("predictor") for m in modules)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("method", "moco", "method 'moco' unknown; expected one of: byol, simclr"),
        ("training.temperature", 0.0, "training.temperature must be a finite"),
        ("training.temperature", float("nan"), "training.temperature must be"),
        ("model.bn_init", True, "model.bn_init is implemented for method 'byol'"),
        ("training.accumulation_steps", 2, "training.accumulation_steps must be 1"),
    ],
)
def test_bad_simclr_config_values_are_one_line_errors(field, value, message):
    config = _config(norm="bn")
    section, _, name = field.rpartition(".")
    (config[section] if section else config)[name] = value
    with pytest.raises(ValueError, match=message) as error:
        config_checks.check_pretrain_config(config)
    assert "\n" not in str(error.value)
