"""Pieces shared by the training recipes (`recipes/pretrain.py`, `recipes/distill.py`).

* A step-exact resumable `fit`: Keras' `BackupAndRestore` restores the
  weights (optimizer iterations, EMA teacher and centres included) and the
  epoch, but restarts that epoch at batch 0, so a run killed mid-epoch would
  train the restarted batches twice and end later than planned.
  `fit_resumable` restores first, reads the global step from
  `optimizer.iterations`, finishes the interrupted epoch with only its
  missing batches, then runs the remaining whole epochs: the run ends after
  exactly `epochs * steps_per_epoch` steps, on the same data.
* Data keyed by epoch: the batches of epoch e depend only on (seed, e), so
  a resumed run sees the batches it would have seen.
* The run's plan (steps per epoch, epochs, config) is stored beside the
  checkpoint, so a resumed run keeps the schedule of the run it resumes even
  when the plan came from a time budget.
* Data-source flags and selection, logging callbacks, tokenizer choice and
  atomic preset export.
"""

import json
import os
import time

import keras

PLAN_FILE = "plan.json"
# Where keras.callbacks.BackupAndRestore writes its weights in backup_dir.
CHECKPOINT_FILE = "latest.weights.h5"


# --- Resumable fit ---------------------------------------------------------


class ResumableBackupAndRestore(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` that resumes at the exact step, not at the epoch start.

    Restoring happens in `restore(model)`, called by `fit_resumable` before
    the data of the resumed epoch is built (that data starts at the restored
    step); `on_train_begin` therefore does not load again.

    Args:
        backup_dir: where the checkpoint and its metadata live.
        save_freq: save every this many batches (or "epoch").
        writes: False to restore only (the processes of a multi-process
            run other than the one that writes the checkpoint).
    """

    def __init__(self, backup_dir, save_freq="epoch", writes=True):
        super().__init__(backup_dir, save_freq=save_freq, delete_checkpoint=False)
        self.writes = writes

    def restore(self, model):
        """Loads the latest checkpoint into `model` if there is one; returns
        the global step (`optimizer.iterations`) training continues from."""
        self.set_model(model)
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        super().on_train_begin()
        # The parent hands the restored epoch to fit through this attribute,
        # which would override the `initial_epoch` fit_resumable passes.
        model._initial_epoch = None
        return int(keras.ops.convert_to_numpy(model.optimizer.iterations))

    def on_train_begin(self, logs=None):
        pass

    def _save_model(self):
        if not self.writes:
            return
        # JAX's fit keeps the training state outside the variables between
        # syncs: without one, a mid-epoch backup would hold the weights of
        # the epoch's start.
        if keras.backend.backend() == "jax":
            self.model.jax_state_sync()
        super()._save_model()

    def on_epoch_begin(self, epoch, logs=None):
        # A mid-epoch backup records the epoch it was taken in.
        self._current_epoch = epoch


def fit_resumable(
    model,
    epoch_dataset,
    epochs,
    steps_per_epoch,
    backup_dir,
    save_every=None,
    callbacks=(),
    verbose="auto",
    step_batches=None,
    writes=True,
):
    """`model.fit` for `epochs` x `steps_per_epoch` steps that survives being killed.

    Args:
        model: a compiled model.
        epoch_dataset: `epoch -> dataset` of at least `steps_per_epoch`
            batches, a pure function of the epoch (same epoch, same batches);
            a `tf.data.Dataset`. None when `step_batches` is given.
        epochs, steps_per_epoch: the fixed schedule.
        backup_dir: checkpoint folder (kept after training, so running a
            finished run again trains no further).
        save_every: checkpoint every this many steps; default once per epoch.
        callbacks: further callbacks (progress, CSV, TensorBoard ...).
        verbose: passed to `fit`.
        step_batches: instead of `epoch_dataset`, `(first_step, count) ->`
            any dataset `fit` takes (e.g. a `ShapesWorldBatches` view) whose
            batches are a pure function of the global step.
        writes: False on the processes of a multi-process run (torchrun,
            multi-host JAX) other than the chief: they restore the chief's
            checkpoint but never write it.

    Returns:
        {"start_step": step restored from (0 for a fresh run),
         "end_step": step after training, "histories": [History, ...]}.
    """
    backup = ResumableBackupAndRestore(
        backup_dir, save_freq=save_every or "epoch", writes=writes
    )
    start = backup.restore(model)
    total = epochs * steps_per_epoch
    if start > total:
        raise ValueError(
            f"The checkpoint in {backup_dir} is at step {start}, past this "
            f"run's {total} steps; use another output folder."
        )
    callbacks = [backup, *callbacks]
    histories = []

    def steps(first, count):
        # Global steps first .. first + count - 1 (whole epochs after the
        # first, which may start mid-epoch).
        if step_batches is not None:
            return step_batches(first, count)
        epoch, done = divmod(first, steps_per_epoch)
        last = epoch + -(-(done + count) // steps_per_epoch)
        dataset = concatenated_epochs(epoch_dataset, epoch, last, steps_per_epoch)
        return dataset.skip(done)

    epoch, done = divmod(start, steps_per_epoch)
    if done:
        # Finish the interrupted epoch with the batches it had not seen.
        histories.append(
            model.fit(
                steps(epoch * steps_per_epoch + done, steps_per_epoch - done),
                initial_epoch=epoch,
                epochs=epoch + 1,
                steps_per_epoch=steps_per_epoch - done,
                callbacks=callbacks,
                verbose=verbose,
            )
        )
        epoch += 1
    if epoch < epochs:
        histories.append(
            model.fit(
                steps(epoch * steps_per_epoch, (epochs - epoch) * steps_per_epoch),
                initial_epoch=epoch,
                epochs=epochs,
                steps_per_epoch=steps_per_epoch,
                callbacks=callbacks,
                verbose=verbose,
            )
        )
    end = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    return {"start_step": start, "end_step": end, "histories": histories}


def init_sources(init_from):
    """(preset, pretrainer_weights) that `--init-from` names.

    A preset (name or folder) gives the backbone and tokenizer; the heads
    start fresh (pretrainer_weights is None). The folder of a finished
    pretrain run (it holds `preset/` and `checkpoint/`) gives its preset and
    its last checkpoint, so the DINO/iBOT heads, their EMA teacher and the
    centres continue too.
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


def load_pretrainer_weights(model, path):
    """Loads a pretrain checkpoint into compiled `model` except its optimizer.

    The checkpoint holds the optimizer too (for exact resumes); a
    continuation starts a new schedule, so the optimizer's fresh state
    (step 0, zero moments) is put back after loading.
    """
    optimizer = model.optimizer
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    fresh = [keras.ops.convert_to_numpy(v) for v in optimizer.variables]
    try:
        model.load_weights(path)
    except ValueError as error:
        raise ValueError(
            f"The checkpoint {path} does not fit this pretrainer; continue it "
            f"with the --config and head settings of the run that wrote it. {error}"
        ) from error
    for variable, value in zip(optimizer.variables, fresh):
        variable.assign(value)


def concatenated_epochs(epoch_dataset, first, last, steps_per_epoch):
    """Epochs first .. last - 1 back to back, each cut to `steps_per_epoch`."""
    dataset = epoch_dataset(first).take(steps_per_epoch)
    for epoch in range(first + 1, last):
        dataset = dataset.concatenate(epoch_dataset(epoch).take(steps_per_epoch))
    return dataset


def epoch_seed(seed, epoch):
    """The data seed of one epoch: distinct per (seed, epoch), stable across runs."""
    return int(seed) * 100_003 + int(epoch)


# --- The run's plan ----------------------------------------------------------


def load_or_save_plan(directory, make_plan):
    """The plan stored in `directory` if a run was started there, else
    `make_plan()` (then saved). A resumed run thus keeps its original
    schedule, even one planned from a measured step time."""
    path = os.path.join(directory, PLAN_FILE)
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    plan = make_plan()
    os.makedirs(directory, exist_ok=True)
    with open(path, "w") as f:
        json.dump(plan, f, indent=2)
    return plan


def steps_for_budget(seconds_per_step, minutes, steps_per_epoch):
    """Whole epochs that fit in `minutes` at `seconds_per_step` (at least one)."""
    steps = minutes * 60.0 / max(seconds_per_step, 1e-6)
    return max(1, int(steps // steps_per_epoch))


def measured_seconds_per_step(model, batch, steps=3):
    """Seconds per train step on `batch`, after one warm-up (compilation) step.

    Trains the model on those steps: call it on a throw-away copy, or accept
    the few extra steps.
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


# --- Data sources, logging ----------------------------------------------------


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


def logging_callbacks(output):
    """CSV log (appended across resumes) and, if installed, TensorBoard."""
    import importlib.util

    callbacks = [keras.callbacks.CSVLogger(os.path.join(output, "log.csv"), append=True)]
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


# --- Tokenizer and preset --------------------------------------------------


def proto_vocabulary_size(proto):
    """Number of pieces of a SentencePiece model given as bytes."""
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_proto=proto).get_piece_size()



def tf_data_tokenizer(proto, sequence_length):
    """A `TIPSv2Tokenizer` safe to use in several tf.data pipelines.

    Its SentencePiece op is created eagerly here: created lazily inside a
    first pipeline's map function, it would belong to that function's graph
    and die with it, and every later pipeline would fail with "Resource ...
    SentencepieceOp does not exist".
    """
    import tensorflow as tf

    from keras_tipsv2.models.tipsv2_tokenizer import TIPSv2Tokenizer

    tokenizer = TIPSv2Tokenizer(proto=proto, sequence_length=sequence_length)
    tokenizer(tf.constant(["a"]))
    return tokenizer


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def preset_tokenizer_proto(preset):
    """The SentencePiece model bytes of a preset's tokenizer."""
    from keras_tipsv2.models.tipsv2_tokenizer import TIPSv2Tokenizer

    tokenizer = TIPSv2Tokenizer.from_preset(preset)
    proto = tokenizer.proto
    if isinstance(proto, str):
        return read_bytes(proto)
    return bytes(proto)


def export_preset(backbone, output, tokenizer_proto, image_size):
    """Writes backbone + tokenizer + image converter (square `image_size`) to
    `output` atomically: into a staging sibling first, renamed into place
    when complete, so a crash never leaves a half-written preset.

    Args:
        backbone: the trained `TIPSv2Backbone`.
        output: the preset folder (replaced if it exists).
        tokenizer_proto: SentencePiece model bytes.
        image_size: the training resolution the converter resizes to.
    """
    from keras_tipsv2.convert.preset import write_preset

    return write_preset(
        backbone, output, tokenizer_proto, image_size=image_size, overwrite=True
    )
