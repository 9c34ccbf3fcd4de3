"""A real pre-training process killed with SIGKILL and restarted, several times.

`python -m byol.main` runs a tiny config on a fake Fashion-MNIST; it is killed
at random points (during a step, and while a checkpoint is being written) and
restarted with the same command each time. Its final parameters, metrics log
and probe must equal those of an uninterrupted run, bit for bit.

The runs share a persistent XLA compilation cache, so only the first one pays
for compiling the step (~30 s on 2 cores); each restart then takes ~10 s.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

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

STEPS = 12
TMP_SUFFIX = ".orbax-checkpoint-tmp"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The command line of a run in a work directory, and its environment."""
    tmp = tmp_path_factory.mktemp("kill")
    data_dir = str(tmp / "data")
    write_fake_fashion_mnist(data_dir)

    from byol.data import pipeline  # noqa: PLC0415

    pipeline.dataset_info("fashion_mnist", data_dir, val_size=50)  # builds it, once
    env = child_env(tmp / "xla_cache")

    def command(workdir):
        return [
            sys.executable,
            "-m",
            "byol.main",
            f"--workdir={workdir}",
            *tiny_cli_flags(
                data_dir,
                max_steps=STEPS,
                checkpoint_every_steps=1,
                max_checkpoints_to_keep=2,
            ),
        ]

    return command, env, tmp


def _entries(workdir):
    directory = os.path.join(workdir, "checkpoints")
    return os.listdir(directory) if os.path.isdir(directory) else []


def _latest(workdir):
    return max((int(n) for n in _entries(workdir) if n.isdigit()), default=0)


def _writing(workdir):
    return any(n.endswith(TMP_SUFFIX) for n in _entries(workdir))


def _start(command, env, workdir, log):
    log.write(f"--- {' '.join(command)}\n")
    log.flush()
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
    )


def _kill_when(process, ready, delay=0.0, timeout=240):
    """SIGKILLs `process` `delay` s after `ready()` holds; False if it ended first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            return False
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("the run did not get far enough in time")
        time.sleep(0.001)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return process.returncode == -signal.SIGKILL


def test_killed_and_restarted_run_equals_uninterrupted_run(setup):
    command, env, tmp = setup
    seed = int(os.environ.get("BYOL_KILL_SEED", time.time_ns() % 100_000))
    rng = random.Random(seed)
    context = f"(BYOL_KILL_SEED={seed}; logs in {tmp})"

    reference = str(tmp / "reference")
    with open(tmp / "reference.log", "w") as log:
        assert _start(command(reference), env, reference, log).wait() == 0, context

    workdir = str(tmp / "killed")
    kills = []  # (kind, last checkpoint before the kill, mid-write evidence)
    plan = ["write", "step", "write"]
    with open(tmp / "killed.log", "w") as log:
        for kind in plan:
            before = _latest(workdir)
            process = _start(command(workdir), env, workdir, log)
            target = before + rng.randint(1, 2)
            if target >= STEPS:
                process.kill()
                process.wait()
                break
            reached = lambda t=target: _latest(workdir) >= t  # noqa: E731
            if kind == "step":
                # Anywhere in the next steps: a step, a save, the log writes.
                killed = _kill_when(process, reached, delay=rng.uniform(0, 0.4))
            else:
                killed = _kill_when(
                    process, lambda r=reached: r() and _writing(workdir)
                )
            assert killed, f"run ended before its kill {context}"
            kills.append((kind, _latest(workdir), _writing(workdir)))
        final = _start(command(workdir), env, workdir, log)
        assert final.wait() == 0, context

    assert len(kills) == len(plan), (kills, context)
    # A kill while orbax wrote left its temporary directory; the restart
    # removed it and wrote that checkpoint again.
    assert any(kind == "write" and tmp_left for kind, _, tmp_left in kills), kills
    assert not _writing(workdir), _entries(workdir)
    output = read_text(tmp / "killed.log")
    for _, step, _ in kills:
        if step:
            assert f"Resumed from step {step} in " in output, (step, context)

    expected, got = (
        checkpointed_state(reference, STEPS),
        checkpointed_state(workdir, STEPS),
    )
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(expected),
        jax.tree.leaves(got),
        strict=True,
    ):
        np.testing.assert_array_equal(
            a, b, err_msg=f"{jax.tree_util.keystr(path)} {context}"
        )
    assert jax.tree.structure(expected) == jax.tree.structure(got)
    assert read_text(os.path.join(workdir, "metrics.jsonl")) == read_text(
        os.path.join(reference, "metrics.jsonl")
    )
    with open(os.path.join(reference, "results.json")) as f:
        reference_results = json.load(f)
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    assert results["probe"] == reference_results["probe"]
    assert results["final_scalars"] == reference_results["final_scalars"]
