"""Tests of byol.train: a tiny end-to-end pre-training, outputs, exact resume."""

import errno
import json
import logging
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

pytest.importorskip("tensorflow")

from byol import byol_experiment, checkpointing, parallel, train  # noqa: E402
from tests.fixtures import tiny_config, write_fake_fashion_mnist  # noqa: E402

STEPS = 4
PREEMPT_AT = 2  # the interrupted run dies right after its checkpoint at step 2
KEEP = 2


class _Preempted(Exception):
    """Stands in for the job being killed."""


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("fm_data")
    write_fake_fashion_mnist(str(data_dir))
    return tiny_config(
        data_dir,
        max_steps=STEPS,
        checkpoint_every_steps=1,
        max_checkpoints_to_keep=KEEP,
        log_every_steps=1,
    )


@pytest.fixture(scope="module")
def experiments():
    """Makes `pretrain` reuse one ByolExperiment per config (and its compiles).

    Every `pretrain` call builds a ByolExperiment, whose pmapped init and update
    take XLA ~30 s to compile on CPU; the runs below share one config, so they
    share the compiled functions. The experiment holds no arrays, so this does
    not change what a run computes.
    """
    cache = {}
    original = byol_experiment.ByolExperiment

    def shared(config, num_classes):
        key = (config.to_json(), num_classes)
        if key not in cache:
            cache[key] = original(config, num_classes)
        return cache[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(byol_experiment, "ByolExperiment", shared)
        yield cache


@pytest.fixture(scope="module")
def runs(config, experiments, tmp_path_factory):
    """An uninterrupted run, and one killed after step 2 then restarted."""
    config = config.copy_and_resolve_references()
    config.evaluation.probe_every_steps = 2
    full_dir = str(tmp_path_factory.mktemp("full"))
    full = train.pretrain(config, full_dir)

    resumed_dir = str(tmp_path_factory.mktemp("resumed"))
    save = checkpointing.Checkpointer.save

    def save_then_die(self, step, state, metadata):
        save(self, step, state, metadata)
        if step == PREEMPT_AT:
            self.wait()  # the checkpoint is on disk when the job is killed
            raise _Preempted

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(checkpointing.Checkpointer, "save", save_then_die)
        with pytest.raises(_Preempted):
            train.pretrain(config, resumed_dir)
    assert checkpointing.Checkpointer(resumed_dir).latest_step() == PREEMPT_AT
    resumed = train.pretrain(config, resumed_dir)
    assert len(experiments) == 1
    return config, (full_dir, full), (resumed_dir, resumed)


def _as_json(tree):
    return json.loads(json.dumps(tree))  # tuples become lists


def _read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def _final_state(workdir, like, step=STEPS):
    return checkpointing.Checkpointer(workdir).restore(step, like)


def _like(experiments):
    """A host TrainState of the right shapes (zeros), to restore into."""
    experiment = next(iter(experiments.values()))  # the runs' (the first made)
    batch = {
        "images": np.zeros((2, 8, 28, 28, 1), np.uint8),
        "labels": np.zeros((2, 8), np.int32),
    }
    shapes = jax.eval_shape(experiment.init, jax.random.key(0), batch)
    return jax.tree.map(lambda s: np.zeros(s.shape[1:], s.dtype), shapes)


def test_pretrain_writes_results_logs_plot_and_checkpoints(runs):
    config, (workdir, results), _ = runs
    with open(os.path.join(workdir, "results.json")) as f:
        saved = json.load(f)
    assert saved["steps"] == STEPS and saved["mode"] == "pretrain"
    assert saved["config"] == _as_json(config.to_dict())
    probe = saved["probe"]
    assert probe == results["probe"]
    for key in ("top1", "top5", "val_top1"):
        assert 0.0 <= probe[key] <= 1.0, (key, probe)
    assert probe["top1"] <= probe["top5"]
    assert np.isfinite(saved["final_scalars"]["loss"])

    rows = _read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == list(range(1, STEPS + 1))
    assert saved["final_scalars"] == {
        k: v for k, v in train_rows[-1].items() if k != "step"
    }
    # The periodic probe at step 2 and the final one.
    assert [r["step"] for r in rows if "probe_top1" in r] == [2, STEPS]
    assert rows[-1]["probe_top1"] == probe["top1"]

    with open(os.path.join(workdir, "training.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    events = os.listdir(os.path.join(workdir, "tensorboard"))
    assert any(name.startswith("events.out.tfevents") for name in events)
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f) == _as_json(config.to_dict())
    # One checkpoint per step; only the newest KEEP are kept.
    steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")))
    assert steps == list(range(STEPS - KEEP + 1, STEPS + 1))


def test_resumed_run_equals_uninterrupted_run(runs, experiments):
    _, (full_dir, full), (resumed_dir, resumed) = runs
    like = _like(experiments)
    full_state, full_meta = _final_state(full_dir, like)
    resumed_state, resumed_meta = _final_state(resumed_dir, like)
    assert (
        full_meta
        == resumed_meta
        == {
            "seed": 0,
            "dataset": "fashion_mnist",
            "skipped_updates": 0,
        }
    )
    assert isinstance(full_state, byol_experiment.TrainState)
    # Bitwise: same batches, same augmentation keys, same optimiser state.
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(full_state),
        jax.tree.leaves(resumed_state),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
    assert full["probe"] == resumed["probe"]
    assert full["final_scalars"] == resumed["final_scalars"]
    # The log of the resumed run has each step once, with the same values.
    full_rows = _read_jsonl(os.path.join(full_dir, "metrics.jsonl"))
    assert _read_jsonl(os.path.join(resumed_dir, "metrics.jsonl")) == full_rows


def test_pretrain_trained_the_online_network(runs, experiments):
    _, (full_dir, _), _ = runs
    like = _like(experiments)
    first, _ = checkpointing.Checkpointer(full_dir).restore(STEPS, like)
    (experiment,) = experiments.values()
    # The target moved towards the online network but is not equal to it.
    online = jax.tree.leaves(first.online_params)
    target = jax.tree.leaves(first.target_params)
    assert any(not np.array_equal(o, t) for o, t in zip(online, target, strict=True))
    # And the optimiser counted every step.
    counts = [
        int(x)
        for x in jax.tree.leaves(first.opt_state)
        if np.asarray(x).dtype.kind == "i"
    ]
    assert counts and all(c == STEPS for c in counts), counts
    assert experiment.config.training.max_steps == STEPS


def test_rerun_of_a_finished_run_keeps_its_results(runs):
    config, (workdir, results), _ = runs
    rows = _read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    again = train.pretrain(config, workdir)
    assert again["probe"] == results["probe"]
    assert _read_jsonl(os.path.join(workdir, "metrics.jsonl")) == rows


def test_fewer_steps_than_the_newest_checkpoint_is_an_error(runs, tmp_path):
    config, (workdir, _), _ = runs
    workdir = shutil.copytree(workdir, tmp_path / "copy")  # leave the run as it is
    config = config.copy_and_resolve_references()
    config.training.max_steps = STEPS - 1
    with pytest.raises(ValueError, match="training.max_steps 3 is below step 4"):
        train.pretrain(config, str(workdir))


def test_replicate_lays_out_arrays_as_pmap_does():
    tree = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    replicated = parallel.replicate(tree)
    assert replicated["w"].shape == (jax.local_device_count(), 2, 3)
    for shard in replicated["w"].addressable_shards:
        np.testing.assert_array_equal(shard.data[0], tree["w"])
    step = jax.pmap(lambda x: x + 1, axis_name=parallel.AXIS)
    # Same sharding as pmap's outputs, so a restored state does not make the
    # next pmapped step compile again.
    assert replicated["w"].sharding == step(replicated["w"]).sharding


def test_corrupt_newest_checkpoint_resumes_from_the_previous(
    runs, experiments, tmp_path, caplog
):
    config, (full_dir, full), _ = runs
    workdir = str(shutil.copytree(full_dir, tmp_path / "copy"))
    os.remove(os.path.join(workdir, "results.json"))  # killed before the end
    directory = os.path.join(workdir, "checkpoints")
    newest = os.path.join(directory, str(STEPS))
    data_dir = os.path.join(newest, "state", "d")
    for name in os.listdir(data_dir):  # truncated, as by a full disk
        path = os.path.join(data_dir, name)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    with caplog.at_level(logging.WARNING):
        resumed = train.pretrain(config, workdir)
    previous = os.path.join(directory, str(STEPS - 1))
    assert f"checkpoint {STEPS} ({newest}) is corrupt: " in caplog.text
    assert f"restored checkpoint {STEPS - 1} ({previous}) instead" in caplog.text
    # Kept for inspection, out of orbax's sight; the step was trained again.
    assert os.path.isdir(newest + ".corrupt")
    like = _like(experiments)
    expected, _ = _final_state(full_dir, like)
    got, _ = _final_state(workdir, like)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(a, b)
    assert resumed["probe"] == full["probe"]


def test_failed_checkpoint_write_stops_the_run(runs, tmp_path, monkeypatch):
    config, _, _ = runs
    workdir = str(tmp_path / "run")
    save = ocp.CheckpointManager.save

    def no_space_at_step_3(self, step, *args, **kwargs):
        if step == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", no_space_at_step_3)
    with pytest.raises(checkpointing.CheckpointWriteError) as caught:
        train.pretrain(config, workdir)
    directory = os.path.join(workdir, "checkpoints")
    assert str(caught.value) == (
        f"cannot write checkpoint 3 to {directory}: [Errno {errno.ENOSPC}] "
        f"{os.strerror(errno.ENOSPC)}; checkpoint 2 is intact"
    )
    monkeypatch.undo()
    assert checkpointing.Checkpointer(workdir).latest_step() == 2
    assert not os.path.exists(os.path.join(workdir, "results.json"))
