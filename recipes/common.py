"""What the training recipes (`pretrain.py`, `distill.py`) share.

Data-source flags and selection, the run folder (default names, `--fresh`,
refusing a folder made by other settings), logging callbacks and data-skip
reports, tokenizer glue, time budgets and atomic results and preset export.
The crash-safe training itself is the library's
`keras_tipsv2.training.resumable_fit`.
"""

import contextlib
import importlib.util
import os
import time

import keras

from keras_tipsv2.training.resumable_fit import CHECKPOINT_FILE
from keras_tipsv2.training.resumable_fit import IncompatibleRunError
from keras_tipsv2.training.resumable_fit import ResumableCSVLogger
from keras_tipsv2.utils import atomic_files

# Flags that do not change what a run trains: a folder may be resumed with
# other values of these.
BOOKKEEPING_FLAGS = (
    "output", "fresh", "checkpoint_every", "verbose", "eval_images", "no_eval",
    "workers", "data_parallel", "model_parallel",
)  # fmt: skip


# --- Data sources ------------------------------------------------------------


def add_data_arguments(parser):
    """The data flags every recipe shares: --manifest / --coco (+
    --coco-images) / --tfrecords, else ShapesWorld; --tokenizer."""
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--manifest", help=".jsonl / .csv manifest of image paths and caption fields")
    data.add_argument("--coco", help="COCO captions JSON (needs --coco-images)")
    data.add_argument("--tfrecords", help="TFRecord file pattern")
    parser.add_argument("--coco-images", help="image folder of --coco")
    parser.add_argument("--tokenizer", help="SentencePiece .model file")


def check_data_arguments(parser, args):
    if args.coco and not args.coco_images:
        parser.error("--coco needs --coco-images")


def uses_shapes(args):
    """Whether no data flag was given, so the recipe trains on ShapesWorld."""
    return not (args.manifest or args.coco or args.tfrecords)


def raw_source(args, world, num_samples):
    """Raw examples: the user's data, or `num_samples` of the ShapesWorld
    `world` rendered once into memory."""
    from keras_tipsv2.data import coco_examples
    from keras_tipsv2.shapes import shapes_examples

    if args.manifest:
        return args.manifest
    if args.tfrecords:
        return args.tfrecords
    if args.coco:
        return coco_examples(args.coco, args.coco_images)
    return shapes_examples(world, num_samples=num_samples).cache()


def skip_counter():
    """A `SkipCounter` for the recipe's tf.data pipelines."""
    from keras_tipsv2.data import SkipCounter

    return SkipCounter()


class SkipReport(keras.callbacks.Callback):
    """Prints the examples the data pipeline dropped, at the end of each epoch.

    Silent while nothing has been dropped. Counts are those read by this
    process (a resumed run counts from its restart).
    """

    def __init__(self, counter):
        super().__init__()
        self.counter = counter
        self._reported = 0

    def on_epoch_end(self, epoch, logs=None):
        totals = self.counter.totals()
        if totals["total"]:
            print(
                f"Epoch {epoch + 1}: {totals['total'] - self._reported} examples "
                f"skipped ({totals['total']} so far: {totals['corrupt_images']} "
                f"unreadable or corrupt images, {totals['missing_captions']} missing captions)"
            )
        self._reported = totals["total"]


def skip_totals(counter):
    """The counts saved in results.json: the counter's totals, or zeros for
    the Python pipeline, which renders every example and drops none."""
    if counter is None:
        return {"corrupt_images": 0, "missing_captions": 0, "total": 0, "first_reasons": []}
    return counter.totals()


@contextlib.contextmanager
def data_errors(counter):
    """Re-raises a data-source stop as the counter's own one-paragraph error
    instead of the TensorFlow iterator error that wraps it."""
    try:
        yield
    except Exception:
        if counter is not None and counter.error is not None:
            raise counter.error from None
        raise


# --- The run folder ----------------------------------------------------------


def default_output(name, quick):
    """runs/NAME, or runs/NAME_quick for --quick, so a smoke run never meets
    the folder of a real run."""
    return os.path.join("runs", f"{name}_quick" if quick else name)


def start_run_folder(output, fresh):
    """The checkpoint folder of `output`; --fresh first deletes it (and the
    TensorBoard logs) so that a kill during the delete leaves it whole or gone."""
    backup_dir = os.path.join(output, "checkpoint")
    for folder in (backup_dir, os.path.join(output, "tensorboard")):
        atomic_files.recover(folder)
        if fresh:
            atomic_files.remove_directory(folder)
    return backup_dir


def run_settings(args, config):
    """What a run trains, stored with its plan and compared on resume: the
    config and every flag except bookkeeping ones, existing paths made absolute."""

    def normalised(value):
        if isinstance(value, str) and os.path.exists(value):
            return os.path.abspath(value)
        return value

    flags = {
        key: normalised(value)
        for key, value in sorted(vars(args).items())
        if key not in BOOKKEEPING_FLAGS
    }
    return {"config": config, "flags": flags}


@contextlib.contextmanager
def refusing_other_runs(output):
    """Turns an `IncompatibleRunError` into a one-line exit naming the way out."""
    try:
        yield
    except IncompatibleRunError as error:
        raise SystemExit(
            f"{error}. Resume it with the flags that made it, pass --fresh to "
            f"start over in {output}, or choose another --output."
        ) from None


def init_sources(init_from):
    """(preset, checkpoint) that `--init-from` names.

    A preset (name or folder) gives the backbone and tokenizer; the heads
    start fresh (checkpoint is None). The folder of a finished pretrain run
    (it holds `preset/` and `checkpoint/`) gives its preset and its last
    checkpoint, so the DINO/iBOT heads, their EMA teacher and the centres
    continue too.
    """
    run_preset = os.path.join(init_from, "preset")
    if not os.path.isdir(run_preset):
        return init_from, None
    weights = os.path.join(init_from, "checkpoint", CHECKPOINT_FILE)
    if not os.path.exists(weights):
        raise FileNotFoundError(
            f"--init-from {init_from}: a run folder with a preset but no "
            f"checkpoint/{CHECKPOINT_FILE}; pass {run_preset} to start new heads."
        )
    return run_preset, weights


# --- Time budgets --------------------------------------------------------------


def steps_for_budget(seconds_per_step, minutes, steps_per_epoch):
    """Whole epochs that fit in `minutes` at `seconds_per_step` (at least one)."""
    steps = minutes * 60.0 / max(seconds_per_step, 1e-6)
    return max(1, int(steps // steps_per_epoch))


def measured_seconds_per_step(model, batch, steps=3):
    """Seconds per train step on `batch`, after one warm-up (compilation) step.

    Trains the model on those steps: call it on a throw-away copy.
    """
    # A batch drawn from tf.data holds TensorFlow tensors; JAX and torch
    # train steps take numpy.
    batch = keras.tree.map_structure(
        lambda t: t.numpy() if hasattr(t, "numpy") else t, batch
    )
    model.train_on_batch(batch)
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(batch)
    return (time.perf_counter() - start) / steps


# --- Logging and results -------------------------------------------------------


def logging_callbacks(output):
    """A CSV log with one row per epoch across resumes and, if installed,
    TensorBoard (whose event files a kill can only cut short, not corrupt)."""
    callbacks = [ResumableCSVLogger(os.path.join(output, "log.csv"))]
    # Keras' TensorBoard callback writes its summaries with TensorFlow.
    if not all(importlib.util.find_spec(m) for m in ("tensorboard", "tensorflow")):
        print("TensorBoard / TensorFlow is not installed: writing the CSV log only.")
    else:
        callbacks.append(
            keras.callbacks.TensorBoard(os.path.join(output, "tensorboard"), update_freq=10)
        )
    return callbacks


def final_logs(result):
    """The last epoch's logs of a `fit_resumable` result ({} if none ran)."""
    for history in reversed(result["histories"]):
        if history.history:
            return {k: float(v[-1]) for k, v in history.history.items()}
    return {}


def write_results(output, results):
    """Writes OUTPUT/results.json atomically; returns its path."""
    return atomic_files.write_json(os.path.join(output, "results.json"), results)


# --- Tokenizer and preset ------------------------------------------------------


def proto_vocabulary_size(proto):
    """Number of pieces of a SentencePiece model given as bytes."""
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_proto=proto).get_piece_size()


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def preset_tokenizer_proto(preset):
    """The SentencePiece model bytes of a preset's tokenizer."""
    from keras_tipsv2.models.tipsv2_tokenizer import TIPSv2Tokenizer

    proto = TIPSv2Tokenizer.from_preset(preset).proto
    if isinstance(proto, str):
        return read_bytes(proto)
    return bytes(proto)


def export_preset(backbone, output, tokenizer_proto, image_size):
    """Writes backbone + tokenizer + image converter (square `image_size`) to
    the preset folder `output`, replacing it atomically (see `write_preset`)."""
    from keras_tipsv2.convert.preset import write_preset

    return write_preset(
        backbone, output, tokenizer_proto, image_size=image_size, overwrite=True
    )
