"""`recipes/pretrain.py --data-parallel` under torchrun: two processes on
gloo train what one process trains, and only rank 0 writes the run folder."""

import json
import os
import subprocess
import sys

import keras
import pytest

from tests.test_distribution import free_port

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="torchrun launches torch processes"
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "recipes", "pretrain.py")


def run(command, output, *flags):
    env = dict(os.environ, KERAS_BACKEND="torch", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    flags = [RECIPE, "--quick", "--no-eval", "--verbose", "0", "--output", str(output), *flags]
    done = subprocess.run(command + flags, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    with open(os.path.join(output, "results.json")) as f:
        return json.load(f)["train"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    torchrun = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
        "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()),
    ]  # fmt: skip
    return {
        "single": run([sys.executable], folder / "single"),
        "torchrun": run(torchrun, folder / "torchrun", "--data-parallel"),
        "folder": folder,
    }


def test_torchrun_run_trains_on_two_replicas_what_one_process_trains(runs):
    single, parallel = runs["single"], runs["torchrun"]
    assert (single["replicas"], parallel["replicas"]) == (1, 2)
    assert parallel["steps"] == single["steps"]
    for name, value in single["final_logs"].items():
        assert abs(parallel["final_logs"][name] - value) <= 1e-5 * max(1.0, abs(value)), name


def test_torchrun_run_writes_one_preset_checkpoint_and_log(runs):
    folder = runs["folder"] / "torchrun"
    assert sorted(os.listdir(folder / "checkpoint")) == sorted(
        os.listdir(runs["folder"] / "single" / "checkpoint")
    )
    assert os.path.exists(folder / "preset" / "config.json")
    with open(folder / "log.csv") as f:
        # A header and one row per epoch: rank 1 appended nothing.
        assert len(f.read().strip().splitlines()) == 1 + 2
