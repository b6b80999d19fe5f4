"""A pretraining run killed five times ends with the weights of an uninterrupted one.

The recipe runs in real subprocesses (`crash_harness.py`), each killed with
SIGKILL to its process group: at a random moment of its start, inside a
checkpoint write (weights written, random states not yet), at a random
moment of training, with a complete checkpoint not yet moved into place,
and with the final preset half-written. A last run completes. Its
checkpoint and preset must equal those of a run never killed, the run
folder must hold no temporaries and its CSV log one row per epoch.
"""

import csv
import os
import random
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARNESS = os.path.join(ROOT, "tests", "crash_harness.py")
STEPS = 10  # --quick: 5 epochs of 2 steps
SEED = 28  # of the random kill moments

pytestmark = pytest.mark.skipif(os.name != "posix", reason="kills process groups")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A ShapesWorld vocabulary shared by every run (not retrained per process)."""
    from keras_tipsv2.shapes import ShapesWorld
    from keras_tipsv2.shapes.tokenizer import train_shapes_tokenizer

    path = tmp_path_factory.mktemp("tokenizer") / "shapes.model"
    path.write_bytes(train_shapes_tokenizer(ShapesWorld(image_size=32), num_samples=100, vocab_size=128))
    return str(path)


class Runs:
    """Starts the harness on one run folder and kills it."""

    def __init__(self, root, tokenizer):
        self.root = root
        self.env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
        # JAX compiles the same train step in every process: a shared
        # persistent cache keeps the restarts short (same executables).
        cache = str(root / "jax_cache")
        self.env.update(
            JAX_COMPILATION_CACHE_DIR=cache,
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        )
        self.tokenizer = tokenizer
        self.count = 0

    def start(self, output, pause=None):
        self.count += 1
        env = dict(self.env)
        marker = str(self.root / f"paused-{self.count}")
        if pause:
            env.update(CRASH_PAUSE=pause, CRASH_MARKER=marker)
        flags = [
            "--quick", "--steps", str(STEPS), "--checkpoint-every", "1", "--no-eval",
            "--verbose", "0", "--tokenizer", self.tokenizer, "--output", str(output),
        ]  # fmt: skip
        log = open(self.root / f"log-{self.count}.txt", "w")
        process = subprocess.Popen(
            [sys.executable, HARNESS, *flags], env=env, cwd=str(self.root),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        process.marker, process.log = marker, log.name
        return process

    @staticmethod
    def kill(process):
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def wait_for(self, process, condition, timeout=600):
        deadline = time.monotonic() + timeout
        while not condition():
            if process.poll() is not None:
                raise AssertionError(f"the run ended (exit {process.returncode}) " + self.tail(process))
            if time.monotonic() > deadline:
                self.kill(process)
                raise AssertionError("timed out " + self.tail(process))
            time.sleep(0.02)

    def complete(self, process, timeout=600):
        assert process.wait(timeout) == 0, self.tail(process)

    @staticmethod
    def tail(process):
        with open(process.log) as f:
            return "; log: " + f.read()[-3000:]


def modified(path):
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return None


def datasets(path):
    """{name: array} of every dataset in an h5 file."""
    found = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: found.update({name: item[()]}) if isinstance(item, h5py.Dataset) else None)
    return found


def max_difference(a, b):
    assert sorted(a) == sorted(b)
    return max(
        float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)), initial=0))
        for k in a
    )


@pytest.fixture(scope="module")
def killed_and_straight(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("crash")
    runs = Runs(root, tokenizer)
    rng = random.Random(SEED)
    straight, killed = root / "straight", root / "killed"
    runs.complete(runs.start(straight))
    checkpoint = killed / "checkpoint" / "latest.weights.h5"
    kills = []

    # 1. A random moment of the start (imports, model building, first steps).
    process = runs.start(killed)
    time.sleep(rng.uniform(0.5, 4.0))
    runs.kill(process)
    kills.append("start")
    # 2. Inside a checkpoint write: weights in the temporary, states not yet.
    process = runs.start(killed, pause=f"checkpoint-states:{rng.randint(1, 2)}")
    runs.wait_for(process, lambda: os.path.exists(process.marker))
    runs.kill(process)
    kills.append("checkpoint write")
    # 3. A random moment of training, after this process's first checkpoint.
    before = modified(checkpoint)
    process = runs.start(killed)
    runs.wait_for(process, lambda: modified(checkpoint) != before)
    time.sleep(rng.uniform(0.0, 0.5))
    runs.kill(process)
    kills.append("training")
    # 4. A complete checkpoint not yet moved into place.
    process = runs.start(killed, pause="checkpoint-replace:1")
    runs.wait_for(process, lambda: os.path.exists(process.marker))
    runs.kill(process)
    kills.append("checkpoint replace")
    # 5. The final preset half-written.
    process = runs.start(killed, pause="preset-build:1")
    runs.wait_for(process, lambda: os.path.exists(process.marker))
    runs.kill(process)
    kills.append("final export")
    runs.complete(runs.start(killed))
    return {"straight": straight, "killed": killed, "kills": kills}


def test_the_killed_run_ends_with_the_uninterrupted_checkpoint(killed_and_straight):
    assert len(killed_and_straight["kills"]) == 5
    a, b = (
        datasets(killed_and_straight[name] / "checkpoint" / "latest.weights.h5")
        for name in ("straight", "killed")
    )
    assert max_difference(a, b) <= 1e-6


def test_the_killed_run_exports_the_uninterrupted_preset(killed_and_straight):
    a, b = (
        datasets(killed_and_straight[name] / "preset" / "model.weights.h5")
        for name in ("straight", "killed")
    )
    assert max_difference(a, b) <= 1e-6


def test_the_killed_run_leaves_no_temporaries_and_one_log_row_per_epoch(killed_and_straight):
    folder = killed_and_straight["killed"]
    for root, folders, files in os.walk(folder):
        for name in folders + files:
            assert not name.startswith((".tmp-", ".old-")), os.path.join(root, name)
    with open(folder / "log.csv", newline="") as f:
        epochs = [int(row["epoch"]) for row in csv.DictReader(f)]
    assert epochs == list(range(STEPS // 2))
