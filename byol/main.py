r"""Command line: pre-train BYOL or linearly evaluate a pre-trained encoder.

    python -m byol.main --config=configs/fashion_mnist.py:gn_ws \
        --workdir=workdirs/fmnist [--config.training.max_steps=200]

The config's `mode` picks the job (`pretrain` or `linear_eval`); every config
field can be overridden with `--config.<field>=<value>`. A multi-process run
starts the same command on every host, with `--coordinator_address`,
`--num_processes` and `--process_id` (or nothing under SLURM, Open MPI and on
TPU pods; see `byol.distributed`). Bad input ends with a
one-line error naming the field (exit status 2); a fault during the run (a
non-finite loss, a failed checkpoint write) ends with a one-line error naming
the step or checkpoint (exit status 1). `--traceback` shows the full stack.
"""

from __future__ import annotations

import ast
import contextlib
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from byol import distributed, runtime
from byol.runtime import quiet_logs, set_cpu_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with ':variant'.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.")
_TRACEBACK = flags.DEFINE_bool(
    "traceback", False, "Show the full traceback of configuration errors."
)
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices",
    2,
    "Devices to split a CPU into (XLA host platform). Two devices ran the demo "
    "step 1.1x faster than one on a 2-core CPU; ignored on GPU/TPU.",
    lower_bound=1,
)
_LOCAL_DEVICE_IDS = flags.DEFINE_list(
    "local_device_ids",
    None,
    "Multi-process runs: the local GPUs this process drives, e.g. 0,1,2,3,4,5,6,7 "
    "for one process per node (or $JAX_LOCAL_DEVICE_IDS); default: one process "
    "per GPU, as byol.distributed explains.",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address",
    None,
    "Multi-process runs: host:port of process 0 (or $JAX_COORDINATOR_ADDRESS); "
    "detected under SLURM, Open MPI and on TPU pods.",
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Multi-process runs: processes (or $JAX_NUM_PROCESSES)."
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id",
    None,
    "Multi-process runs: this process, 0..num_processes-1 (or $JAX_PROCESS_ID).",
)
flags.mark_flags_as_required(["config", "workdir"])


def run(config, workdir: str) -> dict:
    """Runs the job `config.mode` names and returns its results."""
    if not workdir.strip():
        raise ValueError("--workdir is empty; give the run's directory")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"--workdir {workdir} is a file; expected a directory")
    if config.mode == "pretrain":
        from byol import train  # noqa: PLC0415  (imports TensorFlow)

        return train.pretrain(config, workdir)
    if config.mode == "linear_eval":
        from byol import linear_eval  # noqa: PLC0415

        return linear_eval.evaluate(config, workdir)
    raise ValueError(f"mode {config.mode!r} unknown; expected pretrain or linear_eval")


def _one_line(error: BaseException) -> str:
    """A flag or config-file error in one line: where it happened, then why."""
    text = str(error)
    if isinstance(error, (AttributeError, KeyError)):
        # An unknown field in --config.x.y: ml_collections quotes the text.
        with contextlib.suppress(ValueError, SyntaxError):
            text = ast.literal_eval(text)
        lines = [line.strip() for line in str(text).splitlines() if line.strip()]
        return "; ".join([f"config field {lines[0]} unknown", *lines[1:]])
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # A config file that cannot be read (ml_collections calls it "config_config").
    if text.startswith("Configuration is not available"):
        return f"--config: {lines[-1].split('failure to load: ')[-1]}"
    # A config file's error comes with its whole traceback: keep the last line.
    return f"{lines[0]} {lines[-1]}" if len(lines) > 1 else "".join(lines)


def parse_flags(argv: list[str]) -> list[str]:
    """Parses flags as absl does; a bad flag or config file ends in one line (exit 2).

    ``--traceback`` re-raises instead.
    """
    try:
        remaining = flags.FLAGS(argv)
        # A config file that failed to load raises only when first read.
        _CONFIG.value.get("mode")
        return remaining
    except Exception as error:  # flags.Error, or any error of the config file
        if "--traceback" in argv:
            raise
        print(f"error: {_one_line(error)}", file=sys.stderr)
        sys.exit(2)


def main(argv) -> None:
    """Entry point for absl."""
    del argv
    # Orbax and tfds log every file they touch at INFO; the progress line is ours.
    logging.set_verbosity(logging.WARNING)
    quiet_logs()
    set_cpu_flags(_CPU_DEVICES.value)
    from byol import checkpointing  # noqa: PLC0415  (after the XLA flags)

    runtime.catch_interrupts()
    try:
        distributed.initialize(
            _COORDINATOR.value,
            _NUM_PROCESSES.value,
            _PROCESS_ID.value,
            _device_ids(_LOCAL_DEVICE_IDS.value),
        )
        run(_CONFIG.value, _WORKDIR.value)
    except (ValueError, FileNotFoundError) as error:  # bad input
        _exit(error, 2)
    except (FloatingPointError, checkpointing.CheckpointWriteError, OSError) as error:
        # A fault during the run; its message names the step or checkpoint
        # and what was kept.
        _exit(error, 1)
    except KeyboardInterrupt:
        pass
    if runtime.INTERRUPTS:  # also when something swallowed it (a __del__)
        _exit(
            "interrupted; run the same command again to resume from the newest "
            f"checkpoint in {os.path.join(_WORKDIR.value, 'checkpoints')}",
            130,
        )


def _exit(error, status: int) -> None:
    if _TRACEBACK.value and isinstance(error, BaseException):
        raise error
    print(f"error: {error}", file=sys.stderr)
    sys.exit(status)


def _device_ids(values: list[str] | None) -> list[int] | None:
    if not values:
        return None
    if not all(v.strip().isdigit() for v in values):
        raise ValueError(
            f"--local_device_ids {','.join(values)!r} invalid; expected GPU "
            "indices, e.g. 0,1,2,3"
        )
    return [int(v) for v in values]


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
