"""Tests for byol.bn_init: BN statistics folded into an affine, BN-free network."""

import functools

import chex
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byol.bn_init import bn_statistics_init, to_affine
from byol.networks import MLP, NetworkNorms, TinyResNet, norm_preset
from byol.normalization import NormConfig, make_norm

IMAGES = (
    np.random.default_rng(0).normal(0.5, 1.0, size=(6, 16, 16, 3)).astype(np.float32)
)


def _numpy_params(shapes, seed=0):
    """Random params (kernels ~ N(0, 1/fan_in), non-trivial gamma/beta)."""
    rng = np.random.default_rng(seed)

    def make(path, leaf):
        name = path[-1].key
        if name == "w":
            value = rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
        elif name == "scale":
            value = 1.0 + 0.3 * rng.normal(size=leaf.shape)
        else:
            value = 0.3 * rng.normal(size=leaf.shape)
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(make, shapes)


def _byol_net(norms: NetworkNorms):
    """Encoder + projector + predictor, as in the online network."""

    def forward(x, is_training):
        emb = TinyResNet(norm=norms.encoder, small_image=True)(x, is_training)
        proj = MLP(32, 8, norm=norms.projector, name="projector")(emb, is_training)
        pred = MLP(32, 8, norm=norms.predictor, name="predictor")(proj, is_training)
        return emb, pred

    return hk.transform_with_state(forward)


@functools.cache
def _converted():
    """BN params/state, converted params, and both networks' outputs."""
    bn_norms = norm_preset("bn")
    bn_net = _byol_net(bn_norms)
    shapes = jax.eval_shape(lambda x: bn_net.init(jax.random.key(0), x, True), IMAGES)
    params = _numpy_params(shapes[0])
    state = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes[1])
    affine_params = jax.jit(
        lambda p, s, x: bn_statistics_init(
            bn_net.apply, p, s, None, x, is_training=True
        )
    )(params, state, IMAGES)
    bn_out, _ = jax.jit(lambda p, s, x: bn_net.apply(p, s, None, x, True))(
        params, state, IMAGES
    )
    affine_net = _byol_net(to_affine(bn_norms))
    affine_apply = jax.jit(lambda p, x: affine_net.apply(p, {}, None, x, True)[0])
    return params, affine_params, affine_net, affine_apply, bn_out


def _assert_close(actual, expected, tol=1e-5):
    """|actual - expected| <= tol * max|expected|."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    np.testing.assert_allclose(
        actual, expected, rtol=0, atol=tol * np.abs(expected).max()
    )


def test_converted_params_fit_the_affine_network():
    params, affine_params, affine_net, _, _ = _converted()
    affine_shapes, affine_state = jax.eval_shape(
        lambda x: affine_net.init(jax.random.key(0), x, True), IMAGES
    )
    assert affine_state == {}
    chex.assert_trees_all_equal_shapes_and_dtypes(affine_params, affine_shapes)
    chex.assert_trees_all_equal_structs(affine_params, params)
    # Only norm scales/offsets change.
    for module, values in params.items():
        for name, value in values.items():
            changed = not np.array_equal(value, affine_params[module][name])
            assert changed == (name in ("scale", "offset")), (module, name)


def test_affine_network_reproduces_bn_training_forward():
    _, affine_params, _, affine_apply, bn_out = _converted()
    affine_out = affine_apply(affine_params, IMAGES)
    for a, b in zip(affine_out, bn_out, strict=True):
        _assert_close(a, b, 1e-5)


def test_affine_network_uses_no_batch_statistics():
    _, affine_params, _, affine_apply, _ = _converted()
    other = IMAGES.copy()
    other[1:] = np.random.default_rng(5).normal(-1.0, 3.0, size=other[1:].shape)
    out_a = affine_apply(affine_params, IMAGES)
    out_b = affine_apply(affine_params, other)
    for a, b in zip(out_a, out_b, strict=True):
        _assert_close(a[0], b[0], 1e-6)


def _single_bn(config: NormConfig):
    def forward(x, is_training):
        return make_norm(config, "batchnorm_0")(x, is_training)

    return hk.transform_with_state(forward)


def test_single_layer_values_match_numpy():
    """scale' = g / sqrt(var + eps), offset' = b - g * mean / sqrt(var + eps)."""
    x = IMAGES * np.array([1.0, 3.0, 0.1], np.float32) + np.float32(2.0)
    net = _single_bn(NormConfig("bn", eps=0.01))
    params, state = net.init(None, x, True)
    params = _numpy_params(params)
    new = bn_statistics_init(net.apply, params, state, None, x, is_training=True)
    gamma = np.asarray(params["batchnorm_0"]["scale"], np.float64)
    beta = np.asarray(params["batchnorm_0"]["offset"], np.float64)
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=(0, 1, 2))
    var = x64.var(axis=(0, 1, 2))
    scale = gamma / np.sqrt(var + 0.01)
    offset = beta - gamma * mean / np.sqrt(var + 0.01)
    np.testing.assert_allclose(new["batchnorm_0"]["scale"], scale, rtol=1e-5)
    np.testing.assert_allclose(
        new["batchnorm_0"]["offset"], offset, rtol=1e-5, atol=1e-6
    )


def test_jit_and_cross_replica_statistics():
    """Jitted whole; under pmap the statistics are the global batch's."""
    x = IMAGES[:4, :4, :4]
    net = _single_bn(NormConfig("bn", cross_replica_axis="i"))
    plain = _single_bn(NormConfig("bn"))
    params, state = plain.init(None, x, True)
    params = _numpy_params(params)
    expected = jax.jit(
        lambda p, s, x: bn_statistics_init(plain.apply, p, s, None, x, is_training=True)
    )(params, state, x)

    def init_replica(p, s, x):
        return bn_statistics_init(net.apply, p, s, None, x, is_training=True)

    replicate = functools.partial(jax.tree.map, lambda a: jnp.stack([a, a]))
    per_device = jax.pmap(init_replica, axis_name="i")(
        replicate(params), replicate(state), x.reshape(2, 2, 4, 4, 3)
    )
    for device in range(2):
        on_device = jax.tree.map(
            functools.partial(lambda d, a: a[d], device), per_device
        )
        chex.assert_trees_all_close(on_device, expected, rtol=1e-5)


def test_errors():
    x = IMAGES[:2, :4, :4]
    net = _single_bn(NormConfig("bn"))
    params, state = net.init(None, x, True)
    with pytest.raises(ValueError, match="^is_training False for batchnorm_0"):
        bn_statistics_init(net.apply, params, state, None, x, is_training=False)

    def twice(x, is_training):
        norm = make_norm(NormConfig("bn"), "batchnorm_0")
        return norm(norm(x, is_training), is_training)

    twice_net = hk.transform_with_state(twice)
    params, state = twice_net.init(None, x, True)
    with pytest.raises(ValueError, match="^batchnorm_0 called twice"):
        bn_statistics_init(twice_net.apply, params, state, None, x, is_training=True)

    no_bn = _single_bn(NormConfig("gn", num_groups=1))
    params, state = no_bn.init(None, x, True)
    with pytest.raises(ValueError, match="no hk.BatchNorm"):
        bn_statistics_init(no_bn.apply, params, state, None, x, is_training=True)


def test_to_affine():
    assert to_affine(norm_preset("bn")) == NetworkNorms(*[NormConfig("affine")] * 3)
    gn_ws = norm_preset("gn_ws")
    assert to_affine(gn_ws) == gn_ws
    mixed = NetworkNorms(
        NormConfig("bn", ws=True, bn_decay=0.99), NormConfig("gn"), NormConfig("none")
    )
    assert to_affine(mixed) == NetworkNorms(
        NormConfig("affine", ws=True, bn_decay=0.99),
        NormConfig("gn"),
        NormConfig("none"),
    )
