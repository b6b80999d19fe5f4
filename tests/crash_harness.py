"""Runs `recipes/pretrain.py` in forked processes that a test kills, for `test_crash_safety.py`.

Importing Keras, TensorFlow and a backend takes most of a tiny run's time,
and the kill test starts seven runs. So this server imports the recipe
once, then forks one process per request, which puts itself in a process
group of its own and runs `pretrain.main(argv)` exactly as
`python recipes/pretrain.py ARGV` would. The test kills that group with
SIGKILL.

Protocol: one JSON request a line on stdin, {"argv": [...], "log": path,
"pause": spec or null, "marker": path}; the server answers {"started": pid}
at once and {"exited": pid, "status": code} when that process has ended
(-9 when killed), then reads the next request.

A pause stops the run inside one write, a moment too short to hit by timing:
on reaching it, the run creates the file `marker` and sleeps until killed.

    checkpoint-states:N   in its N-th checkpoint save: the weights are in
                          the temporary file, the random states not yet
    checkpoint-replace:N  its N-th checkpoint complete in the temporary
                          file, not yet moved into place
    preset-build:N        its N-th preset half-written in the staging folder
"""

import json
import os
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "recipes")]

import pretrain  # noqa: E402
from keras_tipsv2.convert import preset  # noqa: E402
from keras_tipsv2.training import resumable_fit  # noqa: E402
from keras_tipsv2.utils import atomic_files  # noqa: E402


def pause_in(module, name, ordinal, marker, when=lambda *args: True):
    """Wraps `module.name` so that its `ordinal`-th call for which `when`
    holds stops the process before doing its work."""
    original = getattr(module, name)
    calls = []

    def wrapped(*args, **kwargs):
        if when(*args):
            calls.append(args)
            if len(calls) == ordinal:
                open(marker, "w").close()
                while True:
                    time.sleep(60)
        return original(*args, **kwargs)

    setattr(module, name, wrapped)


def install_pause(spec, marker):
    kind, _, ordinal = spec.partition(":")
    ordinal = int(ordinal or 1)
    if kind == "checkpoint-states":
        pause_in(resumable_fit, "_write_random_states", ordinal, marker)
    elif kind == "checkpoint-replace":
        # `_sync_file` runs on the complete temporary just before `os.replace`.
        def is_checkpoint(path):
            return path.endswith(resumable_fit.CHECKPOINT_FILE)

        pause_in(atomic_files, "_sync_file", ordinal, marker, when=is_checkpoint)
    elif kind == "preset-build":
        # Called once the backbone is saved into the staging folder.
        pause_in(preset, "_save_preprocessing", ordinal, marker)
    else:
        raise ValueError(f"Unknown pause {spec!r}.")


def run(request):
    """The forked process: a process group of its own, output to the log."""
    os.setsid()
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    status = 0
    try:
        if request.get("pause"):
            install_pause(request["pause"], request["marker"])
        pretrain.main(request["argv"])
    except BaseException:
        traceback.print_exc()
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def answer(message):
    print(json.dumps(message), flush=True)


def serve():
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            run(request)
        answer({"started": pid})
        _, status = os.waitpid(pid, 0)
        answer({"exited": pid, "status": os.waitstatus_to_exitcode(status)})


if __name__ == "__main__":
    serve()
