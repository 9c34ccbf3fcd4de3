"""Non-finite updates: the run stops at the step, or skips it when configured.

The fault is injected on the device: a test subclass of `ByolExperiment`
makes view 1 NaN at one chosen step, so the loss and gradients of that step
are NaN, as they would be after an overflow. A tiny BN network is used, so
that the skipped update must also leave the BN statistics unchanged.
"""

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("tensorflow")

from byol import byol_experiment, checkpointing, train  # noqa: E402
from byol import run_dir as run_dirs  # noqa: E402
from byol.data import pipeline  # noqa: E402
from tests.fixtures import tiny_config, write_fake_fashion_mnist  # noqa: E402

STEPS = 4
NAN_STEP = 3  # the third update (loop index 2) gets NaN images


class _NanAtStep(byol_experiment.ByolExperiment):
    """A ByolExperiment whose view 1 is NaN at update NAN_STEP."""

    def _update(self, state, step, batch):
        self._step = step  # traced: read by `views` in the same trace
        try:
            return super()._update(state, step, batch)
        finally:
            self._step = None

    def views(self, rng, batch):
        view1, view2 = super().views(rng, batch)
        if getattr(self, "_step", None) is None:  # `init`
            return view1, view2
        return jnp.where(self._step + 1 == NAN_STEP, jnp.nan, view1), view2


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fm_data")
    write_fake_fashion_mnist(str(directory))
    return str(directory)


def _config(data_dir, skip):
    return tiny_config(
        data_dir,
        norm="bn",
        max_steps=STEPS,
        checkpoint_every_steps=1,
        max_checkpoints_to_keep=STEPS,
        skip_nonfinite_updates=skip,
    )


def _restore(workdir, step, like):
    return checkpointing.Checkpointer(workdir).restore(step, like)


def _like(config):
    experiment = byol_experiment.ByolExperiment(config, 10)
    info = pipeline.dataset_info(
        config.data.dataset, config.data.data_dir, val_size=config.data.val_size
    )
    return run_dirs.abstract_train_state(experiment, info, config.data.image_size)


def _all_finite(tree):
    return all(np.all(np.isfinite(x)) for x in jax.tree.leaves(tree))


def test_nonfinite_update_stops_the_run_and_keeps_the_last_good_checkpoint(
    data_dir, tmp_path, monkeypatch
):
    monkeypatch.setattr(byol_experiment, "ByolExperiment", _NanAtStep)
    config = _config(data_dir, skip=False)
    workdir = str(tmp_path / "run")
    with pytest.raises(FloatingPointError) as caught:
        train.pretrain(config, workdir)
    message = str(caught.value)
    directory = os.path.join(workdir, "checkpoints")
    assert "\n" not in message
    assert message.startswith("non-finite ")
    bad = message[len("non-finite ") : message.index(f" at step {NAN_STEP};")]
    # The loss itself may stay finite: the first ReLU maps NaN to 0 on XLA:CPU.
    assert "grad_norm" in bad.split(", "), message
    assert (
        f"the last good checkpoint (step {NAN_STEP - 1}) is kept in {directory}"
    ) in message
    assert "training.skip_nonfinite_updates=True" in message
    monkeypatch.undo()
    assert sorted(os.listdir(directory)) == [str(s) for s in range(1, NAN_STEP)]
    state, _ = _restore(workdir, NAN_STEP - 1, _like(config))
    assert _all_finite(state)
    assert not os.path.exists(os.path.join(workdir, "results.json"))


def test_nonfinite_update_is_skipped_when_configured(
    data_dir, tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr(byol_experiment, "ByolExperiment", _NanAtStep)
    config = _config(data_dir, skip=True)
    workdir = str(tmp_path / "run")
    with caplog.at_level(logging.WARNING):
        results = train.pretrain(config, workdir)
    monkeypatch.undo()
    assert f"Skipped the update of step {NAN_STEP}: non-finite " in caplog.text
    assert results["skipped_updates"] == 1
    with open(os.path.join(workdir, "results.json")) as f:
        assert json.load(f)["skipped_updates"] == 1
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if '"loss"' in line]
    assert [r["skipped_updates"] for r in rows] == [
        float(step >= NAN_STEP) for step in range(1, STEPS + 1)
    ]
    assert np.isnan(rows[NAN_STEP - 1]["grad_norm"])
    assert np.isfinite(rows[-1]["grad_norm"])

    like = _like(config)
    before, _ = _restore(workdir, NAN_STEP - 1, like)
    after, metadata = _restore(workdir, NAN_STEP, like)
    assert metadata["skipped_updates"] == 1
    # Nothing moved: online and target parameters, BN statistics, optimiser.
    assert before.online_state  # BN moving averages
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(before),
        jax.tree.leaves(after),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
    final, _ = _restore(workdir, STEPS, like)
    assert _all_finite(final)
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(
            jax.tree.leaves(after.online_params),
            jax.tree.leaves(final.online_params),
            strict=True,
        )
    )
