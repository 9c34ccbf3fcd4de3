import collections
import colorsys
import dataclasses
import functools
import itertools
import math

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byol import augmentations as aug

N = 4000  # samples for frequency tests


def _binomial_ok(count, n, p, sigmas=5.0):
    return abs(count / n - p) <= sigmas * math.sqrt(p * (1 - p) / n) + 1e-12


# Every op gated by its decision (no static skipping), for fixed-parameter tests;
# a fixed 3-tap blur so that tiny test images are really blurred.
GATED = aug.AugmentationConfig(
    flip_prob=0.5,
    color_jitter_prob=0.5,
    grayscale_prob=0.5,
    blur_prob=0.5,
    solarize_prob=0.5,
    blur_kernel_size=3,
)
B, H, W = 24, 5, 6  # the shape of the fixed-parameter tests (24 jitter orders)

apply_jit = jax.jit(
    aug.apply_augmentation_params, static_argnames=("config", "crop", "output_size")
)
augment_jit = jax.jit(aug.augment, static_argnames=("config", "crop", "output_size"))
TRACES = collections.Counter()


def _counted_views(rng, images, **kwargs):
    TRACES[(images.shape, images.dtype.name, tuple(sorted(kwargs.items())))] += 1
    return aug.augment_views(rng, images, **kwargs)


views_jit = jax.jit(_counted_views, static_argnames=("crop", "output_size"))


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _sample_many(rng, config, n, height, width):
    keys = jax.random.split(rng, n)
    return jax.vmap(lambda k: aug.sample_augmentation_params(k, config, height, width))(
        keys
    )


def _params(batch, height, width, **overrides):
    """Fixed params: identity everywhere unless overridden (per-example arrays)."""
    base = dict(
        crop_box=np.tile([0, 0, height, width], (batch, 1)),
        flip=np.zeros(batch, bool),
        color_jitter=np.zeros(batch, bool),
        jitter_order=np.tile(np.arange(4), (batch, 1)),
        brightness=np.zeros(batch),
        contrast=np.ones(batch),
        saturation=np.ones(batch),
        hue=np.zeros(batch),
        grayscale=np.zeros(batch, bool),
        blur=np.zeros(batch, bool),
        blur_sigma=np.ones(batch),
        solarize=np.zeros(batch, bool),
    )
    base.update(overrides)
    dtypes = dict(crop_box=np.int32, jitter_order=np.int32)
    return aug.AugmentationParams(
        **{
            k: jnp.asarray(np.asarray(v, dtype=dtypes.get(k, np.asarray(v).dtype)))
            for k, v in base.items()
        }
    )


def _rand(shape, seed=0):
    return np.random.RandomState(seed).rand(*shape).astype(np.float32)


# ------------------------------------------------------------ numpy references
def np_brightness(x, delta):
    return np.clip(x + delta, 0, 1)


def np_contrast(x, factor):
    mean = x.mean(axis=(0, 1), keepdims=True)
    return np.clip(factor * (x - mean) + mean, 0, 1)


def _np_hsv_map(x, fn):
    out = np.empty_like(x)
    for i, j in itertools.product(range(x.shape[0]), range(x.shape[1])):
        h, s, v = colorsys.rgb_to_hsv(*map(float, x[i, j]))
        out[i, j] = colorsys.hsv_to_rgb(*fn(h, s, v))
    return np.clip(out, 0, 1)


def np_saturation(x, factor):
    if x.shape[-1] == 1:
        return x
    return _np_hsv_map(x, lambda h, s, v: (h, min(max(s * factor, 0.0), 1.0), v))


def np_hue(x, delta):
    if x.shape[-1] == 1:
        return x
    return _np_hsv_map(x, lambda h, s, v: ((h + delta) % 1.0, s, v))


def np_grayscale(x):
    gray = x @ np.array([0.2989, 0.5870, 0.1140])
    return np.repeat(gray[..., None], 3, axis=-1)


def np_blur(x, sigma, kernel_size):
    r = kernel_size // 2
    t = np.arange(-r, r + 1)
    g = np.exp(-(t**2) / (2 * sigma**2))
    kernel = np.outer(g, g) / g.sum() ** 2
    h, w, _ = x.shape
    padded = np.pad(x, ((r, r), (r, r), (0, 0)))
    out = np.zeros_like(x, dtype=np.float64)
    for di, dj in itertools.product(range(2 * r + 1), repeat=2):
        out += kernel[di, dj] * padded[di : di + h, dj : dj + w]
    return out


def np_solarize(x):
    return np.where(x >= 0.5, 1 - x, x)


# ---------------------------------------------------------------------- config
def test_views_match_the_recipe():
    for view in (aug.VIEW1, aug.VIEW2):
        assert view.crop_area_range == (0.08, 1.0)
        assert view.crop_aspect_range == (3 / 4, 4 / 3)
        assert view.resize_method == "cubic"
        assert (view.flip_prob, view.color_jitter_prob, view.grayscale_prob) == (
            0.5,
            0.8,
            0.2,
        )
        assert (view.brightness, view.contrast, view.saturation, view.hue) == (
            0.4,
            0.4,
            0.2,
            0.1,
        )
        assert view.blur_sigma == (0.1, 2.0)
    assert (aug.VIEW1.blur_prob, aug.VIEW1.solarize_prob) == (1.0, 0.0)
    assert (aug.VIEW2.blur_prob, aug.VIEW2.solarize_prob) == (0.1, 0.2)


@pytest.mark.parametrize(
    "field, value",
    [
        ("flip_prob", 1.5),
        ("color_jitter_prob", -0.1),
        ("grayscale_prob", 2),
        ("blur_prob", -1.0),
        ("solarize_prob", 1.01),
        ("crop_area_range", (0.5, 0.2)),
        ("crop_area_range", (0.0, 1.0)),
        ("crop_area_range", (0.1, 1.5)),
        ("crop_aspect_range", (4 / 3, 3 / 4)),
        ("crop_aspect_range", (0.0, 1.0)),
        ("blur_sigma", (2.0, 0.1)),
        ("blur_sigma", (0.1,)),
        ("brightness", -0.1),
        ("contrast", 1.5),
        ("saturation", -0.2),
        ("hue", 0.6),
        ("crop_max_attempts", 0),
        ("resize_method", "nearest"),
        ("blur_kernel_size", 4),
        ("solarize_threshold", 1.5),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        aug.AugmentationConfig(**{field: value})


def test_config_lists_become_tuples_and_configs_are_hashable():
    cfg = aug.AugmentationConfig(crop_area_range=[0.2, 1.0], blur_sigma=[0.5, 1])
    assert cfg.crop_area_range == (0.2, 1.0) and cfg.blur_sigma == (0.5, 1.0)
    assert hash(cfg) == hash(
        aug.AugmentationConfig(crop_area_range=(0.2, 1.0), blur_sigma=(0.5, 1.0))
    )


# ------------------------------------------------------------------- crop box
@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _boxes(rng, n, height, width, rule="torchvision"):
    keys = jax.random.split(rng, n)
    return jax.vmap(
        lambda k: aug.sample_crop_box(
            k, height, width, (0.08, 1.0), (3 / 4, 4 / 3), rule=rule
        )
    )(keys)


def _np_torchvision_boxes(n, height, width, seed):
    """torchvision's RandomResizedCrop.get_params, in numpy (sizes only)."""
    rs = np.random.RandomState(seed)
    out = []
    for _ in range(n):
        for _ in range(10):
            area = height * width * rs.uniform(0.08, 1.0)
            ratio = math.exp(rs.uniform(math.log(3 / 4), math.log(4 / 3)))
            w = int(round(math.sqrt(area * ratio)))
            h = int(round(math.sqrt(area / ratio)))
            if 0 < w <= width and 0 < h <= height:
                out.append((h, w))
                break
        else:
            out.append((height, width))
    return np.array(out)


def test_crop_boxes_fit_and_follow_the_area_and_aspect_distribution():
    height, width = 120, 160
    boxes = np.asarray(_boxes(jax.random.key(0), N, height, width))
    top, left, h, w = boxes.T
    assert boxes.dtype == np.int32
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= height).all() and (left + w <= width).all()
    area = h * w / (height * width)
    # Rounding the sides to integers moves area and aspect by at most ~1 px.
    assert area.min() >= 0.08 - 0.02 and area.max() <= 1.0
    aspect = w / h
    assert aspect.min() >= 3 / 4 - 0.05 and aspect.max() <= 4 / 3 + 0.05
    # Both ends of the ranges are reached, and positions cover the image.
    assert area.min() < 0.1 and area.max() > 0.95
    assert np.log(aspect).min() < math.log(3 / 4) + 0.03
    assert np.log(aspect).max() > math.log(4 / 3) - 0.03
    assert top.min() == 0 and left.min() == 0
    assert (top + h == height).any() and (left + w == width).any()
    # Same conditional distribution as an independent numpy torchvision loop.
    ref = _np_torchvision_boxes(N, height, width, seed=1)
    ref_area = ref[:, 0] * ref[:, 1] / (height * width)
    ref_aspect = ref[:, 1] / ref[:, 0]
    qs = np.linspace(0.05, 0.95, 19)
    np.testing.assert_allclose(
        np.quantile(area, qs), np.quantile(ref_area, qs), atol=0.03
    )
    np.testing.assert_allclose(
        np.quantile(np.log(aspect), qs), np.quantile(np.log(ref_aspect), qs), atol=0.03
    )


def _closed_form_box_statistics(area_low=0.08, grid=4000):
    """Mean area and P(a full side) of unrounded boxes on a square image.

    Area fraction A ~ U[area_low, 1], log-aspect t ~ U[-L, L], L = log(4/3);
    sides sqrt(A e^t), sqrt(A e^-t). The reference clamps a side > 1 to 1 (then
    the box is 1 x sqrt(A e^-|t|)); torchvision keeps only boxes that fit,
    A e^|t| <= 1 (its 10 retries all miss with probability ~1e-9).
    Midpoint rule on a grid x grid of (A, t).
    """
    half = math.log(4 / 3)
    a = area_low + (1 - area_low) * (np.arange(grid) + 0.5) / grid
    t = -half + 2 * half * (np.arange(grid) + 0.5) / grid
    area, tilt = np.meshgrid(a, np.exp(np.abs(t)), indexing="ij")
    fits = area * tilt <= 1
    clamped_area = np.where(fits, area, np.sqrt(area / tilt))
    return {
        "reference_mean_area": clamped_area.mean(),
        "reference_full_side": 1 - fits.mean(),
        # In closed form: (1 - (1 - e^-L) / L) / (1 - area_low).
        "reference_full_side_exact": (1 - 0.25 / half) / (1 - area_low),
        "torchvision_mean_area": area[fits].mean(),
    }


def test_reference_and_torchvision_crop_rules_match_their_closed_forms():
    size = 1000  # large: rounding the sides moves nothing measurable
    stats = _closed_form_box_statistics()
    assert stats["reference_full_side"] == pytest.approx(
        stats["reference_full_side_exact"], abs=1e-3
    )
    for rule in ("reference", "torchvision"):
        top, left, h, w = np.asarray(_boxes(jax.random.key(7), N, size, size, rule)).T
        assert (top >= 0).all() and (top + h <= size).all()
        assert (left >= 0).all() and (left + w <= size).all()
        area = h * w / size**2
        full_side = np.mean((h == size) | (w == size))
        # Within 3 standard errors of the N samples.
        tolerance = 3 * area.std() / math.sqrt(N)
        assert area.mean() == pytest.approx(stats[f"{rule}_mean_area"], abs=tolerance)
        if rule == "reference":
            p = stats["reference_full_side"]
            assert full_side == pytest.approx(p, abs=3 * math.sqrt(p * (1 - p) / N))
        else:
            assert full_side < 0.005
    # The two rules differ where the issue measured them (square images).
    assert stats["reference_mean_area"] - stats["torchvision_mean_area"] > 0.03
    assert stats["reference_full_side"] > 0.13


def test_crop_box_falls_back_to_the_clamped_central_crop():
    # No box with aspect in [3/4, 4/3] and area >= 8% fits in a 1000 x 10 image.
    tall = np.asarray(_boxes(jax.random.key(1), 16, 1000, 10))
    np.testing.assert_array_equal(tall, np.tile([493, 0, 13, 10], (16, 1)))
    wide = np.asarray(_boxes(jax.random.key(2), 16, 10, 1000))
    np.testing.assert_array_equal(wide, np.tile([0, 493, 10, 13], (16, 1)))


# ------------------------------------------------------------ decision stats
@pytest.fixture(scope="module")
def sampled():
    return {
        name: jax.device_get(_sample_many(jax.random.key(i), cfg, N, 32, 32))
        for i, (name, cfg) in enumerate([("view1", aug.VIEW1), ("view2", aug.VIEW2)])
    }


def test_decision_frequencies_match_the_recipe(sampled):
    for name, cfg in (("view1", aug.VIEW1), ("view2", aug.VIEW2)):
        p = sampled[name]
        for field, prob in [
            ("flip", 0.5),
            ("color_jitter", 0.8),
            ("grayscale", 0.2),
            ("blur", cfg.blur_prob),
            ("solarize", cfg.solarize_prob),
        ]:
            count = int(np.sum(getattr(p, field)))
            if prob in (0.0, 1.0):
                assert count == prob * N, (name, field, count)
            else:
                assert _binomial_ok(count, N, prob), (name, field, count)


def test_sampled_factors_lie_in_their_ranges(sampled):
    p = sampled["view2"]
    for field, lo, hi in [
        ("brightness", -0.4, 0.4),
        ("contrast", 0.6, 1.4),
        ("saturation", 0.8, 1.2),
        ("hue", -0.1, 0.1),
        ("blur_sigma", 0.1, 2.0),
    ]:
        v = getattr(p, field)
        assert v.min() >= lo and v.max() <= hi, field
        # Roughly uniform: each half of the range gets about half the samples.
        assert _binomial_ok(int(np.sum(v < (lo + hi) / 2)), N, 0.5), field
    orders = p.jitter_order
    np.testing.assert_array_equal(
        np.sort(orders, axis=1), np.tile(np.arange(4), (N, 1))
    )
    counts = np.unique(orders, axis=0, return_counts=True)[1]
    assert len(counts) == 24
    assert all(_binomial_ok(c, N, 1 / 24) for c in counts)


def test_different_keys_give_independent_decisions(sampled):
    # The two samples use different keys: their decisions must be independent.
    agree = np.mean(sampled["view1"].flip == sampled["view2"].flip)
    assert _binomial_ok(int(agree * N), N, 0.5)


# ------------------------------------------------------------------- ops
def test_each_op_matches_numpy_and_is_gated_by_its_decision():
    x = _rand((B, H, W, 3))
    on = np.arange(B) % 2 == 0
    cases = {
        "flip": (dict(flip=on), lambda im: im[:, ::-1]),
        "grayscale": (dict(grayscale=on), np_grayscale),
        "solarize": (dict(solarize=on), np_solarize),
        "blur": (
            dict(blur=on, blur_sigma=np.linspace(0.5, 2.0, B)),
            lambda im, i: np_blur(im, np.linspace(0.5, 2.0, B)[i], 3),
        ),
    }
    for name, (overrides, ref) in cases.items():
        out = np.asarray(apply_jit(x, _params(B, H, W, **overrides), GATED, crop=False))
        for i in range(B):
            if not on[i]:
                np.testing.assert_array_equal(out[i], x[i], err_msg=name)
            else:
                expected = ref(x[i], i) if name == "blur" else ref(x[i])
                np.testing.assert_allclose(out[i], expected, atol=1e-6, err_msg=name)
                assert np.abs(out[i] - x[i]).max() > 1e-3, name


def test_blur_matches_closed_form_gaussian_and_dm_pix():
    x = _rand((11, 13, 3), seed=3)
    blur = jax.jit(aug.gaussian_blur, static_argnames=("kernel_size", "channel_axis"))
    for sigma, k in [(0.1, 3), (0.7, 3), (2.0, 23), (1.3, 23)]:
        ours = np.asarray(blur(jnp.asarray(x), sigma, kernel_size=k))
        np.testing.assert_allclose(ours, np_blur(x, sigma, k), atol=1e-6)
        np.testing.assert_allclose(ours, pix.gaussian_blur(x, sigma, k), atol=1e-6)
    chw = blur(jnp.asarray(x).transpose(2, 0, 1), 1.3, kernel_size=23, channel_axis=0)
    np.testing.assert_allclose(np.asarray(chw).transpose(1, 2, 0), ours, atol=1e-6)


def test_blur_kernel_size_follows_the_output_height():
    for size, kernel in [(224, 23), (96, 9), (28, 3), (32, 3)]:
        assert aug._blur_kernel_size(aug.VIEW1, size) == kernel
    # The blur of an impulse spreads over exactly kernel_size pixels.
    x = np.zeros((1, 28, 28, 1), np.float32)
    x[0, 14, 14] = 1.0
    derived = dataclasses.replace(GATED, blur_kernel_size=None)
    params = _params(1, 28, 28, blur=[True], blur_sigma=[2.0])
    out = np.asarray(apply_jit(x, params, derived, crop=False))
    assert np.count_nonzero(out[0, 14, :, 0]) == 3
    assert np.count_nonzero(out[0, :, 14, 0]) == 3


def test_saturation_and_hue_match_dm_pix_each():
    x = jnp.asarray(_rand((5, 6, 3), seed=4))
    np.testing.assert_allclose(
        aug.adjust_saturation_and_hue(x, 1.3, 0.0),
        np.clip(pix.adjust_saturation(x, 1.3), 0, 1),
        atol=1e-6,
    )
    np.testing.assert_allclose(
        aug.adjust_saturation_and_hue(x, 1.0, -0.07),
        np.clip(pix.adjust_hue(x, -0.07), 0, 1),
        atol=1e-6,
    )


_NP_JITTER = (np_brightness, np_contrast, np_saturation, np_hue)


def _np_jitter(x, order, factors):
    for op in order:
        x = _NP_JITTER[op](x, factors[op])
    return x


@pytest.mark.parametrize("channels", [3, 1])
def test_color_jitter_matches_numpy_for_every_order(channels):
    orders = np.array(list(itertools.permutations(range(4))))
    b = len(orders)
    rs = np.random.RandomState(5)
    factors = np.stack(
        [
            rs.uniform(-0.4, 0.4, b),
            rs.uniform(0.6, 1.4, b),
            rs.uniform(0.8, 1.2, b),
            rs.uniform(-0.1, 0.1, b),
        ],
        axis=1,
    ).astype(np.float32)
    x = _rand((b, H, W, channels), seed=6)
    params = _params(
        b,
        H,
        W,
        color_jitter=np.ones(b, bool),
        jitter_order=orders,
        brightness=factors[:, 0],
        contrast=factors[:, 1],
        saturation=factors[:, 2],
        hue=factors[:, 3],
    )
    out = np.asarray(apply_jit(x, params, GATED, crop=False))
    assert out.shape == x.shape
    for i in range(b):
        expected = _np_jitter(x[i].astype(np.float64), orders[i], factors[i])
        np.testing.assert_allclose(out[i], expected, atol=2e-5, err_msg=str(orders[i]))
    # Orders matter (so the test is sensitive to them), for RGB at least.
    if channels == 3:
        assert np.abs(out[0] - out[-1]).max() > 1e-3


def test_crop_boxes_are_resampled_onto_the_output():
    # Examples 0 and 1: a box resized to its own size is an exact slice.
    # Example 2: Keys bicubic reproduces linear ramps, so a 2x upscale of a box
    # of a ramp is the ramp sampled where the output pixel centres fall.
    x = _rand((3, 16, 20, 3), seed=7)
    ramp = 0.2 + 0.03 * np.arange(20)
    x[2] = ramp[None, :, None]
    boxes = [[2, 3, 10, 12], [6, 8, 10, 12], [0, 4, 5, 6]]
    params = _params(3, 16, 20, crop_box=boxes)
    out = np.asarray(apply_jit(x, params, GATED, crop=True, output_size=(10, 12)))
    np.testing.assert_allclose(out[0], x[0, 2:12, 3:15], atol=1e-6)
    np.testing.assert_allclose(out[1], x[1, 6:16, 8:20], atol=1e-6)
    expected = 0.2 + 0.03 * (4 + (np.arange(12) + 0.5) / 2 - 0.5)
    np.testing.assert_allclose(
        out[2], np.broadcast_to(expected[None, :, None], (10, 12, 3)), atol=1e-5
    )


# ------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def u8_batch():
    return jnp.asarray(
        np.random.RandomState(11).randint(0, 256, (8, 16, 16, 3)), jnp.uint8
    )


def test_augment_is_sample_then_apply(u8_batch):
    @jax.jit
    def both(key, x):
        keys = jax.random.split(key, 8)
        params = jax.vmap(
            lambda k: aug.sample_augmentation_params(k, aug.VIEW2, 16, 16)
        )(keys)
        return (
            aug.augment(key, x, aug.VIEW2),
            aug.apply_augmentation_params(x, params, aug.VIEW2),
        )

    augmented, applied = both(jax.random.key(9), u8_batch)
    np.testing.assert_array_equal(augmented, applied)


def test_solarize_fires_on_view2_end_to_end():
    # A constant 0.75 image stays (about) 0.75 through crop, flip, grayscale and
    # blur (at the centre); only solarize sends it to 0.25. Jitter is disabled.
    # (View 1 never solarizes: see test_decision_frequencies_match_the_recipe.)
    x = jnp.full((N, 8, 8, 3), 0.75, jnp.float32)
    cfg = dataclasses.replace(aug.VIEW2, color_jitter_prob=0.0)
    centre = np.asarray(augment_jit(jax.random.key(10), x, cfg))[:, 4, 4, 0]
    assert np.all((np.abs(centre - 0.75) < 1e-3) | (np.abs(centre - 0.25) < 1e-3))
    assert _binomial_ok(int(np.sum(centre < 0.5)), N, 0.2)


def test_views_are_in_range_deterministic_and_key_dependent(u8_batch):
    key = jax.random.key(12)
    v1, v2 = views_jit(key, u8_batch)
    for v in (v1, v2):
        assert v.shape == (8, 16, 16, 3) and v.dtype == jnp.float32
        assert float(v.min()) >= 0.0 and float(v.max()) <= 1.0
    w1, w2 = views_jit(key, u8_batch)
    np.testing.assert_array_equal(v1, w1)
    np.testing.assert_array_equal(v2, w2)
    o1, _ = views_jit(jax.random.key(13), u8_batch)
    assert np.abs(np.asarray(o1) - np.asarray(v1)).max() > 0.1
    assert np.abs(np.asarray(v1) - np.asarray(v2)).max() > 0.1
    # Two views = two augment calls with the split keys.
    k1, k2 = jax.random.split(key)
    np.testing.assert_array_equal(augment_jit(k1, u8_batch, aug.VIEW1), v1)
    np.testing.assert_array_equal(augment_jit(k2, u8_batch, aug.VIEW2), v2)
    # Different examples of one batch get different randomness.
    same = jnp.broadcast_to(u8_batch[:1], u8_batch.shape)
    s1, _ = views_jit(key, same)
    assert np.abs(np.asarray(s1[0]) - np.asarray(s1[1])).max() > 0.1


def test_uint8_and_float_inputs_agree(u8_batch):
    key = jax.random.key(14)
    as_float = u8_batch.astype(jnp.float32) / 255.0
    np.testing.assert_allclose(
        augment_jit(key, u8_batch, aug.VIEW2),
        augment_jit(key, as_float, aug.VIEW2),
        atol=1e-6,
    )


def test_grayscale_images_keep_one_channel():
    x = np.random.RandomState(15).randint(0, 256, (8, 28, 28, 1)).astype(np.uint8)
    out = np.asarray(
        augment_jit(jax.random.key(16), x, aug.VIEW2, output_size=(20, 24))
    )
    assert out.shape == (8, 20, 24, 1)
    assert out.min() >= 0.0 and out.max() <= 1.0
    out = augment_jit(jax.random.key(17), x, aug.VIEW2, crop=False, output_size=14)
    assert out.shape == (8, 14, 14, 1)


def test_jit_traces_once_for_a_fixed_shape(u8_batch):
    for i in range(3):
        views_jit(jax.random.key(100 + i), u8_batch)
    assert TRACES[((8, 16, 16, 3), "uint8", ())] == 1


@pytest.mark.parametrize(
    "shape, dtype, kwargs, match",
    [
        ((16, 16, 3), jnp.uint8, {}, "rank"),
        ((2, 16, 16, 2), jnp.uint8, {}, "channels"),
        ((2, 16, 16, 4), jnp.float32, {}, "channels"),
        ((2, 16, 16, 3), jnp.int32, {}, "dtype"),
        ((2, 16, 16, 3), jnp.bool_, {}, "dtype"),
        ((2, 16, 16, 3), jnp.uint8, dict(output_size=0), "output_size"),
        ((2, 16, 16, 3), jnp.uint8, dict(output_size=(8, 0)), "output_size"),
        ((2, 16, 16, 3), jnp.uint8, dict(output_size=(8, 8, 8)), "output_size"),
    ],
)
def test_bad_inputs_raise_naming_the_problem(shape, dtype, kwargs, match):
    with pytest.raises(ValueError, match=match):
        aug.augment(jax.random.key(0), jnp.zeros(shape, dtype), aug.VIEW1, **kwargs)


# -------------------------------------------------------------- normalising
def test_normalize_uses_imagenet_and_luma_statistics():
    x = _rand((2, 3, 4, 3), seed=18)
    mean, std = np.array(aug.IMAGENET_MEAN), np.array(aug.IMAGENET_STD)
    np.testing.assert_allclose(aug.normalize(x), (x - mean) / std, rtol=1e-5)
    u8 = (x * 255).astype(np.uint8)
    np.testing.assert_allclose(
        aug.normalize(jnp.asarray(u8)), (u8 / 255.0 - mean) / std, rtol=1e-5, atol=1e-6
    )
    g = x[..., :1]
    gmean = 0.2989 * 0.485 + 0.5870 * 0.456 + 0.1140 * 0.406
    gstd = 0.2989 * 0.229 + 0.5870 * 0.224 + 0.1140 * 0.225
    np.testing.assert_allclose(aug.normalize(g), (g - gmean) / gstd, rtol=1e-5)
    np.testing.assert_allclose(
        aug.normalize(g, mean=(0.286,), std=(0.353,)), (g - 0.286) / 0.353, rtol=1e-5
    )
    with pytest.raises(ValueError, match="mean"):
        aug.normalize(g, mean=aug.IMAGENET_MEAN, std=(0.3,))
    with pytest.raises(ValueError, match="channels"):
        aug.normalize(jnp.zeros((1, 2, 2, 2)))
