import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byol import losses

B, D = 6, 16


def _np_cos(x, y):
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    return np.sum(x * y, -1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1))


def _random(seed, *shape):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_l2_normalize_matches_numpy_and_maps_zero_to_zero():
    x = _random(0, B, D)
    np.testing.assert_allclose(
        losses.l2_normalize(x), x / np.linalg.norm(x, axis=-1, keepdims=True), rtol=1e-6
    )
    np.testing.assert_array_equal(losses.l2_normalize(np.zeros((2, D))), 0.0)


def test_regression_loss_is_two_minus_two_cosine():
    x, y = _random(1, B, D), _random(2, B, D)
    loss = losses.regression_loss(x, y)
    assert loss.shape == (B,)
    np.testing.assert_allclose(loss, 2 - 2 * _np_cos(x, y), rtol=1e-5, atol=1e-6)
    # Scale invariance and the extreme values.
    np.testing.assert_allclose(losses.regression_loss(3 * x, 0.5 * x), 0.0, atol=1e-6)
    np.testing.assert_allclose(losses.regression_loss(x, -2 * x), 4.0, rtol=1e-6)


def test_byol_loss_pairs_each_prediction_with_the_other_views_target():
    p1, p2, z1, z2 = (_random(s, B, D) for s in range(3, 7))
    loss = losses.byol_loss(p1, p2, z1, z2)
    expected = np.mean((2 - 2 * _np_cos(p1, z2)) + (2 - 2 * _np_cos(p2, z1)))
    same_view = np.mean((2 - 2 * _np_cos(p1, z1)) + (2 - 2 * _np_cos(p2, z2)))
    assert loss.shape == ()
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    assert abs(expected - same_view) > 1e-2  # the pairing is actually tested
    # Symmetric: swapping the two views changes nothing.
    np.testing.assert_allclose(losses.byol_loss(p2, p1, z2, z1), loss, rtol=1e-6)


def test_byol_loss_gradient_does_not_reach_the_target():
    args = [jnp.asarray(_random(s, B, D)) for s in range(7, 11)]
    grads = jax.grad(losses.byol_loss, argnums=(0, 1, 2, 3))(*args)
    assert float(jnp.abs(grads[0]).max()) > 1e-4
    assert float(jnp.abs(grads[1]).max()) > 1e-4
    np.testing.assert_array_equal(grads[2], 0.0)
    np.testing.assert_array_equal(grads[3], 0.0)


def test_zero_vectors_give_finite_loss_and_gradients():
    zero, y = jnp.zeros((B, D)), jnp.asarray(_random(11, B, D))
    # normalize(0) = 0, so the loss is ||normalize(y)||^2 = 1 and 0 for 0 vs 0.
    np.testing.assert_allclose(losses.regression_loss(zero, y), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(losses.regression_loss(zero, zero), 0.0)
    grads = jax.grad(losses.byol_loss, argnums=(0, 1))(zero, zero, zero, y)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)


# --- NT-Xent -----------------------------------------------------------------


def _np_nt_xent_per_anchor(z1, z2, temperature):
    """Per-view losses of the 2N views, the textbook way: [2N] float64."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z1)
    sim = z @ z.T / temperature
    losses_ = []
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        others = [k for k in range(2 * n) if k != i]
        log_denominator = np.log(np.sum(np.exp(sim[i, others])))
        losses_.append(log_denominator - sim[i, positive])
    return np.array(losses_)


def _np_nt_xent(z1, z2, temperature):
    # SimCLR returns mean_i (loss_a[i] + loss_b[i]): twice the mean over 2N views.
    return 2 * np.mean(_np_nt_xent_per_anchor(z1, z2, temperature))


@pytest.mark.parametrize("temperature", [0.1, 1.0])
def test_nt_xent_matches_numpy(temperature):
    z1, z2 = _random(12, 8, D), _random(13, 8, D)
    loss = losses.nt_xent_loss(z1, z2, temperature)
    np.testing.assert_allclose(loss, _np_nt_xent(z1, z2, temperature), rtol=1e-5)


def test_nt_xent_is_low_when_views_agree():
    z1 = _random(14, 8, D)
    agree = losses.nt_xent_loss(z1, 2 * z1, 0.1)
    disagree = losses.nt_xent_loss(z1, _random(15, 8, D), 0.1)
    assert float(agree) < float(disagree)


_PMAPPED_NT_XENT = jax.pmap(
    jax.value_and_grad(
        lambda z1, z2: losses.nt_xent_loss(z1, z2, 0.1, axis_name="d"), argnums=(0, 1)
    ),
    axis_name="d",
)


def test_nt_xent_across_devices_equals_the_global_batch_loss():
    n_dev, local = jax.local_device_count(), 4
    assert n_dev == 2, "tests/conftest.py should give 2 CPU devices"
    z1, z2 = _random(16, n_dev * local, D), _random(17, n_dev * local, D)
    shard = lambda x: x.reshape(n_dev, local, D)  # noqa: E731
    local_losses, (g1, g2) = _PMAPPED_NT_XENT(shard(z1), shard(z2))

    # Each device's loss covers its own anchors against the global batch.
    per_anchor = _np_nt_xent_per_anchor(z1, z2, 0.1)
    n = n_dev * local
    for d in range(n_dev):
        rows = np.arange(d * local, (d + 1) * local)
        expected = np.mean(per_anchor[rows] + per_anchor[rows + n])
        np.testing.assert_allclose(local_losses[d], expected, rtol=1e-5)
    np.testing.assert_allclose(
        np.mean(local_losses), _np_nt_xent(z1, z2, 0.1), rtol=1e-5
    )

    # Gradients flow through all_gather: device grads are n_dev times the grads
    # of the global-batch loss, so pmean-ing parameter grads gives the right one.
    g1_global, g2_global = jax.grad(
        lambda a, b: losses.nt_xent_loss(a, b, 0.1), argnums=(0, 1)
    )(z1, z2)
    np.testing.assert_allclose(
        g1.reshape(n, D) / n_dev, g1_global, rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(
        g2.reshape(n, D) / n_dev, g2_global, rtol=1e-4, atol=1e-6
    )


@pytest.mark.parametrize("temperature", [0.0, -0.1, float("nan"), float("inf")])
def test_nt_xent_rejects_a_bad_temperature(temperature):
    z = _random(18, 4, D)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        losses.nt_xent_loss(z, z, temperature)
