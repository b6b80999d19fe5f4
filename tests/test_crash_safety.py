"""A pretraining run killed five times ends with the weights of an uninterrupted one.

The recipe runs in real processes (forked by `crash_harness.py` after one
import of Keras), each killed with SIGKILL to its process group: at a random moment of its start, inside a
checkpoint write (weights written, random states not yet), at a random
moment of training, with a complete checkpoint not yet moved into place,
and with the final preset half-written. A last run completes. Its
checkpoint and preset must equal those of a run never killed, the run
folder must hold no temporaries and its CSV log one row per epoch.
"""

import csv
import json
import os
import random
import select
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
    """Starts runs of the recipe on `crash_harness.py`'s server and kills them."""

    def __init__(self, root, tokenizer):
        self.root, self.tokenizer, self.count = root, tokenizer, 0
        env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
        # JAX compiles the same train step in every run: a persistent cache
        # shared by the runs keeps the restarts short (same executables).
        env.update(
            JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        )
        self.server_log = open(root / "server.txt", "w")
        self.server = subprocess.Popen(
            [sys.executable, HARNESS], env=env, cwd=str(root),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.server_log,
        )  # fmt: skip
        self.buffer = b""

    def close(self):
        self.server.stdin.close()
        self.server.wait(60)
        self.server_log.close()

    def _message(self, timeout):
        """The server's next message, or None if none came within `timeout` s."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.server.stdout], [], [], left)[0]:
                return None
            chunk = os.read(self.server.stdout.fileno(), 4096)
            if not chunk:
                raise AssertionError(f"the harness server died; see {self.server_log.name}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def start(self, output, pause=None):
        self.count += 1
        run = Run(
            log=str(self.root / f"run-{self.count}.txt"),
            marker=str(self.root / f"paused-{self.count}"),
        )
        argv = [
            "--quick", "--steps", str(STEPS), "--checkpoint-every", "1", "--no-eval",
            "--verbose", "0", "--tokenizer", self.tokenizer, "--output", str(output),
        ]  # fmt: skip
        request = {"argv": argv, "log": run.log, "pause": pause, "marker": run.marker}
        self.server.stdin.write((json.dumps(request) + "\n").encode())
        self.server.stdin.flush()
        run.pid = self._message(60)["started"]
        return run

    def ended(self, run, timeout=0.0):
        """The run's exit status once it has ended, else None."""
        message = self._message(timeout)
        if message is not None:
            assert message["exited"] == run.pid
            run.status = message["status"]
        return run.status

    def kill(self, run):
        os.killpg(run.pid, signal.SIGKILL)
        assert self.ended(run, timeout=60) == -signal.SIGKILL, run.tail()

    def wait_for(self, run, condition, timeout=600):
        deadline = time.monotonic() + timeout
        while not condition():
            if self.ended(run, timeout=0.02) is not None:
                raise AssertionError(f"the run ended (exit {run.status}) before it was killed" + run.tail())
            assert time.monotonic() < deadline, "timed out" + run.tail()

    def complete(self, run, timeout=600):
        assert self.ended(run, timeout) == 0, run.tail()


class Run:
    def __init__(self, log, marker):
        self.log, self.marker, self.pid, self.status = log, marker, None, None

    def paused(self):
        return os.path.exists(self.marker)

    def tail(self):
        with open(self.log) as f:
            return "; its log ends: " + f.read()[-3000:]


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
    checkpoint = killed / "checkpoint" / "latest.weights.h5"
    kills = []
    try:
        runs.complete(runs.start(straight))
        # 1. A random moment of the start (building the model, first steps).
        run = runs.start(killed)
        time.sleep(rng.uniform(0.0, 3.0))
        runs.kill(run)
        kills.append("start")
        # 2. Inside a checkpoint write: weights in the temporary, states not yet.
        run = runs.start(killed, pause=f"checkpoint-states:{rng.randint(1, 2)}")
        runs.wait_for(run, run.paused)
        runs.kill(run)
        kills.append("checkpoint write")
        # 3. A random moment of training, after this run's first checkpoint.
        before = modified(checkpoint)
        run = runs.start(killed)
        runs.wait_for(run, lambda: modified(checkpoint) != before)
        time.sleep(rng.uniform(0.0, 0.5))
        runs.kill(run)
        kills.append("training")
        # 4. A complete checkpoint not yet moved into place.
        run = runs.start(killed, pause="checkpoint-replace:1")
        runs.wait_for(run, run.paused)
        runs.kill(run)
        kills.append("checkpoint replace")
        # 5. The final preset half-written.
        run = runs.start(killed, pause="preset-build:1")
        runs.wait_for(run, run.paused)
        runs.kill(run)
        kills.append("final export")
        runs.complete(runs.start(killed))
    finally:
        runs.close()
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
