"""Tests of byol.checkpointing: round trip, keep-last-N, latest step."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byol import checkpointing
from byol.byol_experiment import TrainState


def _state(seed):
    rng = np.random.default_rng(seed)
    params = {
        "encoder/conv": {"w": rng.normal(size=(3, 3, 1, 4)).astype(np.float32)},
        "classifier": {
            "w": rng.normal(size=(4, 10)).astype(np.float32),
            "b": rng.normal(size=(10,)).astype(np.float32),
        },
    }
    return TrainState(
        online_params=params,
        online_state={"bn": {"mean": rng.normal(size=(4,)).astype(np.float32)}},
        target_params=jax.tree.map(lambda x: x + 1, params),
        target_state={},
        opt_state=(
            {"count": np.int32(seed)},
            jax.tree.map(lambda x: 0.5 * x, params),
        ),
    )


def _assert_equal(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert np.asarray(a).dtype == np.asarray(e).dtype
        np.testing.assert_array_equal(a, e)


def _steps_on_disk(workdir):
    return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")))


def test_save_restore_round_trip(tmp_path):
    ckpt = checkpointing.Checkpointer(str(tmp_path))
    assert ckpt.latest_step() is None
    state = _state(7)
    # Device arrays are saved as their host values.
    on_device = jax.tree.map(jnp.asarray, state)
    ckpt.save(12, on_device, {"seed": 3, "dataset": "fashion_mnist"})
    ckpt.close()

    reopened = checkpointing.Checkpointer(str(tmp_path))
    assert reopened.latest_step() == 12
    like = _state(0)  # the shapes and dtypes; its values are not used
    restored, metadata = reopened.restore(12, like)
    assert isinstance(restored, TrainState)
    _assert_equal(restored, state)
    assert metadata == {"seed": 3, "dataset": "fashion_mnist"}
    reopened.close()


def test_keeps_only_the_newest_checkpoints(tmp_path):
    ckpt = checkpointing.Checkpointer(str(tmp_path), max_to_keep=2)
    for step in (1, 2, 3, 5):
        ckpt.save(step, _state(step), {"step": step})
        ckpt.wait()
    assert ckpt.latest_step() == 5
    ckpt.close()
    assert _steps_on_disk(str(tmp_path)) == [3, 5]
    reopened = checkpointing.Checkpointer(str(tmp_path), max_to_keep=2)
    assert reopened.latest_step() == 5
    for step in (3, 5):
        restored, metadata = reopened.restore(step, _state(0))
        _assert_equal(restored, _state(step))
        assert metadata == {"step": step}
    reopened.close()


def test_max_to_keep_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="max_to_keep must be >= 1, got 0"):
        checkpointing.Checkpointer(str(tmp_path), max_to_keep=0)
