"""Smoke test of experiments.benchmark on a tiny synthetic config (no timings)."""

import math

import jax
import jax.numpy as jnp
import pytest

from configs import byol as byol_configs
from experiments import benchmark
from tests.fixtures import tiny_config


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    config = tiny_config(tmp_path_factory.mktemp("unused_data"))
    return benchmark.run_benchmark(
        config,
        steps=2,
        windows=2,
        warmup_steps=0,
        synthetic=True,
        matmul_size=64,
        pipeline_batches=2,
        # Compile time dominates; the figures need not be fast, only positive.
        compiler_options=dict(
            xla_backend_optimization_level=0, xla_llvm_disable_expensive_passes=True
        ),
    )


def _positive(x):
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def test_figures_are_positive(results):
    for value in (
        results["compile"]["trace_lower_s"],
        results["compile"]["xla_compile_s"],
        results["step"]["images_per_s"]["median"],
        results["step"]["seconds_per_step"],
        results["pipeline"]["prefetch"]["images_per_s"]["median"],
        results["pipeline"]["prefetch_over_step"],
        results["flops"]["per_step"],
        results["flops"]["achieved_per_s"],
        results["matmul"]["total"],
        results["matmul"]["single_device"],
        results["matmul_fraction"],
        results["memory"]["xla_buffer_bytes_per_device"],
    ):
        assert _positive(value), value
    assert len(results["step"]["images_per_s"]["all"]) == 2
    # Synthetic: no host pipeline; CPU devices report no memory statistics.
    assert results["pipeline"]["host"] is None
    assert results["memory"]["peak_bytes_per_device"] is None
    assert results["config"]["per_device_batch"] * jax.device_count() == 16


def test_table_names_every_figure(results):
    table = benchmark.format_table(results)
    for name in ("train step", "prefetch", "step / matmul", "XLA compile", "memory"):
        assert name in table
    assert "n/a (synthetic)" in table


def test_step_flops_of_a_known_matmul():
    n, devices = 32, jax.local_device_count()
    lowered = jax.pmap(jnp.matmul).lower(
        jnp.ones((devices, n, n)), jnp.ones((devices, n, n))
    )
    assert benchmark.step_flops(lowered.compile(), devices) == devices * 2 * n**3


def test_synthetic_batch_of_a_jpeg_dataset():
    config = byol_configs.get_config("epochs=300,norm=bn")
    config.training.batch_size = 4
    batch = benchmark.synthetic_batch(config, 2)
    assert set(batch) == {"view1", "view2", "labels"}
    assert batch["view1"].shape == (2, 2, 224, 224, 3)
    assert batch["labels"].max() < 1000
    with pytest.raises(ValueError, match="batch_size"):
        benchmark.synthetic_batch(config, 3)
