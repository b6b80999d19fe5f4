"""Runs `recipes/pretrain.py` with its arguments, pausing inside one write if asked.

For the kill test (`test_crash_safety.py`), which must kill the recipe at
moments too short to hit by timing. CRASH_PAUSE names a write and which of
this process's writes of that kind to stop in; on reaching it the harness
creates the file CRASH_MARKER and sleeps until it is killed:

    CRASH_PAUSE=checkpoint-states:N   in the N-th checkpoint save: the weights
                                      are in the temporary file, the random
                                      states not yet
    CRASH_PAUSE=checkpoint-replace:N  the N-th checkpoint complete in its
                                      temporary file, not yet moved into place
    CRASH_PAUSE=preset-build:N        the N-th preset half-written in its
                                      staging folder

    python tests/crash_harness.py --quick --steps 10 --output runs/x
"""

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "recipes")]

import pretrain  # noqa: E402
from keras_tipsv2.convert import preset  # noqa: E402
from keras_tipsv2.training import resumable_fit  # noqa: E402
from keras_tipsv2.utils import atomic_files  # noqa: E402


def pause_in(module, name, ordinal, marker, when=lambda *args: True):
    """Wraps `module.name` so its `ordinal`-th matching call stops the process
    before doing its work."""
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
        is_checkpoint = lambda path: path.endswith(resumable_fit.CHECKPOINT_FILE)  # noqa: E731
        pause_in(atomic_files, "_sync_file", ordinal, marker, when=is_checkpoint)
    elif kind == "preset-build":
        # Called after the backbone is saved into the staging folder.
        pause_in(preset, "_save_preprocessing", ordinal, marker)
    else:
        raise SystemExit(f"Unknown CRASH_PAUSE {spec!r}.")


if __name__ == "__main__":
    if os.environ.get("CRASH_PAUSE"):
        install_pause(os.environ["CRASH_PAUSE"], os.environ["CRASH_MARKER"])
    pretrain.main(sys.argv[1:])
