"""Launch modes: what reaches `jax.distributed.initialize` under each launcher.

Fake SLURM / Open MPI / TPU environments on a CPU; `jax.distributed.initialize`
is recorded, not called, and what it would detect itself is resolved with
JAX's own cluster detection, so each case shows the process id, process
count, coordinator and local GPUs a real launch would get.
"""

import pytest
from jax._src import clusters

from byol import distributed

LAUNCH_VARIABLES = (
    "SLURM_JOB_ID SLURM_STEP_NODELIST SLURM_NTASKS SLURM_NTASKS_PER_NODE "
    "SLURM_PROCID SLURM_LOCALID SLURM_GPUS_PER_TASK OMPI_MCA_orte_hnp_uri "
    "OMPI_COMM_WORLD_SIZE OMPI_COMM_WORLD_RANK OMPI_COMM_WORLD_LOCAL_RANK "
    "OMPI_COMM_WORLD_LOCAL_SIZE JAX_COORDINATOR_ADDRESS JAX_NUM_PROCESSES "
    "JAX_PROCESS_ID JAX_LOCAL_DEVICE_IDS CUDA_VISIBLE_DEVICES"
).split()
SLURM_2_NODES_X_8 = dict(
    SLURM_JOB_ID="4242",
    SLURM_STEP_NODELIST="gpu[017-018]",
    SLURM_NTASKS="16",
    SLURM_NTASKS_PER_NODE="8(x2)",
    SLURM_PROCID="11",
    SLURM_LOCALID="3",
)
SLURM_PORT = 4242 % 2**12 + 65535 - 2**12 + 1


@pytest.fixture
def launch(monkeypatch):
    """Sets a launcher's environment; returns what `initialize` hands JAX."""
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(distributed, "_on_tpu_vm", lambda: False)
    calls = []
    monkeypatch.setattr(
        distributed.jax.distributed, "initialize", lambda **kw: calls.append(kw)
    )
    monkeypatch.setattr(distributed.jax.config, "update", lambda *a: None)

    def run(env, *args, tpu=False):
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(distributed, "_on_tpu_vm", lambda: tpu)
        if not distributed.initialize(*args):
            return None
        (given,) = calls
        calls.clear()
        if tpu:  # JAX asks the TPU metadata server: nothing to resolve offline
            return given, None
        resolved = clusters.ClusterEnv.auto_detect_unset_distributed_params(
            *given.values(), None, 300
        )
        names = ("coordinator", "processes", "process_id", "local_device_ids")
        return given, dict(zip(names, resolved, strict=True))

    return run


def test_alone_nothing_is_initialised(launch):
    assert launch({}) is None
    assert launch({"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}) is None


def test_slurm_one_process_per_gpu_gets_its_own_gpu(launch):
    # srun --nodes=2 --ntasks-per-node=8 --gpus-per-task=1: SLURM binds one GPU.
    env = dict(SLURM_2_NODES_X_8, SLURM_GPUS_PER_TASK="1", CUDA_VISIBLE_DEVICES="3")
    given, resolved = launch(env)
    assert given["local_device_ids"] == [0]  # the only GPU it sees
    assert resolved == dict(
        coordinator=f"gpu017:{SLURM_PORT}",
        processes=16,
        process_id=11,
        local_device_ids=[0],
    )


def test_slurm_processes_sharing_a_node_s_gpus_take_one_each(launch):
    # srun --ntasks-per-node=8 --gpus-per-node=8: every task sees all eight.
    env = dict(SLURM_2_NODES_X_8, CUDA_VISIBLE_DEVICES="0,1,2,3,4,5,6,7")
    _, resolved = launch(env)
    assert resolved["local_device_ids"] == [3]
    assert (resolved["processes"], resolved["process_id"]) == (16, 11)


def test_slurm_one_process_per_node_holds_every_gpu(launch):
    # srun --ntasks-per-node=1 --gpus-per-node=8 (the launch that used 1 GPU
    # of 8 when JAX defaulted to the local rank's GPU).
    env = dict(
        SLURM_2_NODES_X_8,
        SLURM_NTASKS="2",
        SLURM_NTASKS_PER_NODE="1(x2)",
        SLURM_PROCID="1",
        SLURM_LOCALID="0",
        CUDA_VISIBLE_DEVICES="0,1,2,3,4,5,6,7",
    )
    given, resolved = launch(env)
    assert given["local_device_ids"] == resolved["local_device_ids"] == list(range(8))
    assert (resolved["processes"], resolved["process_id"]) == (2, 1)
    # Asked for explicitly, by flag or environment.
    given, _ = launch({}, None, None, None, [0, 1, 2, 3])
    assert given["local_device_ids"] == [0, 1, 2, 3]
    given, _ = launch({"JAX_LOCAL_DEVICE_IDS": "4,5,6,7"})
    assert given["local_device_ids"] == [4, 5, 6, 7]


def test_open_mpi_one_process_per_gpu(launch):
    env = dict(
        OMPI_MCA_orte_hnp_uri="1531576320.0;tcp://10.1.2.3:45678",
        OMPI_COMM_WORLD_SIZE="8",
        OMPI_COMM_WORLD_RANK="5",
        OMPI_COMM_WORLD_LOCAL_RANK="5",
        OMPI_COMM_WORLD_LOCAL_SIZE="8",
        CUDA_VISIBLE_DEVICES="0,1,2,3,4,5,6,7",
    )
    given, resolved = launch(env)
    assert given["local_device_ids"] == [5]
    assert resolved["processes"] == 8 and resolved["process_id"] == 5
    assert resolved["coordinator"].startswith("10.1.2.3:")


def test_tpu_vm_keeps_jax_s_detection(launch):
    given, _ = launch({}, tpu=True)
    assert given == dict(
        coordinator_address=None,
        num_processes=None,
        process_id=None,
        local_device_ids=None,
    )


def test_explicit_coordinator_and_environment(launch):
    given, resolved = launch({}, "host0:1234", 2, 1)
    assert resolved == dict(
        coordinator="host0:1234", processes=2, process_id=1, local_device_ids=None
    )
    env = dict(JAX_COORDINATOR_ADDRESS="h:1", JAX_NUM_PROCESSES="3", JAX_PROCESS_ID="2")
    given, _ = launch(env)
    assert (given["num_processes"], given["process_id"]) == (3, 2)


def test_gpus_that_cannot_be_shared_evenly_are_an_error(launch):
    env = dict(
        SLURM_2_NODES_X_8, SLURM_NTASKS_PER_NODE="3", CUDA_VISIBLE_DEVICES="0,1,2,3"
    )
    with pytest.raises(ValueError, match="4 GPUs cannot be shared by the 3 processes"):
        launch(env)


def test_the_data_pipeline_uses_the_process_s_share_of_the_cores(monkeypatch):
    from byol.data import pipeline  # noqa: PLC0415

    monkeypatch.setattr(pipeline.os, "sched_getaffinity", lambda _: set(range(64)))
    monkeypatch.setattr(pipeline.os, "cpu_count", lambda: 64)
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "8")
    assert pipeline.default_num_threads() == 7  # 64 / 8 processes, less one
    # Bound by the launcher to its own cores: those.
    monkeypatch.setattr(pipeline.os, "sched_getaffinity", lambda _: set(range(10)))
    assert pipeline.default_num_threads() == 9
