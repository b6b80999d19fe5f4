"""Data parallelism: two data-parallel train steps equal two steps on one
device with the same global batches, on every backend.

The backend's devices are fixed when it starts, so each check runs
tests/data_parallel_worker.py in fresh processes: JAX on 4 virtual CPU
devices (XLA_FLAGS), TensorFlow's MirroredStrategy on 2 logical CPU
devices, torch as 2 torchrun processes on gloo.
"""

import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "data_parallel_worker.py")
CASES = ("pretrainer", "distiller")
REPLICAS = {"jax": 4, "tensorflow": 2, "torch": 2}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_command(backend):
    cases = ",".join(CASES)
    if backend == "torch":
        return [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
            "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(free_port()), WORKER, cases,
        ]  # fmt: skip
    if backend == "tensorflow":
        return [sys.executable, WORKER, cases, "2"]
    return [sys.executable, WORKER, cases]


@pytest.fixture(scope="module")
def results():
    backend = keras.backend.backend()
    env = dict(os.environ, KERAS_BACKEND=backend, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    if backend == "jax":
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    done = subprocess.run(
        worker_command(backend), cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_data_parallel_run_spans_the_expected_replicas(results):
    assert results["num_replicas"] == REPLICAS[keras.backend.backend()]


@pytest.mark.parametrize("case", CASES)
def test_data_parallel_steps_log_the_single_device_losses(results, case):
    single, parallel = results[case]["single"]["logs"], results[case]["data_parallel"]["logs"]
    assert len(single) == len(parallel) == 2
    for step, (expected, got) in enumerate(zip(single, parallel)):
        for name, value in expected.items():
            # With each replica's own negatives only, the contrastive loss
            # of TensorFlow's first step was 1.70 instead of 2.49.
            assert abs(got[name] - value) <= 1e-5 * max(1.0, abs(value)), (step, name)


@pytest.mark.parametrize("case", CASES)
def test_data_parallel_steps_give_the_single_device_weights(results, case):
    single = results[case]["single"]["weights"]
    parallel = results[case]["data_parallel"]["weights"]
    assert set(single) == set(parallel)
    # Plain SGD at 0.01: a gradient off by the replica count, or from the
    # local batch only, moves weights by far more than the tolerance.
    for path, value in single.items():
        np.testing.assert_allclose(parallel[path], value, rtol=1e-5, atol=1e-5, err_msg=path)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="keras.distribution is JAX-only")
def test_model_parallel_layout_shards_attention_and_mlp_on_the_model_axis(results):
    specs = results["model_parallel_specs"]
    assert len(specs) == 3 * 4  # qkv, proj, fc1 in 2 + 2 blocks
    for path, spec in specs.items():
        expected = ["model", None] if path.endswith("proj/kernel") else [None, "model"]
        assert spec == expected, path


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.distribute strategies")
def test_tensorflow_data_parallel_takes_the_strategy_it_is_given():
    import tensorflow as tf

    from keras_tipsv2.training.distribution import data_parallel

    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    setup = data_parallel(strategy=strategy)
    assert (setup.strategy, setup.num_replicas) == (strategy, 1)


@pytest.mark.skipif(keras.backend.backend() == "tensorflow", reason="a strategy is valid there")
def test_a_strategy_off_tensorflow_is_a_clear_error():
    from keras_tipsv2.training.distribution import data_parallel

    with pytest.raises(ValueError, match="tf.distribute strategy, for TensorFlow"):
        data_parallel(strategy=object())
