"""Tests for byol.networks: ResNet encoders, MLP heads, norm presets."""

import dataclasses
import functools

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byol.networks import (
    ENCODERS,
    MLP,
    NORM_PRESETS,
    NetworkNorms,
    ResNet,
    ResNet18,
    ResNet50,
    TinyResNet,
    make_encoder,
    min_image_size,
    norm_preset,
)
from byol.normalization import NormConfig, standardize_weight

SMALL = jnp.zeros((1, 32, 32, 3))


def _shapes(forward, x=SMALL):
    """Param and state shapes of forward(x, is_training=True), without compute."""
    net = hk.transform_with_state(lambda x: forward(x, True))
    return jax.eval_shape(net.init, jax.random.key(0), x)


def _tree_shapes(tree):
    return {
        module: {name: tuple(v.shape) for name, v in values.items()}
        for module, values in tree.items()
    }


def _assert_close(actual, expected, tol=1e-5):
    """|actual - expected| <= tol * max|expected| (float32, deep nets)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tol * scale)


def _count(tree):
    return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(tree))


@functools.cache
def _haiku_resnet_shapes(depth: int):
    cls = getattr(hk.nets, f"ResNet{depth}")
    params, state = _shapes(lambda x, t: cls(num_classes=10)(x, t))
    params = {k: v for k, v in params.items() if not k.endswith("/~/logits")}
    return params, state


# ----------------------------------------------------- Haiku compatibility


def test_resnet50_bn_tree_matches_haiku_exactly():
    params, state = _shapes(lambda x, t: ResNet50()(x, t))
    hk_params, hk_state = _haiku_resnet_shapes(50)
    assert _tree_shapes(params) == _tree_shapes(hk_params)
    assert _tree_shapes(state) == _tree_shapes(hk_state)
    assert _count(params) == _count(hk_params) == 23_508_032
    # The names DeepMind's BYOL checkpoints use.
    for name in [
        "res_net50/~/initial_conv",
        "res_net50/~/initial_batchnorm",
        "res_net50/~/block_group_0/~/block_0/~/shortcut_conv",
        "res_net50/~/block_group_0/~/block_0/~/shortcut_batchnorm",
        "res_net50/~/block_group_3/~/block_2/~/conv_2",
        "res_net50/~/block_group_3/~/block_2/~/batchnorm_2",
    ]:
        assert name in params


@pytest.mark.parametrize("depth", [18, 34, 101])
def test_other_depths_match_haiku(depth):
    params, _ = _shapes(lambda x, t: ENCODERS[f"resnet{depth}"]()(x, t))
    hk_params, _ = _haiku_resnet_shapes(depth)
    assert _tree_shapes(params) == _tree_shapes(hk_params)


def test_embedding_sizes_and_width_multiplier():
    def embed_shape(forward):
        net = hk.transform_with_state(lambda x: forward(x, True))
        params, state = jax.eval_shape(net.init, jax.random.key(0), SMALL)
        out, _ = jax.eval_shape(net.apply, params, state, None, SMALL)
        return params, out.shape

    _, shape = embed_shape(lambda x, t: ResNet18()(x, t))
    assert shape == (1, 512)
    params, shape = embed_shape(lambda x, t: ResNet50(width_multiplier=2)(x, t))
    assert shape == (1, 4096)
    assert params["res_net50/~/initial_conv"]["w"].shape == (7, 7, 3, 128)
    params, shape = embed_shape(lambda x, t: TinyResNet(width_multiplier=2)(x, t))
    assert shape == (1, 128)
    assert params["tiny_res_net/~/initial_conv"]["w"].shape == (7, 7, 3, 16)


def _scale_inits(forward):
    """{param full name: initial value} of every norm scale, without compute."""
    inits = {}

    def creator(next_creator, shape, dtype, init, context):
        if context.name == "scale":
            inits[context.full_name] = (init, shape, dtype)
        return next_creator(shape, dtype, init)

    def with_creator(x, is_training):
        with hk.custom_creator(creator):
            return forward(x, is_training)

    _shapes(with_creator)
    return {
        name: np.asarray(init(shape, dtype))
        for name, (init, shape, dtype) in inits.items()
    }


def test_gamma_initialised_to_one_everywhere():
    scales = _scale_inits(lambda x, t: ResNet50()(x, t))
    assert len(scales) == 1 + 16 * 3 + 4  # stem, 3 per block, 4 shortcuts
    for scale in scales.values():
        np.testing.assert_array_equal(scale, 1.0)
    # Haiku's own ResNet50 zero-initialises each block's last BN; we do not.
    hk_scales = _scale_inits(lambda x, t: hk.nets.ResNet50(10)(x, t))
    zero = [name for name, scale in hk_scales.items() if not scale.any()]
    assert len(zero) == 16 and all("batchnorm_2" in name for name in zero)


def test_gn_ws_keeps_module_names_of_bn():
    bn, _ = _shapes(lambda x, t: ResNet50()(x, t))
    gn, _ = _shapes(lambda x, t: ResNet50(norm=NORM_PRESETS["gn_ws"].encoder)(x, t))
    affine, _ = _shapes(lambda x, t: ResNet50(norm=NormConfig("affine"))(x, t))
    none, _ = _shapes(lambda x, t: ResNet50(norm=NormConfig("none"))(x, t))
    assert sorted(gn) == sorted(bn)
    assert _tree_shapes(affine) == _tree_shapes(bn)
    assert sorted(none) == sorted(k for k in bn if "batchnorm" not in k)
    conv = "res_net50/~/block_group_1/~/block_0/~/conv_1"
    assert gn[conv]["w"].shape == bn[conv]["w"].shape == (3, 3, 128, 128)
    assert gn["res_net50/~/initial_batchnorm"]["scale"].shape == (64,)


def test_encoder_registry():
    assert list(ENCODERS) == [
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "resnet152",
        "resnet200",
        "tiny",
    ]
    built = []
    for factory in ENCODERS.values():
        hk.transform(lambda f=factory: built.append(f())).init(None)
    assert all(isinstance(encoder, ResNet) for encoder in built)
    with pytest.raises(ValueError, match=r"^encoder 'resnet51' unknown; .*resnet50"):
        make_encoder("resnet51")


@pytest.mark.parametrize("name", ["resnet152", "resnet200"])
def test_make_encoder_builds_deep_nets(name):
    params, _ = _shapes(lambda x, t: make_encoder(name)(x, t))
    expected = {"resnet152": 58_143_808, "resnet200": 62_624_832}[name]
    hk_params, _ = _haiku_resnet_shapes(int(name[6:]))
    assert _count(params) == _count(hk_params) == expected


# ----------------------------------------------------------- stems and inputs


def test_min_image_size_rule():
    assert min_image_size(False) == 32
    assert min_image_size(True) == 8


def test_small_image_stem():
    params, _ = _shapes(
        lambda x, t: TinyResNet(small_image=True)(x, t), SMALL[:, :8, :8]
    )
    assert params["tiny_res_net/~/initial_conv"]["w"].shape == (3, 3, 3, 8)


def _forward_output_hw(small_image):
    """Spatial size of the last stage, through an interceptor on the torso."""
    sizes = []

    def record(next_f, args, kwargs, context):
        out = next_f(*args, **kwargs)
        name = context.module.module_name
        if context.method_name == "__call__" and name.endswith("block_group_3"):
            sizes.append(out.shape[1:3])
        return out

    def forward(x, t):
        with hk.intercept_methods(record):
            return TinyResNet(small_image=small_image)(x, t)

    _shapes(forward, jnp.zeros((1, 64, 64, 3)))
    return sizes[0]


def test_total_stride():
    assert _forward_output_hw(False) == (2, 2)  # 64 / 32
    assert _forward_output_hw(True) == (8, 8)  # 64 / 8


@pytest.mark.parametrize(
    "small_image, shape, match",
    [
        (False, (1, 16, 16, 3), r"^image size 16 too small .*min 32.*small_image=True"),
        (False, (1, 64, 31, 3), r"^image size 31 too small"),
        (True, (1, 7, 7, 3), r"^image size 7 too small for the small-image stem"),
        (False, (1, 3, 64, 64), r"NCHW; expected NHWC"),
        (False, (64, 64, 3), r"expected NHWC"),
    ],
)
def test_bad_inputs(small_image, shape, match):
    with pytest.raises(ValueError, match=match):
        _shapes(
            lambda x, t: TinyResNet(small_image=small_image)(x, t), jnp.zeros(shape)
        )


def test_gn_groups_not_dividing_channels():
    norm = NormConfig("gn", num_groups=16)
    with pytest.raises(ValueError, match=r"channels=8, groups=16"):
        _shapes(lambda x, t: TinyResNet(norm=norm)(x, t))
    _shapes(lambda x, t: TinyResNet(norm=norm, width_multiplier=2)(x, t))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="^blocks_per_group"):
        _shapes(
            lambda x, t: ResNet(
                (1, 1, 1),
                bottleneck=False,
                channels_per_group=(8, 8, 8, 8),
                use_projection=(True,) * 4,
            )(x, t)
        )
    with pytest.raises(ValueError, match="^width_multiplier"):
        _shapes(lambda x, t: TinyResNet(width_multiplier=0)(x, t))


# ---------------------------------------------------- behaviour of forwards

BATCH = np.random.default_rng(0).normal(size=(4, 16, 16, 3)).astype(np.float32)
OTHER = BATCH.copy()
OTHER[1:] = np.random.default_rng(1).normal(2.0, 3.0, size=OTHER[1:].shape)

TINY_NORMS = {
    "bn": NormConfig("bn"),
    "gn_ws": NormConfig("gn", num_groups=4, ws=True),
    "ln": NormConfig("ln"),
    "none": NormConfig("none"),
    "affine": NormConfig("affine"),
}


def _numpy_params(shapes, seed=0):
    """Cheap random params for a shape tree (Haiku's initialisers compile slowly).

    Kernels ~ N(0, 1/fan_in); norm scales/offsets near 1/0 but not equal, so
    they matter.
    """
    rng = np.random.default_rng(seed)

    def make(path, leaf):
        shape, name = leaf.shape, path[-1].key
        if name == "w":
            value = rng.normal(size=shape) / np.sqrt(np.prod(shape[:-1]))
        elif name == "scale":
            value = 1.0 + 0.2 * rng.normal(size=shape)
        else:
            value = 0.2 * rng.normal(size=shape)
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(make, shapes)


@functools.cache
def _tiny(norm_name):
    """Params/state and a compiled forward of TinyResNet + projector."""
    norm = TINY_NORMS[norm_name]

    def forward(x, is_training):
        emb = TinyResNet(norm=norm, small_image=True)(x, is_training)
        return MLP(16, 4, norm=norm, name="projector")(emb, is_training)

    net = hk.transform_with_state(forward)
    param_shapes, state_shapes = _shapes(forward, BATCH)
    params = _numpy_params(param_shapes)
    state = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), state_shapes)
    apply = jax.jit(lambda p, s, x: net.apply(p, s, None, x, True)[0])
    return params, state, apply


@pytest.mark.parametrize("norm_name", list(TINY_NORMS))
def test_batch_dependence(norm_name):
    params, state, apply = _tiny(norm_name)
    out_a = np.asarray(apply(params, state, BATCH))
    out_b = np.asarray(apply(params, state, OTHER))
    assert out_a.shape == (4, 4) and np.all(np.isfinite(out_a))
    if norm_name == "bn":
        assert np.abs(out_a[0] - out_b[0]).max() > 1e-3 * np.abs(out_a[0]).max()
    else:
        _assert_close(out_a[0], out_b[0])


def test_ws_encoder_ignores_the_scale_of_raw_conv_kernels():
    """With WS, scaling a raw kernel per output channel changes nothing."""
    params, state, apply = _tiny("gn_ws")
    factor = jnp.linspace(0.5, 3.0, 8)

    def rescale(p):
        p = dict(p)
        name = "tiny_res_net/~/block_group_0/~/block_0/~/conv_1"
        p[name] = {"w": p[name]["w"] * factor}
        return p

    _assert_close(apply(rescale(params), state, BATCH), apply(params, state, BATCH))
    params, state, apply = _tiny("ln")  # no WS: the output must change
    assert not np.allclose(
        apply(rescale(params), state, BATCH), apply(params, state, BATCH)
    )


def test_two_calls_share_parameters():
    def forward(x):
        enc = TinyResNet(small_image=True)
        proj = MLP(16, 4, name="projector")
        return proj(enc(x, True), True), proj(enc(x + 1.0, True), True)

    params, state = jax.eval_shape(
        hk.transform_with_state(forward).init, jax.random.key(0), BATCH
    )
    single, _ = _shapes(
        lambda x, t: MLP(16, 4, name="projector")(
            TinyResNet(small_image=True)(x, t), t
        ),
        BATCH,
    )
    assert _tree_shapes(params) == _tree_shapes(single)


# ----------------------------------------------------------------------- MLP


def _reference_byol_mlp(x):
    """DeepMind BYOL's MLP structure, built independently from plain Haiku."""

    class Mlp(hk.Module):
        def __call__(self, x):
            out = hk.Linear(output_size=32, with_bias=True)(x)
            out = hk.BatchNorm(True, True, 0.9)(out, is_training=True)
            return hk.Linear(output_size=8, with_bias=False)(jax.nn.relu(out))

    return Mlp(name="projector")(x)


def test_mlp_names_match_deepmind_byol():
    x = jnp.zeros((2, 12))
    params, state = _shapes(lambda x, t: MLP(32, 8, name="projector")(x, t), x)
    ref_params, ref_state = jax.eval_shape(
        hk.transform_with_state(_reference_byol_mlp).init, jax.random.key(0), x
    )
    assert _tree_shapes(params) == _tree_shapes(ref_params)
    assert _tree_shapes(state) == _tree_shapes(ref_state)
    assert _tree_shapes(params) == {
        "projector/linear": {"w": (12, 32), "b": (32,)},
        "projector/batch_norm": {"scale": (1, 32), "offset": (1, 32)},
        "projector/linear_1": {"w": (32, 8)},
    }


@pytest.mark.parametrize("kind", ["gn", "ln", "affine"])
def test_mlp_other_norms_keep_names(kind):
    x = jnp.zeros((2, 12))
    params, _ = _shapes(
        lambda x, t: MLP(32, 8, norm=NormConfig(kind, num_groups=4), name="p")(x, t), x
    )
    assert sorted(params) == ["p/batch_norm", "p/linear", "p/linear_1"]
    params, _ = _shapes(lambda x, t: MLP(32, 8, norm=NormConfig("none"))(x, t), x)
    assert sorted(params) == ["mlp/linear", "mlp/linear_1"]


def test_ws_mlp_standardises_both_linear_layers():
    x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 12)), jnp.float32)
    norm_ws = NormConfig("ln", ws=True)
    ws = hk.transform(lambda x: MLP(32, 8, norm=norm_ws, name="p")(x, True))
    plain = hk.transform(
        lambda x: MLP(32, 8, norm=dataclasses.replace(norm_ws, ws=False), name="p")(
            x, True
        )
    )
    shapes = jax.eval_shape(ws.init, jax.random.key(0), x)
    assert _tree_shapes(shapes) == _tree_shapes(
        jax.eval_shape(plain.init, jax.random.key(0), x)
    )
    params = _numpy_params(shapes)
    std = {
        k: {n: standardize_weight(v, 1e-4) if n == "w" else v for n, v in d.items()}
        for k, d in params.items()
    }
    _assert_close(ws.apply(params, None, x), plain.apply(std, None, x))
    assert not np.allclose(ws.apply(params, None, x), plain.apply(params, None, x))


# -------------------------------------------------------------- norm presets


def test_norm_presets():
    bn = norm_preset("bn")
    assert isinstance(bn, NetworkNorms)
    assert all(c.kind == "bn" and not c.ws for c in bn)
    gn_ws = norm_preset("gn_ws")
    assert gn_ws.encoder == NormConfig("gn", num_groups=16, ws=True)
    assert gn_ws.projector == gn_ws.predictor == NormConfig("gn", num_groups=16)
    assert all(c.kind == "none" for c in norm_preset("none"))
    assert {"bn", "gn_ws", "none"} <= set(NORM_PRESETS)


def test_norm_preset_overrides():
    norms = norm_preset("bn", cross_replica_axis="i", bn_decay=0.99)
    assert all(c.cross_replica_axis == "i" and c.bn_decay == 0.99 for c in norms)
    norms = norm_preset("gn_ws", num_groups=8, predictor=NormConfig("none"))
    assert norms.encoder.num_groups == norms.projector.num_groups == 8
    assert norms.encoder.ws and norms.predictor.kind == "none"


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (("gn",), {}, r"^norm preset 'gn' unknown; expected one of: bn, gn_ws, none"),
        (("bn",), {"groups": 8}, r"^norm_preset override 'groups' unknown"),
        (("bn",), {"kind": "bm"}, r"^kind 'bm' unknown"),
    ],
)
def test_norm_preset_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        norm_preset(*args, **kwargs)
