import jax
import numpy as np
import pytest

from byol.target import update_target


def _tree(seed):
    rng = np.random.default_rng(seed)
    return {
        "conv": {"w": rng.normal(size=(3, 3, 2, 4)).astype(np.float32)},
        "linear": {
            "w": rng.normal(size=(4, 3)).astype(np.float32),
            "b": rng.normal(size=(3,)).astype(np.float32),
        },
    }


ONLINE, TARGET = _tree(0), _tree(1)
_JITTED = jax.jit(update_target)


@pytest.mark.parametrize("tau", [0.0, 0.5, 0.99, 0.996, 1.0])
def test_update_target_matches_numpy(tau):
    new = _JITTED(ONLINE, TARGET, tau)
    expected = jax.tree.map(
        lambda o, t: t.astype(np.float64) + (1 - tau) * (o - t.astype(np.float64)),
        ONLINE,
        TARGET,
    )
    assert jax.tree.structure(new) == jax.tree.structure(TARGET)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
        new,
        expected,
    )


def test_update_target_extremes():
    # tau = 1 keeps the target, tau = 0 copies the online params.
    for tau, expected in [(1.0, TARGET), (0.0, ONLINE)]:
        jax.tree.map(
            np.testing.assert_array_equal, update_target(ONLINE, TARGET, tau), expected
        )
