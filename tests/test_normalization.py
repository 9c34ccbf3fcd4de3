"""Tests for byol.normalization: norms by name, Affine, weight standardisation."""

import dataclasses
import functools

import chex
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byol.normalization import (
    NORM_NAMES,
    Affine,
    NormConfig,
    WSConv2D,
    WSLinear,
    make_norm,
    standardize_weight,
)

RNG = np.random.default_rng(0)
X_MAP = RNG.normal(1.0, 2.0, size=(4, 3, 5, 8)).astype(np.float32)  # [B,H,W,C]
X_VEC = RNG.normal(1.0, 2.0, size=(4, 8)).astype(np.float32)  # [B,C]


def _norm_net(config: NormConfig, is_training: bool = True):
    """A transformed net holding one norm slot named batchnorm_0 inside `block`."""

    class Block(hk.Module):
        def __call__(self, x):
            return make_norm(config, "batchnorm_0")(x, is_training)

    return hk.without_apply_rng(
        hk.transform_with_state(lambda x: Block(name="block")(x))
    )


def _init_apply(config, x, params_fn=None, is_training=True):
    net = _norm_net(config, is_training)
    params, state = net.init(None, x)
    if params_fn is not None:
        params = params_fn(params)
    out, _ = net.apply(params, state, x)
    return params, np.asarray(out)


def _random_affine_params(params):
    """Non-trivial scale/offset so the tests see them applied."""
    rng = np.random.default_rng(1)
    return jax.tree.map(
        lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype) + 1.0, params
    )


def _np_group_norm(x, groups, scale, offset, eps):
    b, c = x.shape[0], x.shape[-1]
    g = x.reshape(b, -1, groups, c // groups)
    mean = g.mean(axis=(1, 3), keepdims=True)
    var = g.var(axis=(1, 3), keepdims=True)
    y = ((g - mean) / np.sqrt(var + eps)).reshape(x.shape)
    return y * scale.reshape(-1) + offset.reshape(-1)


# ----------------------------------------------------------------- NormConfig


def test_norm_config_defaults():
    config = NormConfig()
    assert config.kind == "bn" and config.num_groups == 16 and not config.ws
    assert config.bn_decay == 0.9 and config.eps == 1e-5
    assert config.ws_eps == 1e-4 and config.cross_replica_axis is None
    assert NORM_NAMES == ("bn", "gn", "ln", "none", "affine")
    for kind in NORM_NAMES:
        NormConfig(kind=kind)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.kind = "gn"


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(kind="bm"), "kind"),
        (dict(bn_decay=1.0), "bn_decay"),
        (dict(cross_replica_axis=""), "cross_replica_axis"),
    ],
)
def test_norm_config_rejects_bad_values(kwargs, field):
    with pytest.raises(ValueError, match=rf"^{field} "):
        NormConfig(**kwargs)


def test_unknown_kind_message_lists_allowed_values():
    with pytest.raises(ValueError, match="bn, gn, ln, none, affine"):
        NormConfig(kind="batchnorm")


# ------------------------------------------------------------ make_norm names


@pytest.mark.parametrize("kind", ["bn", "gn", "ln", "affine"])
@pytest.mark.parametrize("x", [X_MAP, X_VEC], ids=["nhwc", "bc"])
def test_every_kind_uses_the_slot_name(kind, x):
    net = _norm_net(NormConfig(kind=kind, num_groups=4))
    params, _ = jax.eval_shape(net.init, None, x)
    assert list(params) == ["block/batchnorm_0"]
    assert sorted(params["block/batchnorm_0"]) == ["offset", "scale"]


def test_none_is_identity_and_creates_nothing():
    params, out = _init_apply(NormConfig(kind="none"), X_MAP)
    assert params == {}
    np.testing.assert_array_equal(out, X_MAP)


@pytest.mark.parametrize("x", [X_MAP, X_VEC], ids=["nhwc", "bc"])
def test_affine_params_match_batchnorm_shapes(x):
    shapes = {}
    for kind in ("bn", "affine"):
        params, _ = jax.eval_shape(_norm_net(NormConfig(kind=kind)).init, None, x)
        shapes[kind] = jax.tree.map(lambda p: (p.shape, p.dtype), params)
    assert shapes["bn"] == shapes["affine"]
    channel_shape = (1,) * (x.ndim - 1) + (x.shape[-1],)
    assert shapes["affine"]["block/batchnorm_0"]["scale"][0] == channel_shape


def test_affine_init_and_output():
    params, out = _init_apply(NormConfig(kind="affine"), X_MAP)
    p = params["block/batchnorm_0"]
    np.testing.assert_array_equal(p["scale"], np.ones((1, 1, 1, 8)))
    np.testing.assert_array_equal(p["offset"], np.zeros((1, 1, 1, 8)))
    np.testing.assert_array_equal(out, X_MAP)
    params, out = _init_apply(NormConfig(kind="affine"), X_MAP, _random_affine_params)
    p = params["block/batchnorm_0"]
    expected = X_MAP * np.asarray(p["scale"]) + np.asarray(p["offset"])
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_affine_module_standalone():
    def f(x):
        return Affine(name="aff")(x, is_training=False)

    params = hk.transform(f).init(None, X_VEC)
    assert jax.tree.map(jnp.shape, params) == {
        "aff": {"scale": (1, 8), "offset": (1, 8)}
    }


# -------------------------------------------------------------- BN, GN and LN


def test_bn_matches_numpy_and_uses_config():
    config = NormConfig(kind="bn", eps=0.5, bn_decay=0.8)
    net = _norm_net(config, is_training=True)
    params, state = net.init(None, X_MAP)
    params = _random_affine_params(params)
    p = params["block/batchnorm_0"]
    assert p["scale"].shape == (1, 1, 1, 8)
    out, state = net.apply(params, state, X_MAP)
    mean = X_MAP.mean(axis=(0, 1, 2))
    var = X_MAP.var(axis=(0, 1, 2))
    expected = (X_MAP - mean) / np.sqrt(var + 0.5) * np.asarray(p["scale"]) + (
        np.asarray(p["offset"])
    )
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    # Second step on another batch: the zero-debiased EMA with decay 0.8 is
    # (0.2 * 0.8 * m1 + 0.2 * m2) / (1 - 0.8^2).
    x2 = X_MAP * 2.0 + 3.0
    _, state = net.apply(params, state, x2)
    m1, m2 = mean, x2.mean(axis=(0, 1, 2))
    ema = state["block/batchnorm_0/~/mean_ema"]["average"].reshape(-1)
    np.testing.assert_allclose(ema, (0.16 * m1 + 0.2 * m2) / 0.36, rtol=1e-5)


def test_gn_matches_numpy():
    config = NormConfig(kind="gn", num_groups=4, eps=1e-3)
    params, out = _init_apply(config, X_MAP, _random_affine_params)
    p = params["block/batchnorm_0"]
    assert p["scale"].shape == (8,)
    expected = _np_group_norm(X_MAP, 4, p["scale"], p["offset"], 1e-3)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("x", [X_MAP, X_VEC], ids=["nhwc", "bc"])
def test_gn_with_one_group_equals_ln_over_all_but_batch(x):
    def with_params(params):
        # The same random scale/offset for both, so the comparison sees them.
        return _random_affine_params(params)

    p_gn, out_gn = _init_apply(NormConfig(kind="gn", num_groups=1), x, with_params)
    p_ln, out_ln = _init_apply(NormConfig(kind="ln"), x, with_params)
    chex.assert_trees_all_equal(p_gn, p_ln)
    np.testing.assert_allclose(out_gn, out_ln, rtol=1e-5, atol=1e-5)
    # Independent reference: LN over (H, W, C) for maps, over C for vectors.
    p = p_ln["block/batchnorm_0"]
    axes = tuple(range(1, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    expected = (x - mean) / np.sqrt(var + 1e-5) * np.asarray(p["scale"]) + (
        np.asarray(p["offset"])
    )
    np.testing.assert_allclose(out_ln, expected, rtol=1e-5, atol=1e-5)


def test_gn_of_constant_input_is_the_offset():
    # Groups of 4*4*2 = 32 elements and power-of-two values: the mean is exact.
    values = np.array([0.0, 1.0, -2.0, 4.0], np.float32)
    x = np.broadcast_to(values[:, None, None, None], (4, 4, 4, 8))
    params, out = _init_apply(
        NormConfig(kind="gn", num_groups=4), x, _random_affine_params
    )
    offset = np.asarray(params["block/batchnorm_0"]["offset"])
    np.testing.assert_allclose(out, np.broadcast_to(offset, x.shape), atol=1e-6)


def test_gn_groups_must_divide_channels():
    net = _norm_net(NormConfig(kind="gn", num_groups=3))
    # Haiku's own check (the config checks name the field before any trace).
    with pytest.raises(ValueError, match=r"channels=8, groups=3"):
        net.init(None, X_MAP)


@pytest.mark.parametrize("kind", ["gn", "ln", "none", "affine", "bn"])
def test_batch_independence(kind):
    """Example 0's output must not depend on the rest of the batch, except BN's."""
    config = NormConfig(kind=kind, num_groups=4)
    other = X_MAP.copy()
    other[1:] = RNG.normal(-2.0, 0.5, size=other[1:].shape)
    _, out_a = _init_apply(config, X_MAP, _random_affine_params)
    _, out_b = _init_apply(config, other, _random_affine_params)
    if kind == "bn":
        assert np.abs(out_a[0] - out_b[0]).max() > 1e-2
    else:
        np.testing.assert_allclose(out_a[0], out_b[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["bn", "gn", "ln", "affine"])
def test_bfloat16_activations_are_normalised_in_float32(kind):
    """bfloat16 in and out, with statistics and affine taken in float32."""
    config = NormConfig(kind=kind, num_groups=4)
    # A large mean: centring in bfloat16 would lose most of the signal.
    x = jnp.asarray(X_MAP * 10 + 300, jnp.bfloat16)
    net = _norm_net(config)
    params, state = net.init(None, x.astype(jnp.float32))
    params = _random_affine_params(params)
    out, _ = net.apply(params, state, x)
    expected, _ = net.apply(params, state, x.astype(jnp.float32))
    assert out.dtype == jnp.bfloat16
    np.testing.assert_array_equal(
        np.asarray(out, np.float32),
        np.asarray(expected.astype(jnp.bfloat16), np.float32),
    )


# ------------------------------------------------------ weight standardisation


def _np_standardize(w, eps):
    """float64 numpy forward: returns (w_hat, per-channel scale)."""
    w = np.asarray(w, np.float64)
    flat = w.reshape(-1, w.shape[-1])
    fan_in = flat.shape[0]
    centred = flat - flat.mean(axis=0)
    var = (centred**2).mean(axis=0)
    scale = np.sqrt(fan_in) / np.sqrt(np.maximum(var * fan_in, eps))
    return (centred * scale).reshape(w.shape), scale


def _np_standardize_grad(w, g, eps):
    """Manual backward of sum(g * standardize(w)) w.r.t. w (var above floor)."""
    w_hat, scale = _np_standardize(w, eps)
    y = w_hat.reshape(-1, w.shape[-1])
    g = np.asarray(g, np.float64).reshape(y.shape)
    grad = scale * (g - g.mean(axis=0) - y * (g * y).mean(axis=0))
    return grad.reshape(w.shape)


W_CONV = RNG.normal(0.3, 0.2, size=(3, 3, 4, 5)).astype(np.float32)
G_CONV = RNG.normal(size=W_CONV.shape).astype(np.float32)


@pytest.mark.parametrize("shape", [(3, 3, 4, 5), (7, 6)])
def test_standardize_weight_zero_mean_unit_variance(shape):
    w = RNG.normal(0.5, 0.05, size=shape).astype(np.float32)
    w_hat = np.asarray(standardize_weight(jnp.asarray(w), eps=1e-4))
    assert w_hat.shape == w.shape and w_hat.dtype == np.float32
    flat = w_hat.reshape(-1, shape[-1]).astype(np.float64)
    np.testing.assert_allclose(flat.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(flat.var(axis=0), 1.0, rtol=1e-5)
    np.testing.assert_allclose(w_hat, _np_standardize(w, 1e-4)[0], rtol=1e-5, atol=1e-5)


def test_standardize_weight_of_bfloat16_computes_in_float32():
    w = jnp.asarray(W_CONV + 5.0, jnp.bfloat16)  # an offset bfloat16 centring loses
    w_hat = standardize_weight(w, 1e-4)
    assert w_hat.dtype == jnp.bfloat16
    expected = standardize_weight(w.astype(jnp.float32), 1e-4).astype(jnp.bfloat16)
    np.testing.assert_array_equal(
        np.asarray(w_hat, np.float32), np.asarray(expected, np.float32)
    )


def test_standardize_weight_floor_protects_constant_kernels():
    w = jnp.full((3, 3, 2, 4), 0.7)
    w_hat, grad = jax.value_and_grad(lambda w: standardize_weight(w, 1e-4).sum())(w)
    assert np.all(np.isfinite(w_hat)) and np.all(np.isfinite(grad))
    with pytest.raises(ValueError, match="rank"):
        standardize_weight(jnp.ones(4), 1e-4)


def test_numpy_reference_gradient_matches_finite_differences():
    """Validates the manual numpy backward itself (float64 central differences)."""
    w = W_CONV.astype(np.float64)
    g = G_CONV.astype(np.float64)
    analytic = _np_standardize_grad(w, g, 1e-4)
    h = 1e-6
    for index in [(0, 0, 0, 0), (1, 2, 3, 4), (2, 1, 0, 2), (0, 2, 2, 1)]:
        plus, minus = w.copy(), w.copy()
        plus[index] += h
        minus[index] -= h
        numeric = (
            (g * _np_standardize(plus, 1e-4)[0]).sum()
            - (g * _np_standardize(minus, 1e-4)[0]).sum()
        ) / (2 * h)
        np.testing.assert_allclose(analytic[index], numeric, rtol=1e-6, atol=1e-8)


def test_standardize_weight_gradient_matches_numpy():
    grad = jax.grad(lambda w: jnp.sum(G_CONV * standardize_weight(w, 1e-4)))(
        jnp.asarray(W_CONV)
    )
    expected = _np_standardize_grad(W_CONV, G_CONV, 1e-4)
    np.testing.assert_allclose(
        grad, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max()
    )


def _check_ws_layer(plain_cls, ws_cls, w, x, name):
    """WS layer == plain layer applied to the standardised kernel; same params."""
    init = hk.initializers.Constant(w)
    bias = hk.initializers.Constant(np.linspace(-1.0, 1.0, w.shape[-1]))
    plain = hk.transform(lambda x: plain_cls(w_init=init, b_init=bias, name=name)(x))
    ws = hk.transform(
        lambda x: ws_cls(w_init=init, b_init=bias, ws_eps=1e-4, name=name)(x)
    )
    params = ws.init(None, x)
    # Same names, shapes and raw (unstandardised) stored values.
    chex.assert_trees_all_equal(params, plain.init(None, x))
    std = {name: dict(params[name], w=standardize_weight(params[name]["w"], 1e-4))}
    out = ws.apply(params, None, x)
    np.testing.assert_allclose(out, plain.apply(std, None, x), rtol=1e-5, atol=1e-5)
    assert not np.allclose(out, plain.apply(params, None, x), atol=1e-2)
    # Gradients reach the raw weights.
    grads = jax.grad(lambda p: ws.apply(p, None, x).sum())(params)
    assert np.abs(grads[name]["w"]).max() > 0


def test_ws_conv_has_plain_params_and_standardised_kernel():
    conv = functools.partial(hk.Conv2D, 5, 3)
    ws_conv = functools.partial(WSConv2D, 5, 3)
    _check_ws_layer(conv, ws_conv, W_CONV[:, :, :, :5], X_MAP[..., :4], "conv")


def test_ws_linear_has_plain_params_and_standardised_weight():
    w = RNG.normal(0.2, 0.1, size=(8, 5)).astype(np.float32)
    linear = functools.partial(hk.Linear, 5)
    ws_linear = functools.partial(WSLinear, 5)
    _check_ws_layer(linear, ws_linear, w, X_VEC, "linear")
