import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from byol import optimizers

LRS = np.array([0.5, 1.0, 2.0, 0.3, 0.1, 1.5], np.float32)  # changes every step
WD, MOMENTUM, ETA = 0.1, 0.9, 1e-3


def _schedule(count):
    return jnp.asarray(LRS)[count]


def _params():
    rng = np.random.default_rng(0)
    normal = lambda *s: rng.normal(size=s).astype(np.float32)  # noqa: E731
    return {
        "conv2_d": {"w": normal(3, 3, 2, 4)},
        "conv2_d_1": {"w": normal(1, 1, 4, 4), "b": normal(4)},
        "batch_norm": {"scale": 1 + 0.1 * normal(4), "offset": normal(4)},
        "group_norm": {"scale": np.ones(4, np.float32), "offset": normal(4)},
        "linear": {"w": normal(4, 3), "b": normal(3)},
        "zero_init": {"w": np.zeros((4, 3), np.float32)},  # ||p|| = 0 at step 0
    }


EXPECTED_MASK = {
    "conv2_d": {"w": True},
    "conv2_d_1": {"w": True, "b": False},
    "batch_norm": {"scale": False, "offset": False},
    "group_norm": {"scale": False, "offset": False},
    "linear": {"w": True, "b": False},
    "zero_init": {"w": True},
}


def _grads(n_steps):
    rng = np.random.default_rng(1)
    grads = [
        jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), _params())
        for _ in range(n_steps)
    ]
    grads[2]["linear"]["w"][:] = 0.0  # only weight decay moves it
    grads[3]["conv2_d_1"]["b"][:] = 0.0  # excluded: only momentum moves it
    return grads


def _numpy_reference_lars(params, grads, lrs, wd, momentum, eta, mask):
    """The BYOL reference order, leaf by leaf, in float64."""
    params = jax.tree.map(lambda p: np.asarray(p, np.float64), params)
    flat_p, treedef = jax.tree.flatten(params)
    flat_m = treedef.flatten_up_to(mask)
    mu = [np.zeros_like(p) for p in flat_p]
    for g_tree, lr in zip(grads, lrs, strict=True):
        flat_g = treedef.flatten_up_to(g_tree)
        for i, (p, g, m) in enumerate(zip(flat_p, flat_g, flat_m, strict=True)):
            g = np.asarray(g, np.float64)
            if m:
                g = g + wd * p
                p_norm, g_norm = np.linalg.norm(p), np.linalg.norm(g)
                if p_norm > 0 and g_norm > 0:
                    g = g * eta * p_norm / g_norm
            mu[i] = momentum * mu[i] + g
            flat_p[i] = p - float(lr) * mu[i]
    return jax.tree.unflatten(treedef, flat_p)


def _run(optimizer, params, grads):
    @jax.jit
    def step(params, opt_state, g):
        updates, opt_state = optimizer.update(g, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    opt_state = optimizer.init(params)
    for g in grads:
        params, opt_state = step(params, opt_state, g)
    return params


def _rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12)


def test_mask_excludes_exactly_biases_and_norm_parameters():
    assert optimizers.exclude_bias_and_norm(_params()) == EXPECTED_MASK


def test_mask_on_real_haiku_modules():
    def forward(x):
        x = hk.Conv2D(4, 3, with_bias=False)(x)
        x = hk.BatchNorm(True, True, 0.9)(x, is_training=True)
        x = hk.GroupNorm(2)(x)
        x = hk.Conv2D(4, 1)(x)
        x = hk.LayerNorm(-1, True, True)(x)
        return hk.Linear(3)(x.reshape(x.shape[0], -1))

    # Only the names matter, so abstract evaluation suffices (no compute).
    params, _ = jax.eval_shape(
        hk.transform_with_state(forward).init,
        jax.random.key(0),
        jnp.zeros((2, 4, 4, 2)),
    )
    mask = optimizers.exclude_bias_and_norm(params)
    for module, leaves in params.items():
        for name in leaves:
            assert mask[module][name] == (name == "w"), (module, name)
    assert sum(jax.tree.leaves(mask)) == 3  # conv, conv_1, linear weights


def test_lars_matches_numpy_reference_with_changing_learning_rate():
    params, grads = _params(), _grads(len(LRS))
    optimizer = optimizers.lars(_schedule, WD, MOMENTUM, ETA)
    ours = _run(optimizer, params, grads)
    expected = _numpy_reference_lars(
        params, grads, LRS, WD, MOMENTUM, ETA, EXPECTED_MASK
    )
    for path, leaf in jax.tree_util.tree_leaves_with_path(ours):
        module, name = path[0].key, path[1].key
        exp, init = expected[module][name], params[module][name]
        assert _rel_err(leaf, exp) < 1e-5, path
        # Compare the accumulated updates too: trust-ratio-scaled steps are
        # ~1e-3 of the params, so the params alone would hide errors in them.
        assert _rel_err(leaf - init, exp - init) < 1e-4, path


def test_lars_differs_from_optax_lars_when_the_learning_rate_changes():
    params, grads = _params(), _grads(len(LRS))
    ours = _run(optimizers.lars(_schedule, WD, MOMENTUM, ETA), params, grads)
    mask = optimizers.exclude_bias_and_norm
    theirs = _run(
        optax.lars(
            _schedule,
            weight_decay=WD,
            weight_decay_mask=mask,
            trust_coefficient=ETA,
            trust_ratio_mask=mask,
            momentum=MOMENTUM,
        ),
        params,
        grads,
    )
    for (path, a), b, p in zip(
        jax.tree_util.tree_leaves_with_path(ours),
        jax.tree.leaves(theirs),
        jax.tree.leaves(params),
        strict=True,
    ):
        assert _rel_err(a - p, b - p) > 0.1, path


def test_lars_equals_optax_lars_for_a_constant_learning_rate():
    params, grads = _params(), _grads(len(LRS))
    ours = _run(optimizers.lars(0.7, WD, MOMENTUM, ETA), params, grads)
    mask = optimizers.exclude_bias_and_norm
    theirs = _run(
        optax.lars(0.7, WD, mask, ETA, trust_ratio_mask=mask, momentum=MOMENTUM),
        params,
        grads,
    )
    for a, b, p in zip(
        jax.tree.leaves(ours),
        jax.tree.leaves(theirs),
        jax.tree.leaves(params),
        strict=True,
    ):
        assert _rel_err(a - p, b - p) < 1e-5


def test_zero_param_and_zero_grad_keep_trust_ratio_one():
    params = {"a": {"w": np.zeros(3, np.float32)}, "b": {"w": np.ones(3, np.float32)}}
    grads = {
        "a": {"w": np.array([1.0, -2.0, 3.0], np.float32)},
        "b": {"w": 0 * params["b"]["w"]},
    }
    optimizer = optimizers.lars(0.5, weight_decay=0.0, trust_coefficient=ETA)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    # ||p|| = 0: the raw gradient is used (no 0 * ratio, no NaN).
    np.testing.assert_allclose(updates["a"]["w"], -0.5 * grads["a"]["w"], rtol=1e-7)
    # ||g|| = 0: nothing moves (no 0 / 0).
    np.testing.assert_array_equal(updates["b"]["w"], 0.0)


def test_masks_can_be_disabled():
    params = {"linear": {"b": np.ones(3, np.float32)}}
    grads = {"linear": {"b": np.full(3, 2.0, np.float32)}}
    optimizer = optimizers.lars(
        1.0, weight_decay=0.5, weight_decay_mask=None, trust_ratio_mask=None
    )
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    # g = 2 + 0.5 * 1 = 2.5, scaled by 1e-3 * ||p|| / ||g|| = 1e-3 / 2.5.
    np.testing.assert_allclose(updates["linear"]["b"], -1e-3, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(learning_rate=-1.0), "learning_rate"),
        (dict(weight_decay=-1e-6), "weight_decay"),
        (dict(momentum=1.5), "momentum"),
        (dict(trust_coefficient=float("inf")), "trust_coefficient"),
    ],
)
def test_lars_rejects_nonsense(kwargs, field):
    args = dict(learning_rate=0.1) | kwargs
    with pytest.raises(ValueError, match=field):
        optimizers.lars(**args)
