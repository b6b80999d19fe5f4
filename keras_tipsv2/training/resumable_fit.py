"""`model.fit` that survives being killed and resumes bit-for-bit.

Keras' `BackupAndRestore` restores the weights (optimizer state included)
and the epoch, but three things stop a restarted run from equalling the
uninterrupted one:

* it restarts the interrupted epoch at its first batch, so a run killed
  mid-epoch trains those batches twice;
* Keras checkpoints hold weights, not the states of `keras.random.SeedGenerator`s
  (the pretrainer's mask draws, drop-path), so the restarted run draws other
  random numbers;
* it writes `latest.weights.h5` in place, so a kill during the write
  destroys the only checkpoint.

`fit_resumable` restores first, reads the global step from
`optimizer.iterations`, finishes the interrupted epoch with only its missing
batches and then runs the remaining epochs; `ResumableBackupAndRestore`
stores every random state of the model in the checkpoint file and writes it
atomically (`keras_tipsv2.utils.atomic_files`). The data must be a pure
function of the epoch (`epoch_seed`) or of the global step, so a resumed run
reads the batches it would have read. The run's plan (schedule and
settings) is stored beside the checkpoint (`save_plan`, `stored_plan`): a resumed
run keeps the schedule it started with, and a folder is never resumed by a
run with other settings.
"""

import csv
import io
import json
import os
import warnings

import h5py
import keras
import numpy as np

from keras_tipsv2.utils import atomic_files

PLAN_FILE = "plan.json"
CHECKPOINT_FILE = "latest.weights.h5"
# The h5 group of a checkpoint that holds the model's random states; Keras'
# weight loader reads only the groups of the model's layers and ignores it.
RANDOM_STATES = "tipsv2_random_states"


class IncompatibleRunError(ValueError):
    """A run folder holds a run that this model or these settings cannot resume."""


# --- Checkpoints ----------------------------------------------------------


def random_state_variables(model):
    """The variables of `model` that are random states, not weights.

    These are the states of its `keras.random.SeedGenerator`s (mask draws,
    dropout, drop-path), in the model's own variable order, which depends
    only on its structure.
    """
    weights = {id(w) for w in model.weights}
    return [v for v in model.variables if id(v) not in weights]


def save_checkpoint(model, path):
    """Writes the weights, optimizer state and random states of `model` to `path`.

    The file is a Keras `.weights.h5` file (loadable with `load_weights`)
    with the random states in one extra group. It is written under a
    temporary name and moved into place when complete, so `path` always
    holds a whole checkpoint: the previous one or this one.

    Args:
        model: a built model (compiled, if its optimizer is to be saved).
        path: the checkpoint file; its name must end in ".weights.h5".
    """
    if keras.backend.backend() == "jax":
        # JAX's fit keeps the training state outside the variables between
        # syncs: without one, a mid-epoch checkpoint would hold the weights
        # of the epoch's start.
        model.jax_state_sync()
    with atomic_files.atomic_path(path) as temporary:
        model.save_weights(temporary)
        _write_random_states(model, temporary)


def _write_random_states(model, path):
    with h5py.File(path, "a") as f:
        group = f.create_group(RANDOM_STATES)
        for index, variable in enumerate(random_state_variables(model)):
            group[str(index)] = np.asarray(keras.ops.convert_to_numpy(variable))
            group[str(index)].attrs["path"] = variable.path


def load_checkpoint(model, path):
    """Loads a `save_checkpoint` file into `model`; returns its global step.

    Args:
        model: a model of the structure that wrote the checkpoint; its
            optimizer is built first if it has one.
        path: the checkpoint file.

    Returns:
        `optimizer.iterations` after loading (0 without an optimizer).

    Raises:
        IncompatibleRunError: the file does not fit `model` or cannot be read.
    """
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    try:
        model.load_weights(path)
        states = _read_random_states(path)
    except (OSError, ValueError, KeyError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise IncompatibleRunError(
            f"The checkpoint {path} does not fit this model or is damaged ({reason})"
        ) from error
    variables = random_state_variables(model)
    if states is None:
        warnings.warn(
            f"The checkpoint {path} holds no random states: the resumed run "
            "draws other masks than the uninterrupted run would have."
        )
    elif len(states) != len(variables):
        raise IncompatibleRunError(
            f"The checkpoint {path} holds {len(states)} random states; this "
            f"model has {len(variables)}."
        )
    else:
        for variable, value in zip(variables, states):
            variable.assign(keras.ops.cast(value, variable.dtype))
    if model.optimizer is None:
        return 0
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


def _read_random_states(path):
    with h5py.File(path, "r") as f:
        if RANDOM_STATES not in f:
            return None
        group = f[RANDOM_STATES]
        return [group[str(i)][()] for i in range(len(group))]


def load_weights_without_optimizer(model, path):
    """Loads a checkpoint's model weights into compiled `model`, not its optimizer.

    For continuing a finished run on a new schedule: the checkpoint holds
    the optimizer too (for exact resumes), so the optimizer's fresh state
    (step 0, zero moments) is put back after loading. Random states are
    not loaded: a continuation is a new run.

    Args:
        model: a compiled model of the structure that wrote the checkpoint.
        path: a `save_checkpoint` (or `save_weights`) file.

    Raises:
        IncompatibleRunError: the checkpoint does not fit `model`.
    """
    optimizer = model.optimizer
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    fresh = [keras.ops.convert_to_numpy(v) for v in optimizer.variables]
    try:
        model.load_weights(path)
    except ValueError as error:
        raise IncompatibleRunError(
            f"The checkpoint {path} does not fit this model; continue it with "
            f"the settings of the run that wrote it. {error}"
        ) from error
    for variable, value in zip(optimizer.variables, fresh):
        variable.assign(value)


class ResumableBackupAndRestore(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` that saves random states atomically and resumes at the step.

    The checkpoint is one file, `backup_dir/latest.weights.h5`, written by
    `save_checkpoint`: weights, optimizer and random states, replaced
    atomically, so a kill during a save leaves the previous checkpoint.
    Restoring happens in `restore(model)`, which `fit_resumable` calls
    before it builds the data of the resumed epoch (that data starts at the
    restored step); `on_train_begin` therefore does not load again.

    Args:
        backup_dir: the folder of the checkpoint (kept after training).
        save_freq: save every this many batches, or "epoch".

    Example:

    ```python
    backup = ResumableBackupAndRestore("run/checkpoint", save_freq=100)
    step = backup.restore(model)  # 0 for a fresh run
    ```
    """

    def __init__(self, backup_dir, save_freq="epoch"):
        super().__init__(backup_dir, save_freq=save_freq, delete_checkpoint=False)

    @property
    def checkpoint_path(self):
        return self._weights_path

    def restore(self, model):
        """Loads the latest checkpoint into `model` if there is one.

        Returns:
            The global step (`optimizer.iterations`) training continues
            from: 0 without a checkpoint.
        """
        self.set_model(model)
        atomic_files.recover(self.checkpoint_path)
        if not os.path.exists(self.checkpoint_path):
            return 0
        return load_checkpoint(model, self.checkpoint_path)

    def on_train_begin(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        # A mid-epoch checkpoint records the epoch it was taken in.
        self._current_epoch = epoch

    def _save_model(self):
        save_checkpoint(self.model, self.checkpoint_path)


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
):
    """`model.fit` for `epochs` x `steps_per_epoch` steps that survives being killed.

    Call it again with the same arguments after a kill: it restores the
    checkpoint in `backup_dir`, trains exactly the steps that are missing
    on the batches they would have had, and ends with the weights of an
    uninterrupted run. A finished run trains no further.

    Args:
        model: a compiled model.
        epoch_dataset: `epoch -> tf.data.Dataset` of at least
            `steps_per_epoch` batches, a pure function of the epoch (see
            `epoch_seed`). None when `step_batches` is given.
        epochs: number of epochs.
        steps_per_epoch: steps of each epoch.
        backup_dir: checkpoint folder, kept after training.
        save_every: checkpoint every this many steps; default once per epoch.
        callbacks: further callbacks (progress, CSV, TensorBoard ...).
        verbose: passed to `fit`.
        step_batches: instead of `epoch_dataset`, `(first_step, count) ->`
            any dataset `fit` takes (e.g. a `ShapesWorldBatches` view) whose
            batches are a pure function of the global step.

    Returns:
        {"start_step": the step restored from (0 for a fresh run),
        "end_step": the step after training, "histories": [History, ...]}.

    Raises:
        IncompatibleRunError: the checkpoint does not fit `model`, or is past
            this schedule's end.

    Example:

    ```python
    result = fit_resumable(
        pretrainer, lambda epoch: make_dataset(seed=epoch_seed(0, epoch)),
        epochs=10, steps_per_epoch=100, backup_dir="run/checkpoint", save_every=50,
    )
    ```
    """
    backup = ResumableBackupAndRestore(backup_dir, save_freq=save_every or "epoch")
    start = backup.restore(model)
    total = epochs * steps_per_epoch
    if start > total:
        raise IncompatibleRunError(
            f"The checkpoint in {backup_dir} is at step {start}, past this "
            f"run's {total} steps."
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


def stored_plan(directory, settings=None):
    """The plan saved in `directory` by `save_plan`, or None for a new run.

    A resumed run thus keeps its original schedule, even one planned from a
    measured step time. A folder whose stored settings differ from
    `settings` is refused rather than resumed with a model or data it was
    not made with.

    Args:
        directory: the checkpoint folder.
        settings: what this run trains (config, data, seed ...), a
            JSON-serialisable dict; None skips the check.

    Returns:
        The plan dict, or None if `directory` holds none.

    Raises:
        IncompatibleRunError: the stored settings differ (the message names
            the first difference), or the plan cannot be read.
    """
    path = os.path.join(directory, PLAN_FILE)
    atomic_files.recover(path)
    if not os.path.exists(path):
        return None
    plan = _read_plan(path)
    settings = _json_copy(settings)
    if settings is not None and "settings" in plan and plan["settings"] != settings:
        raise IncompatibleRunError(
            f"{os.path.dirname(os.path.abspath(directory))} holds another run: "
            + _describe_differences(plan["settings"], settings)
        )
    return plan


def save_plan(directory, plan, settings=None):
    """Saves `plan` (and `settings`) in `directory` atomically; returns what
    `stored_plan` will return.

    Args:
        directory: the checkpoint folder (created if missing).
        plan: JSON-serialisable dict, e.g. {"epochs", "steps_per_epoch"}.
        settings: see `stored_plan`.

    Example:

    ```python
    plan = stored_plan("run/checkpoint", settings)
    if plan is None:
        plan = save_plan("run/checkpoint", {"epochs": 10, "steps_per_epoch": 100}, settings)
    ```
    """
    plan = _json_copy(dict(plan))
    if settings is not None:
        plan["settings"] = _json_copy(settings)
    atomic_files.write_json(os.path.join(directory, PLAN_FILE), plan)
    return plan


def _json_copy(value):
    # Tuples become lists, as they will in the stored file.
    return None if value is None else json.loads(json.dumps(value))


def _read_plan(path):
    with open(path) as f:
        text = f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise IncompatibleRunError(f"{path} is not valid JSON ({error})") from None


def _flattened(value, prefix=""):
    if isinstance(value, dict):
        items = {}
        for key, item in value.items():
            items.update(_flattened(item, f"{prefix}{key}."))
        return items
    return {prefix[:-1]: value}


def _describe_differences(saved, current):
    saved, current = _flattened(saved), _flattened(current)
    missing = object()
    keys = [
        k for k in list(current) + [k for k in saved if k not in current]
        if saved.get(k, missing) != current.get(k, missing)
    ]

    def shown(table, key):
        return json.dumps(table[key]) if key in table else "unset"

    first = keys[0]
    text = f"{first} is {shown(saved, first)} there, {shown(current, first)} here"
    if len(keys) > 1:
        text += f" (and {len(keys) - 1} more: {', '.join(keys[1:4])}{', ...' if len(keys) > 4 else ''})"
    return text


# --- The training log ------------------------------------------------------


class ResumableCSVLogger(keras.callbacks.CSVLogger):
    """A CSV log with one complete row per epoch of a run, across kills and resumes.

    Keras' `CSVLogger(append=True)` appends a row at each epoch's end and
    flushes it: a kill can leave a half-written last line, and a resumed run
    appends rows again for epochs the killed run had already logged. This
    logger, when training (re)starts at epoch e, first drops the rows of
    epochs >= e and any incomplete line (rewriting the file atomically),
    then appends as Keras does. At epoch 0 it starts a new file. The row of
    an epoch that was resumed mid-way holds the means of its resumed part.

    Args:
        filename: the CSV file.
        separator: the field separator.
    """

    def __init__(self, filename, separator=","):
        super().__init__(filename, separator=separator, append=True)

    def on_train_begin(self, logs=None):
        # Opened at the first epoch, when the epoch training resumes in is known.
        pass

    def on_epoch_begin(self, epoch, logs=None):
        if self.csv_file is None or self.csv_file.closed:
            _trim_csv_log(self.filename, epoch, self.sep)
            super().on_train_begin()


def _trim_csv_log(path, epoch, separator):
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        text = f.read()
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines.pop()  # a row cut by a kill
    if epoch == 0 or not lines:
        kept = []
    else:
        kept = lines[:1] + [line for line in lines[1:] if _row_epoch(line, separator) < epoch]
    if "".join(kept) != text:
        with atomic_files.atomic_open(path, "w", newline="") as f:
            f.write("".join(kept))


def _row_epoch(line, separator):
    row = next(csv.reader(io.StringIO(line), delimiter=separator), [""])
    try:
        return int(row[0])
    except (ValueError, IndexError):
        return float("inf")  # not a row of this log: dropped with the later rows
