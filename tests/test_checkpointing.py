"""Tests of byol.checkpointing: round trip, keep-last-N, latest step."""

import errno
import logging
import os
import resource
import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
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


# ------------------------------------------------------------------ faults
def _two_checkpoints(workdir):
    ckpt = checkpointing.Checkpointer(workdir, max_to_keep=3)
    for step in (1, 2):
        ckpt.save(step, _state(step), {"step": step})
    ckpt.close()
    return os.path.join(workdir, "checkpoints")


def _data_files(step_dir):
    """The tensorstore files holding the arrays of a checkpoint."""
    directory = os.path.join(step_dir, "state", "d")
    return [os.path.join(directory, name) for name in os.listdir(directory)]


def _truncate(step_dir):
    for path in _data_files(step_dir):
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)


def _garble(step_dir):
    rng = np.random.default_rng(0)
    for path in _data_files(step_dir):
        with open(path, "wb") as f:
            f.write(rng.bytes(os.path.getsize(path)))


def _remove(relative):
    return lambda step_dir: os.remove(os.path.join(step_dir, relative))


def _empty(step_dir):
    for entry in os.listdir(step_dir):
        path = os.path.join(step_dir, entry)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


CORRUPTIONS = {
    "truncated data": _truncate,
    "garbage data": _garble,
    "missing array metadata": _remove(os.path.join("state", "_METADATA")),
    "missing ocdbt manifest": _remove(os.path.join("state", "manifest.ocdbt")),
    "missing json metadata": _remove(os.path.join("metadata", "metadata")),
    "empty directory": _empty,
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupt_latest_checkpoint_falls_back_to_the_previous(
    tmp_path, caplog, corruption
):
    directory = _two_checkpoints(str(tmp_path))
    newest = os.path.join(directory, "2")
    CORRUPTIONS[corruption](newest)
    ckpt = checkpointing.Checkpointer(str(tmp_path), max_to_keep=3)
    assert ckpt.latest_step() == 2  # orbax lists it: only reading tells
    with caplog.at_level(logging.WARNING):
        restored = ckpt.restore_latest(_state(0))
    assert restored.step == 1 and restored.metadata == {"step": 1}
    _assert_equal(restored.state, _state(1))
    (warning,) = [
        r.getMessage()
        for r in caplog.records
        if r.getMessage().startswith("checkpoint ")
    ]
    assert "\n" not in warning
    assert f"checkpoint 2 ({newest}) is corrupt: " in warning
    assert f"restored checkpoint 1 ({os.path.join(directory, '1')}) instead" in warning
    # Moved aside, not deleted; orbax no longer lists it.
    assert f"moved it to {newest}.corrupt" in warning
    assert sorted(os.listdir(directory)) == ["1", "2.corrupt"]
    assert ckpt.latest_step() == 1
    ckpt.close()
    assert checkpointing.Checkpointer(str(tmp_path)).latest_step() == 1


def test_every_checkpoint_corrupt_means_no_resume(tmp_path, caplog):
    directory = _two_checkpoints(str(tmp_path))
    for step in ("1", "2"):
        _truncate(os.path.join(directory, step))
    ckpt = checkpointing.Checkpointer(str(tmp_path), max_to_keep=3)
    with caplog.at_level(logging.WARNING):
        assert ckpt.restore_latest(_state(0)) is None
    assert "no readable checkpoint is left" in caplog.text
    assert sorted(os.listdir(directory)) == ["1.corrupt", "2.corrupt"]
    # A new run writes step 2 again; a second corrupt 2 keeps the first one.
    ckpt.save(2, _state(2), {"step": 2})
    ckpt.wait()  # saves are asynchronous
    _truncate(os.path.join(directory, "2"))
    assert ckpt.restore_latest(_state(0)) is None
    assert sorted(os.listdir(directory)) == ["1.corrupt", "2.corrupt", "2.corrupt-2"]
    ckpt.close()


def test_read_only_fallback_moves_nothing(tmp_path, caplog):
    directory = _two_checkpoints(str(tmp_path))
    _truncate(os.path.join(directory, "2"))
    ckpt = checkpointing.Checkpointer(str(tmp_path), read_only=True)
    with caplog.at_level(logging.WARNING):
        assert ckpt.restore_latest(_state(0)).step == 1
    assert "checkpoint 2 (" in caplog.text and "restored checkpoint 1" in caplog.text
    assert "moved" not in caplog.text
    assert sorted(os.listdir(directory)) == ["1", "2"]
    ckpt.close()


def test_checkpoint_of_another_structure_is_not_taken_for_corrupt(tmp_path):
    directory = _two_checkpoints(str(tmp_path))
    other = _state(0)
    other.online_params["extra"] = {"w": np.zeros(3, np.float32)}
    ckpt = checkpointing.Checkpointer(str(tmp_path), max_to_keep=3)
    with pytest.raises(ValueError, match="extra"):
        ckpt.restore_latest(other)
    assert sorted(os.listdir(directory)) == ["1", "2"]
    ckpt.close()


def _assert_latest_is_step_1(directory):
    """A new Checkpointer on `directory` restores the state saved at step 1."""
    reopened = checkpointing.Checkpointer(str(directory), max_to_keep=1)
    restored = reopened.restore_latest(_state(0))
    assert restored.step == 1
    _assert_equal(restored.state, _state(1))
    reopened.close()


@pytest.mark.parametrize("failure", ["no space", "read-only"])
def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch, failure):
    ckpt = checkpointing.Checkpointer(str(tmp_path), max_to_keep=1)
    ckpt.save(1, _state(1), {"step": 1})
    error = (
        OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if failure == "no space"
        else PermissionError(errno.EROFS, os.strerror(errno.EROFS))
    )

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(ocp.CheckpointManager, "save", fail)
    with pytest.raises(checkpointing.CheckpointWriteError) as caught:
        ckpt.save(2, _state(2), {"step": 2})
    message = str(caught.value)
    assert "\n" not in message
    assert message == (
        f"cannot write checkpoint 2 to {ckpt.directory}: {error}; "
        "checkpoint 1 is intact"
    )
    monkeypatch.undo()
    ckpt.close()
    _assert_latest_is_step_1(tmp_path)


def test_real_write_failure_is_one_line_and_keeps_the_previous(tmp_path):
    """Files capped at 100 bytes (RLIMIT_FSIZE): writes fail as on a full disk."""
    ckpt = checkpointing.Checkpointer(str(tmp_path), max_to_keep=1)
    ckpt.save(1, _state(1), {"step": 1})
    ckpt.wait()
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not a kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (100, limit[1]))
    try:
        with pytest.raises(checkpointing.CheckpointWriteError) as caught:
            ckpt.save(2, _state(2), {"step": 2})  # asynchronous: returns
            ckpt.wait()  # the write's error surfaces here (or at the next save)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
        signal.signal(signal.SIGXFSZ, handler)
    assert str(caught.value) == (
        f"cannot write checkpoint 2 to {ckpt.directory}: [Errno {errno.EFBIG}] "
        f"{os.strerror(errno.EFBIG)}; checkpoint 1 is intact"
    )
    ckpt.close()
    _assert_latest_is_step_1(tmp_path)


def test_a_write_error_wrapped_by_tensorstore_names_the_os_error():
    """Orbax reports a full disk as the metadata's OSError or as tensorstore's
    ValueError (whichever thread fails first): both read the same."""
    wrapped = ValueError(
        'OUT_OF_RANGE: Error writing "state/.zarray": Failed to write 89 bytes: '
        'No space left on device [tensorstore_spec=\'{"driver":"zarr"}\'] '
        f"[os_error_code='{errno.ENOSPC}']"
    )
    expected = f"[Errno {errno.ENOSPC}] {os.strerror(errno.ENOSPC)}"
    assert checkpointing._write_reason(wrapped) == expected
    assert (
        checkpointing._write_reason(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        == expected
    )
