"""Bad input as a user tries it: one line naming the field or file, nothing written.

Cases beyond test_main.py's: flags and config values a user mistypes, launch
flags, resuming with another network, files a killed run leaves, paths that
cannot be written, and Ctrl-C.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("tensorflow")

from byol import config_checks  # noqa: E402
from byol import run_dir as run_dirs  # noqa: E402
from tests.fixtures import (  # noqa: E402
    REPO,
    child_env,
    tiny_cli_flags,
    tiny_config,
    write_fake_fashion_mnist,
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("fm"))
    write_fake_fashion_mnist(directory, num_train=300, num_test=70)
    from byol.data import pipeline  # noqa: PLC0415

    pipeline.dataset_info("fashion_mnist", directory, val_size=50)  # built once
    return directory


def _cli(*args, module="byol.main"):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _one_line(result, start, status=2):
    lines = result.stderr.splitlines()
    assert result.returncode == status, result.stderr[-3000:]
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("error: " + start), lines[0]


# ------------------------------------------------------- config values
CONFIG_CASES = [
    ("training.batch_size", -256, "training.batch_size must be a positive integer"),
    ("model.width_multiplier", True, "model.width_multiplier must be a positive"),
    ("training.base_learning_rate", 1e400, "training.base_learning_rate must be a"),
    ("training.weight_decay", float("nan"), "training.weight_decay must be a finite"),
    ("model.num_groups", 32, "model.num_groups 32 does not divide the 8 channels"),
    ("model.compute_dtype", "float16", "model.compute_dtype must be one of float32"),
    ("method", "BYOL", "method 'BYOL' unknown; expected one of: byol, simclr"),
    ("data.dataset", "", "data.dataset '' unknown; expected one of: "),
    ("data.dataset", "image_folder:", "data.dataset 'image_folder:' unknown"),
    ("data.crop_rule", "random", "data.crop_rule 'random' unknown; expected one"),
    ("training.temperature", -0.1, "training.temperature must be a finite number"),
    ("training.accumulation_steps", 3, "training.accumulation_steps 3 does not"),
    ("training.warmup_steps", -1, "training.warmup_steps must be an integer >= 0"),
    ("data.num_threads", -2, "data.num_threads must be an integer >= 0"),
    ("evaluation.learning_rates", (), "evaluation.learning_rates () invalid"),
    ("model.ws_eps", float("inf"), "model.ws_eps must be a finite number > 0"),
]


@pytest.mark.parametrize("field, value, expected", CONFIG_CASES)
def test_config_value_is_named_in_one_line(field, value, expected):
    config = tiny_config("unused")
    section, _, name = field.rpartition(".")
    (config[section] if section else config)[name] = value
    with pytest.raises(ValueError) as error:
        config_checks.check_pretrain_config(config)
    assert "\n" not in str(error.value)
    assert str(error.value).startswith(expected), str(error.value)


# ---------------------------------------------------------- command line
CLI_CASES = {
    "empty --workdir": (["--workdir="], "--workdir is empty"),
    "--cpu_devices=0": (["--cpu_devices=0"], "flag --cpu_devices=0: 0 is not a"),
    "--cpu_devices=-1": (["--cpu_devices=-1"], "flag --cpu_devices=-1: -1 is not"),
    "a directory as --config": (["--config=configs/"], "--config: [Errno 21] Is a"),
    "float for an int field": (
        ["--config.training.max_steps=1.5"],
        "flag --config.training.max_steps=1.5: invalid literal for int()",
    ),
    "an unknown flag": (["--epochs=3"], "Unknown command line flag 'epochs'"),
    "--num_processes alone": (
        ["--num_processes=2"],
        "--coordinator_address, --process_id missing: outside SLURM",
    ),
    "--process_id out of range": (
        ["--num_processes=2", "--process_id=5", "--coordinator_address=h:1"],
        "--process_id 5 must be in [0, 2)",
    ),
    "--local_device_ids not numbers": (
        ["--local_device_ids=a,b"],
        "--local_device_ids 'a,b' invalid; expected GPU indices",
    ),
    "a preset epochs that is not a number": (
        ["--config=configs/byol.py:epochs=abc"],
        "flag --config=configs/byol.py:epochs=abc: Error whilst parsing config "
        "file: ValueError: epochs 'abc' has no preset",
    ),
    "a workdir under a file": (
        ["--workdir=/etc/hostname/run"],
        "--workdir /etc/hostname/run cannot be written (Not a directory)",
    ),
    "linear evaluation of a file": (
        [
            "--config=configs/eval.py",
            "--config.evaluation.pretrain_workdir=/etc/hostname",
        ],
        "evaluation.pretrain_workdir '/etc/hostname' has no config.json",
    ),
    "both evaluation sources": (
        [
            "--config=configs/eval.py",
            "--config.evaluation.deepmind_checkpoint=/tmp/x.pkl",
            "--config.evaluation.pretrain_workdir=/tmp/y",
        ],
        "evaluation.pretrain_workdir and evaluation.deepmind_checkpoint are both",
    ),
    "a missing DeepMind checkpoint": (
        ["--config=configs/eval.py", "--config.evaluation.deepmind_checkpoint=/no.pkl"],
        "DeepMind BYOL checkpoint /no.pkl does not exist",
    ),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_case_ends_in_one_line(case, tmp_path, data_dir):
    extra, start = CLI_CASES[case]
    args = [a for a in extra if a.startswith("--config=")]
    args = args or ["--config=configs/fashion_mnist.py"]
    args += [a for a in extra if not a.startswith("--config=")]
    if not any(a.startswith("--workdir") for a in args):
        args.append(f"--workdir={tmp_path / 'run'}")
    _one_line(_cli(*args), start)
    assert not (tmp_path / "run").exists()


def test_first_build_of_fashion_mnist_says_one_thing(tmp_path):
    write_fake_fashion_mnist(str(tmp_path), num_train=60, num_test=10)
    result = _cli(
        "--config=configs/fashion_mnist.py",
        f"--config.data.data_dir={tmp_path}",
        "--config.data.val_size=200",
        f"--workdir={tmp_path / 'run'}",
    )
    _one_line(result, "val_size 200 must be smaller than the 60 examples")
    assert result.stdout.splitlines()[0].startswith("Building fashion_mnist in ")


# ---------------------------------------------------------------- resuming
@pytest.mark.parametrize(
    "field, value",
    [
        ("encoder_ws", 0),
        ("num_groups", 2),
        ("mlp_ws", 1),
        ("ws_eps", 1e-3),
        ("projector_norm", "ln"),
    ],
)
def test_resume_refuses_every_change_of_the_network(tmp_path, field, value):
    config = tiny_config("unused")
    run_dirs.record_config(str(tmp_path), config)
    (tmp_path / "checkpoints").mkdir()
    changed = tiny_config("unused")
    changed.model[field] = value
    with pytest.raises(ValueError) as error:
        run_dirs.record_config(str(tmp_path), changed)
    assert f"model.{field} was {config.model[field]!r}, now {value!r}" in str(
        error.value
    )
    # The compute dtype changes how, not what, it computes: resumable.
    dtype = tiny_config("unused")
    dtype.model.compute_dtype = "bfloat16"
    run_dirs.record_config(str(tmp_path), dtype)


def test_a_workdir_in_use_by_another_run_is_refused(tmp_path, data_dir):
    workdir = tmp_path / "run"
    with run_dirs.claimed(str(workdir)):  # this process: "the other run"
        result = _cli(*tiny_cli_flags(data_dir, max_steps=2), f"--workdir={workdir}")
        _one_line(result, f"workdir {workdir} is in use by another run (pid ")
        assert f"(pid {os.getpid()} on " in result.stderr
        with pytest.raises(ValueError, match="in use by another run"):
            with run_dirs.claimed(str(workdir)):  # a second claim, same process
                pass
    assert sorted(os.listdir(workdir)) == [".lock.0"]  # refused before config.json
    # A holder that dies without releasing (SIGKILL) leaves the lock free.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from byol import run_dir\n"
            "with run_dir.claimed(sys.argv[1]):\n"
            "    print('held', flush=True); time.sleep(300)",
            str(workdir),
        ],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=REPO),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match=f"pid {holder.pid} on "):
            with run_dirs.claimed(str(workdir)):
                pass
    finally:
        holder.kill()
        holder.wait()
    with run_dirs.claimed(str(workdir)):
        pass


def test_checkpoints_without_config_json_are_refused(tmp_path):
    (tmp_path / "checkpoints" / "4").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds checkpoints but no config.json"):
        run_dirs.record_config(str(tmp_path), tiny_config("unused"))


def test_a_config_json_that_is_not_json_is_named(tmp_path):
    (tmp_path / "config.json").write_text('{"model": {')
    with pytest.raises(ValueError, match="config.json is not a config.json"):
        run_dirs.read_config(str(tmp_path))


def test_a_metrics_line_cut_by_a_kill_is_dropped(tmp_path):
    from byol import reporting  # noqa: PLC0415

    rows = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "lo'
    (tmp_path / "metrics.jsonl").write_text(text)
    log = reporting.MetricsLog(str(tmp_path), resume_step=2)
    log.close()
    assert log.history == rows
    (tmp_path / "metrics.jsonl").write_text("not json\n" + text)
    with pytest.raises(ValueError, match="metrics.jsonl line 1 is not JSON"):
        reporting.MetricsLog(str(tmp_path), resume_step=2)


# ------------------------------------------------------------------ export
def test_export_to_a_directory_or_nowhere_is_refused(tmp_path):
    from byol import export  # noqa: PLC0415

    (tmp_path / "config.json").write_text(json.dumps(tiny_config("x").to_dict()))
    for output in (str(tmp_path), ""):
        argv = ["export", f"--workdir={tmp_path}", f"--output={output}"]
        assert export.main(argv) == 2
    result = _cli(
        f"--workdir={tmp_path}", "--output=/etc/hostname/e.npz", module="byol.export"
    )
    _one_line(result, "--output /etc/hostname cannot be written")
    result = _cli("--help", module="byol.export")
    assert result.returncode == 0 and "--projector" in result.stdout


# ------------------------------------------------------------------ Ctrl-C
def test_ctrl_c_stops_in_one_line_and_resumes(tmp_path, data_dir):
    command = [
        sys.executable,
        "-m",
        "byol.main",
        f"--workdir={tmp_path / 'run'}",
        *tiny_cli_flags(data_dir, max_steps=6, checkpoint_every_steps=1),
    ]
    env = child_env(tmp_path / "xla_cache")  # the resumed run compiles nothing
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in process.stdout:
        if line.startswith("step 2/6"):
            time.sleep(0.2)
            process.send_signal(signal.SIGINT)
            break
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert stderr.splitlines() == [
        "error: interrupted; run the same command again to resume from the "
        f"newest checkpoint in {tmp_path / 'run' / 'checkpoints'}"
    ]
    resumed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resumed from step" in resumed.stdout
