import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from byol import schedules

BASE_LR, BATCH, K, W = 0.2, 512, 1000, 100
PEAK = BASE_LR * BATCH / 256


def _closed_form_lr(k):
    if k < W:
        return k / W * PEAK
    return PEAK * 0.5 * (1 + math.cos(math.pi * min(k - W, K - W) / max(1, K - W)))


STEPS = [0, 1, W // 2, W - 1, W, W + 1, (K + W) // 2, K // 2, K - 1, K, K + 50]


def test_learning_rate_matches_the_closed_form():
    schedule = schedules.learning_rate_schedule(BASE_LR, BATCH, K, W)
    jitted = jax.jit(schedule)
    for k in STEPS:
        expected = _closed_form_lr(k)
        np.testing.assert_allclose(schedule(k), expected, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(
            jitted(jnp.asarray(k, jnp.int32)), expected, rtol=1e-6, atol=1e-7
        )
    assert float(schedule(0)) == 0.0
    np.testing.assert_allclose(schedule(W), PEAK, rtol=1e-7)
    np.testing.assert_allclose(schedule(W // 2), PEAK / 2, rtol=1e-7)
    np.testing.assert_allclose(schedule((K + W) // 2), PEAK / 2, rtol=1e-6)
    assert abs(float(schedule(K))) < 1e-7


def test_learning_rate_agrees_with_optax_warmup_cosine():
    ours = schedules.learning_rate_schedule(BASE_LR, BATCH, K, W)
    theirs = optax.warmup_cosine_decay_schedule(0.0, PEAK, W, K, 0.0)
    ks = jnp.arange(K + 10)
    np.testing.assert_allclose(jax.vmap(ours)(ks), jax.vmap(theirs)(ks), atol=1e-6)


def test_learning_rate_without_warmup_and_all_warmup():
    no_warmup = schedules.learning_rate_schedule(0.1, 256, 10, 0)
    np.testing.assert_allclose(no_warmup(0), 0.1, rtol=1e-7)
    np.testing.assert_allclose(no_warmup(5), 0.05, rtol=1e-6)
    all_warmup = schedules.learning_rate_schedule(0.1, 256, 10, 10)
    np.testing.assert_allclose(all_warmup(5), 0.05, rtol=1e-6)
    np.testing.assert_allclose(all_warmup(9), 0.09, rtol=1e-6)


def test_target_ema_matches_the_closed_form():
    base, total = 0.996, 1000
    tau = schedules.target_ema_schedule(base, total)
    jitted = jax.jit(tau)
    for k in [0, 1, 250, 500, 999, 1000, 1200]:
        kk = min(k, total)
        expected = 1 - (1 - base) * (math.cos(math.pi * kk / total) + 1) / 2
        np.testing.assert_allclose(tau(k), expected, rtol=1e-6)
        np.testing.assert_allclose(jitted(jnp.asarray(k)), expected, rtol=1e-6)
    np.testing.assert_allclose(tau(0), base, rtol=1e-7)
    np.testing.assert_allclose(tau(500), (1 + base) / 2, rtol=1e-7)
    assert float(tau(total)) == 1.0


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(base_learning_rate=-0.1), "base_learning_rate"),
        (dict(base_learning_rate=float("nan")), "base_learning_rate"),
        (dict(batch_size=0), "batch_size"),
        (dict(total_steps=-5), "total_steps"),
        (dict(total_steps=0, warmup_steps=0), "total_steps"),
        (dict(total_steps=10.5), "total_steps"),
        (dict(warmup_steps=-1), "warmup_steps"),
        (dict(warmup_steps=K + 1), "warmup_steps"),
    ],
)
def test_learning_rate_rejects_nonsense(kwargs, field):
    args = dict(base_learning_rate=BASE_LR, batch_size=BATCH, total_steps=K)
    args["warmup_steps"] = W
    args.update(kwargs)
    with pytest.raises(ValueError, match=field):
        schedules.learning_rate_schedule(**args)


@pytest.mark.parametrize(
    "base_ema, total_steps, field",
    [(1.5, 10, "base_ema"), (-0.1, 10, "base_ema"), (0.99, 0, "total_steps")],
)
def test_target_ema_rejects_nonsense(base_ema, total_steps, field):
    with pytest.raises(ValueError, match=field):
        schedules.target_ema_schedule(base_ema, total_steps)
