"""Joining a multi-process (multi-host) run before JAX starts its backends.

Every process runs the same command. After `initialize`, `jax.devices()` lists
the devices of every process and the pmapped step reduces over all of them;
`jax.process_index()` picks the process's shard of the data (`byol.data`) and
makes process 0 the only one that prints, logs and writes results (orbax
coordinates the checkpoint writes).
"""

from __future__ import annotations

import importlib.util
import os

import jax


def _launched_as_several_processes() -> bool:
    """Whether a launcher JAX knows started this command several times."""
    for count in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):  # srun, mpirun
        if int(os.environ.get(count, "1") or 1) > 1:
            return True
    # A Cloud TPU VM: JAX asks the TPU metadata for the pod slice's hosts.
    return importlib.util.find_spec("libtpu") is not None


def local_process_count() -> int:
    """How many processes a launcher started on this host (1 when unknown)."""
    env = os.environ
    for name in ("SLURM_NTASKS_PER_NODE", "OMPI_COMM_WORLD_LOCAL_SIZE"):
        # SLURM writes e.g. "8" or "8(x4)" (the same on 4 nodes).
        value = env.get(name, "").split("(")[0].split(",")[0]
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Connects this process to the others of its run, if it is one of several.

    Explicit arguments win; then ``$JAX_COORDINATOR_ADDRESS``,
    ``$JAX_NUM_PROCESSES`` and ``$JAX_PROCESS_ID``; whatever is still missing
    JAX detects under SLURM (``srun`` with several tasks), Open MPI
    (``mpirun``) and on Cloud TPU VMs. Without any of these the process runs
    alone and nothing is initialised. On CPUs the processes' collectives go
    through gloo (TCP).

    Must run before anything starts JAX's backends (`jax.devices()`, any
    computation).

    Args:
        coordinator_address: ``host:port`` of process 0, reachable by all.
        num_processes: how many processes the run has.
        process_id: this process, in ``[0, num_processes)``.

    Returns:
        Whether `jax.distributed.initialize` was called.

    Raises:
        ValueError: what is missing cannot be detected, or does not fit.

    Example:
        >>> initialize("10.0.0.1:1234", num_processes=2, process_id=0)  # doctest: +SKIP
        True
    """
    env = os.environ
    coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = int(env["JAX_PROCESS_ID"])
    given = (coordinator_address, num_processes, process_id)
    if all(x is None for x in given) and not _launched_as_several_processes():
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )
    return True
