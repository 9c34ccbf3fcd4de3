"""Joining a multi-process (multi-host) run before JAX starts its backends.

Every process runs the same command. After `initialize`, `jax.devices()` lists
the devices of every process and the pmapped step reduces over all of them;
`jax.process_index()` picks the process's shard of the data and makes process
0 the only one that prints, logs and writes results.

Which GPUs a process drives (``local_device_ids``):

* given (``--local_device_ids``, ``$JAX_LOCAL_DEVICE_IDS``): those, e.g. all
  eight of a node for one process per node;
* launched with a GPU set of its own (``srun --gpus-per-task``, or fewer
  visible GPUs than processes on the host): every GPU it sees;
* launched beside others that see the same GPUs (``srun --ntasks-per-node=8
  --gpus-per-node=8``, ``mpirun``): its share, ``G / processes`` of them, by
  local rank (one GPU each when there are as many processes as GPUs);
* alone, or on a TPU VM: every device (TPU: JAX's own detection).
"""

from __future__ import annotations

import importlib.util
import itertools
import os
from collections.abc import Sequence

import jax

# A process slow to reach the first collective (compiling, reading a big
# checkpoint) must not time the others out: gloo waits 30 s.
BARRIER_TIMEOUT_S = 1800
_BARRIERS = itertools.count()


def _env_int(*names: str) -> int | None:
    for name in names:
        value = os.environ.get(name, "").split("(")[0].split(",")[0]
        if value.isdigit():
            return int(value)
    return None


def _on_tpu_vm() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def local_process_count() -> int:
    """How many processes a launcher started on this host (1 when unknown)."""
    # SLURM writes e.g. "8" or "8(x4)" (the same on 4 nodes).
    count = _env_int("SLURM_NTASKS_PER_NODE", "OMPI_COMM_WORLD_LOCAL_SIZE")
    return count if count else 1


def _local_rank() -> int | None:
    return _env_int("SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK")


def _launched_as_several_processes() -> bool:
    """Whether a launcher JAX knows (srun, mpirun, a TPU pod) started several."""
    for count in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        if (_env_int(count) or 1) > 1:
            return True
    return _on_tpu_vm()


def visible_gpus() -> int | None:
    """GPUs this process may use, before JAX starts (None: unknown, or none)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    try:
        return len(os.listdir("/proc/driver/nvidia/gpus")) or None
    except OSError:
        return None


def local_device_ids(given: Sequence[int] | None = None) -> list[int] | None:
    """The local GPUs of this process (module docstring); None: every device.

    Raises:
        ValueError: the host's GPUs cannot be shared evenly by its processes.
    """
    if given:
        return [int(i) for i in given]
    if os.environ.get("JAX_LOCAL_DEVICE_IDS"):
        return [int(i) for i in os.environ["JAX_LOCAL_DEVICE_IDS"].split(",")]
    rank, gpus = _local_rank(), visible_gpus()
    if rank is None or gpus is None or _on_tpu_vm():
        return None
    processes = local_process_count()
    if os.environ.get("SLURM_GPUS_PER_TASK") or gpus < processes:
        return list(range(gpus))  # a GPU set of its own
    if gpus % processes:
        raise ValueError(
            f"{gpus} GPUs cannot be shared by the {processes} processes on this "
            "host; launch one process per GPU (srun --gpus-per-task=1) or pass "
            "--local_device_ids"
        )
    share = gpus // processes
    return list(range(rank * share, (rank + 1) * share))


def initialize_arguments(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    device_ids: Sequence[int] | None = None,
) -> dict | None:
    """What `initialize` passes to `jax.distributed.initialize`, or None (alone).

    Explicit arguments win, then ``$JAX_COORDINATOR_ADDRESS``,
    ``$JAX_NUM_PROCESSES``, ``$JAX_PROCESS_ID``; what is still missing JAX
    detects under SLURM, Open MPI and on Cloud TPU VMs.
    """
    env = os.environ
    coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = int(env["JAX_PROCESS_ID"])
    given = (coordinator_address, num_processes, process_id)
    launched = _launched_as_several_processes()
    if all(x is None for x in given) and not launched:
        return None
    if not launched and any(x is None for x in given):
        missing = [
            flag
            for flag, value in zip(
                ("--coordinator_address", "--num_processes", "--process_id"),
                given,
                strict=True,
            )
            if value is None
        ]
        raise ValueError(
            f"{', '.join(missing)} missing: outside SLURM, Open MPI and TPU pods "
            "a multi-process run names the coordinator (host:port of process 0), "
            "the process count and this process's id"
        )
    if num_processes is not None and process_id is not None:
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ValueError(
                f"--process_id {process_id} must be in [0, {num_processes}) "
                f"(--num_processes {num_processes})"
            )
    return dict(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=local_device_ids(device_ids),
    )


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    device_ids: Sequence[int] | None = None,
) -> bool:
    """Connects this process to the others of its run, if it is one of several.

    Must run before anything starts JAX's backends. On CPUs the collectives go
    through gloo (TCP), and each process compiles its own programs: with jax
    0.12.1 a program loaded from the persistent compilation cache
    (``JAX_COMPILATION_CACHE_DIR``) hangs in its first gloo collective, so a
    resumed run would never take a step. Returns whether
    `jax.distributed.initialize` ran.
    """
    arguments = initialize_arguments(
        coordinator_address, num_processes, process_id, device_ids
    )
    if arguments is None:
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**arguments)
    if jax.default_backend() == "cpu":
        jax.config.update("jax_enable_compilation_cache", False)
    return True


def barrier(name: str, timeout_s: int = BARRIER_TIMEOUT_S) -> None:
    """Waits (on the coordination service, not a collective) for every process.

    Every process passes the same barriers in the same order; each gets a
    unique name, as the service requires.
    """
    if jax.process_count() == 1:
        return
    from jax._src import distributed as state  # noqa: PLC0415 (no public barrier)

    unique = f"{name}_{next(_BARRIERS)}"
    state.global_state.client.wait_at_barrier(unique, timeout_in_ms=timeout_s * 1000)
