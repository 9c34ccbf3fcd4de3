"""Two processes x 2 CPU devices (gloo) train as one process with 4 devices.

`python -m byol.main` runs twice, as process 0 and 1 of one run on localhost,
a tiny GN+WS config; `tests/multihost_reference.py` trains the same config in
one process with 4 devices on the same global batches (each process's shard,
loaded as that process does). The final parameters must agree to float32
rounding (only the cross-process all-reduce differs). Then the 2-process run
resumes from its checkpoint of step 2 and must end where it ended before.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

pytest.importorskip("tensorflow")

from tests.fixtures import (  # noqa: E402
    REPO,
    checkpointed_state,
    child_env,
    read_text,
    tiny_cli_flags,
    write_fake_fashion_mnist,
)

STEPS = 3
SAVED_AT = 2  # the run's other checkpoint, resumed from
TIMEOUT_S = 600  # a hang guard; each run ~60 s alone, slower beside other tests


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(tmp, devices):
    # A persistent compilation cache, as a user's environment may set: the
    # resumed run must not hang on the first run's programs (jax 0.12.1; see
    # `byol.distributed.initialize`). A hung child prints every thread's
    # Python stack when `_wait` aborts it.
    return child_env(
        tmp / "xla_cache",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        PYTHONFAULTHANDLER="1",
    )


def _start(args, env, log_path):
    log = open(log_path, "w")  # noqa: SIM115  (closed by _wait)
    process = subprocess.Popen(
        [sys.executable, *args], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    return process, log


def _wait(started):
    """Waits for every process; aborts them all if one fails or hangs.

    A hung process is sent SIGABRT first, so its log ends with its stacks.
    """
    codes = []
    try:
        for process, _ in started:
            codes.append(process.wait(timeout=TIMEOUT_S))
    except subprocess.TimeoutExpired:
        codes.append("timeout")
    finally:
        for process, log in started:
            if process.poll() is None:
                process.send_signal(signal.SIGABRT)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            log.close()
    return codes


def _check_exits(codes, expected, tmp, names):
    """Fails with the end of every child's log (pytest would elide a repr)."""
    if codes == expected:
        return
    tails = "\n".join(
        f"--- {name}.log (last 60 lines) ---\n"
        + "\n".join(read_text(tmp / f"{name}.log").splitlines()[-60:])
        for name in names
    )
    pytest.fail(f"exit codes {codes}, expected {expected} ({tmp})\n{tails}")


def _two_processes(workdir, common, tmp, name):
    port = _free_port()
    started = [
        _start(
            [
                "-m",
                "byol.main",
                f"--workdir={workdir}",
                "--cpu_devices=2",
                f"--coordinator_address=localhost:{port}",
                "--num_processes=2",
                f"--process_id={p}",
                *common,
            ],
            _env(tmp, 2),
            tmp / f"{name}_{p}.log",
        )
        for p in range(2)
    ]
    return started


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multihost")
    data_dir = str(tmp / "data")
    write_fake_fashion_mnist(data_dir)

    from byol.data import pipeline  # noqa: PLC0415

    pipeline.dataset_info("fashion_mnist", data_dir, val_size=50)  # builds it, once
    common = tiny_cli_flags(
        data_dir,
        max_steps=STEPS,
        checkpoint_every_steps=SAVED_AT,
        max_checkpoints_to_keep=3,
    )
    reference, workdir = tmp / "reference", tmp / "two_processes"
    started = _two_processes(workdir, common, tmp, "run")
    started.append(
        _start(
            [
                "tests/multihost_reference.py",
                f"--workdir={reference}",
                "--cpu_devices=4",
                *common,
            ],
            _env(tmp, 4),
            tmp / "reference.log",
        )
    )
    codes = _wait(started)
    _check_exits(codes, [0, 0, 0], tmp, ("run_0", "run_1", "reference"))
    logs = {name: read_text(tmp / f"{name}.log") for name in ("run_0", "run_1")}
    first = checkpointed_state(workdir, STEPS)
    results = json.loads(read_text(workdir / "results.json"))

    # Killed after its checkpoint of step 2: the last one and the results gone.
    shutil.rmtree(workdir / "checkpoints" / str(STEPS))
    os.remove(workdir / "results.json")
    codes = _wait(_two_processes(workdir, common, tmp, "resumed"))
    _check_exits(codes, [0, 0], tmp, ("resumed_0", "resumed_1"))
    logs.update(
        {name: read_text(tmp / f"{name}.log") for name in ("resumed_0", "resumed_1")}
    )
    return dict(
        data_dir=data_dir,
        workdir=workdir,
        first=first,
        resumed=checkpointed_state(workdir, STEPS),
        reference=checkpointed_state(reference, STEPS),
        results=results,
        logs=logs,
    )


def _leaves(tree):
    return jax.tree_util.tree_leaves_with_path(tree)


def test_two_processes_train_as_one_process_with_all_devices(runs):
    first, reference = runs["first"], runs["reference"]
    assert jax.tree.structure(first) == jax.tree.structure(reference)
    initial_target_gap = 0.0
    for (path, a), b in zip(_leaves(first), jax.tree.leaves(reference), strict=True):
        np.testing.assert_allclose(
            np.asarray(a, np.float64),
            np.asarray(b, np.float64),
            rtol=1e-5,
            atol=1e-6,
            err_msg=jax.tree_util.keystr(path),
        )
    # Not trivially equal: training moved the online network off the target.
    for a, b in zip(
        jax.tree.leaves(first["online_params"]),
        jax.tree.leaves(first["target_params"]),
        strict=True,
    ):
        initial_target_gap = max(initial_target_gap, float(np.max(np.abs(a - b))))
    assert initial_target_gap > 1e-3


def test_resumed_two_process_run_ends_where_it_ended(runs):
    assert "Resumed from step 2 in " in runs["logs"]["resumed_0"]
    for (path, a), b in zip(
        _leaves(runs["first"]), jax.tree.leaves(runs["resumed"]), strict=True
    ):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


def test_only_process_0_reports(runs):
    logs, workdir = runs["logs"], runs["workdir"]
    assert f"step {STEPS}/{STEPS}" in logs["run_0"]
    for name in ("run_1", "resumed_1"):
        assert "step " not in logs[name] and "Resumed" not in logs[name], logs[name]
    rows = [
        json.loads(line) for line in read_text(workdir / "metrics.jsonl").splitlines()
    ]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, STEPS + 1))


def test_probe_of_process_0_saw_every_shard(runs):
    """The final probe equals one computed here from the whole splits.

    With a cap of M train examples each of P processes embeds the first M / P
    of its contiguous shard; validation and test are used whole.
    """
    from byol import byol_experiment, probe  # noqa: PLC0415
    from byol.data import sampling  # noqa: PLC0415
    from tests.fixtures import tiny_config  # noqa: PLC0415

    config = tiny_config(runs["data_dir"], max_steps=STEPS)
    experiment = byol_experiment.ByolExperiment(config, 10)
    online = runs["first"]

    def embed(images):
        return experiment.embed(online["online_params"], online["online_state"], images)

    feats = probe.probe_features(config, embed)  # one process: whole splits
    cap = config.evaluation.probe_max_train_examples
    x, y = feats["train"]
    rows = np.concatenate(
        [
            np.arange(start, min(end, start + cap // 2))
            for start, end in (sampling.shard_bounds(len(x), p, 2) for p in range(2))
        ]
    )
    expected = probe.linear_probe((x[rows], y[rows]), feats["val"], feats["test"], 10)
    probe = runs["results"]["probe"]
    for key, value in expected._asdict().items():
        np.testing.assert_allclose(probe[key], value, rtol=1e-6, err_msg=key)


def test_process_shards_are_disjoint_and_cover_the_split(runs):
    from byol.data import pipeline  # noqa: PLC0415

    def keys(images):
        images = images.reshape(-1, *images.shape[-3:])  # one row per image
        return {row.tobytes() for row in images.reshape(len(images), -1)}

    shards = []
    for p in range(2):
        kwargs = dict(data_dir=runs["data_dir"], process_index=p, process_count=2)
        passes = pipeline.load(
            "fashion_mnist", "train", is_training=False, batch_dims=(2, 50), **kwargs
        )
        shard = set()
        for batch in passes:
            shard |= keys(batch["images"][batch["mask"]])
        # What the run trained on: this process's batches, all inside its shard.
        stream = pipeline.load(
            "fashion_mnist", "train", is_training=True, batch_dims=(2, 4), **kwargs
        )
        for _ in range(STEPS):
            assert keys(next(stream)["images"]) <= shard
        shards.append(shard)
    everything = pipeline.load(
        "fashion_mnist",
        "train",
        is_training=False,
        batch_dims=(300,),
        data_dir=runs["data_dir"],
        process_index=0,
        process_count=1,
    )
    assert not shards[0] & shards[1]
    assert shards[0] | shards[1] == keys(next(everything)["images"])
    assert len(shards[0]) == len(shards[1]) == 150
