"""Step-exact, weight-exact resume after a kill: `keras_tipsv2.training.resumable_fit`."""

import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from keras_tipsv2.training import resumable_fit
from keras_tipsv2.training.resumable_fit import CHECKPOINT_FILE
from keras_tipsv2.training.resumable_fit import IncompatibleRunError
from tests.test_pretrainer import make_batch
from tests.test_pretrainer import make_pretrainer

STEPS_PER_EPOCH = 3
EPOCHS = 2
KILL_AT = 4  # global step: epoch 1, batch 1


def epoch_dataset(epoch):
    """Batches keyed by epoch, without masks: the pretrainer draws them in
    the step from its seed generator, whose state the checkpoint must keep."""
    batches = [make_batch(seed=10 * epoch + i, crops=False) for i in range(STEPS_PER_EPOCH)]
    stacked = keras.tree.map_structure(lambda *leaves: np.stack(leaves), *batches)
    return tf.data.Dataset.from_tensor_slices(stacked)


class Kill(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if int(ops.convert_to_numpy(self.model.optimizer.iterations)) == KILL_AT:
            raise KeyboardInterrupt("killed")


class Record(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs, self.steps = [], 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1


def fit(model, backup_dir, callbacks=()):
    return resumable_fit.fit_resumable(
        model, epoch_dataset, EPOCHS, STEPS_PER_EPOCH, backup_dir,
        save_every=1, callbacks=list(callbacks), verbose=0,
    )  # fmt: skip


def numpy_values(variables):
    return [ops.convert_to_numpy(v).copy() for v in variables]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run, and a run killed at step 4 then restarted."""
    root = tmp_path_factory.mktemp("resume")
    straight = make_pretrainer()
    fit(straight, str(root / "straight"))
    killed = make_pretrainer()
    with pytest.raises(KeyboardInterrupt):
        fit(killed, str(root / "killed"), [Kill()])
    at_kill = {
        "teacher": numpy_values(killed.teacher_head.weights),
        "random": numpy_values(resumable_fit.random_state_variables(killed)),
    }
    shutil.copytree(root / "killed", root / "at_kill")  # the restart overwrites it
    restarted = make_pretrainer()
    record = Record()
    result = fit(restarted, str(root / "killed"), [record])
    return dict(
        straight=straight, at_kill=at_kill, restarted=restarted, record=record,
        result=result, backup_dir=str(root / "at_kill"),
    )  # fmt: skip


def test_restart_resumes_at_the_killed_step_not_from_scratch(runs):
    assert runs["result"]["start_step"] == KILL_AT
    assert runs["record"].steps == EPOCHS * STEPS_PER_EPOCH - KILL_AT
    assert runs["record"].epochs == [1]  # only the interrupted epoch's rest


def test_restart_ends_with_the_same_schedule(runs):
    restarted = runs["restarted"]
    assert int(ops.convert_to_numpy(restarted.optimizer.iterations)) == EPOCHS * STEPS_PER_EPOCH
    assert int(ops.convert_to_numpy(restarted.step_counter)) == EPOCHS * STEPS_PER_EPOCH


def test_killed_and_resumed_run_equals_the_uninterrupted_run(runs):
    straight, restarted = runs["straight"], runs["restarted"]
    pairs = list(zip(straight.weights, restarted.weights))
    pairs += list(zip(straight.optimizer.variables, restarted.optimizer.variables))
    for a, b in pairs:
        difference = np.max(np.abs(ops.convert_to_numpy(a) - ops.convert_to_numpy(b)), initial=0)
        assert difference <= 1e-6, (a.path, difference)


def test_checkpoint_holds_the_random_states_of_the_kill_step(runs):
    model = make_pretrainer()
    initial = numpy_values(resumable_fit.random_state_variables(model))
    step = resumable_fit.ResumableBackupAndRestore(runs["backup_dir"]).restore(model)
    assert step == KILL_AT
    restored = numpy_values(resumable_fit.random_state_variables(model))
    assert len(restored) == len(runs["at_kill"]["random"]) >= 1
    for got, want in zip(restored, runs["at_kill"]["random"]):
        np.testing.assert_array_equal(got, want)
    # The mask draws had advanced the pretrainer's seed: the check is not vacuous.
    assert any(not np.array_equal(a, b) for a, b in zip(initial, restored))


def test_restore_loads_the_checkpointed_ema_teacher_and_optimizer_step(runs):
    model = make_pretrainer()
    resumable_fit.ResumableBackupAndRestore(runs["backup_dir"]).restore(model)
    assert int(ops.convert_to_numpy(model.step_counter)) == KILL_AT
    for got, want in zip(numpy_values(model.teacher_head.weights), runs["at_kill"]["teacher"]):
        np.testing.assert_array_equal(got, want)
    initial = numpy_values(make_pretrainer().teacher_head.weights)
    assert not np.allclose(runs["at_kill"]["teacher"][0], initial[0], atol=1e-6)


def test_continuation_loads_every_model_weight_but_starts_a_fresh_optimizer(runs):
    checkpointed = make_pretrainer()
    resumable_fit.ResumableBackupAndRestore(runs["backup_dir"]).restore(checkpointed)
    model = make_pretrainer()
    path = os.path.join(runs["backup_dir"], CHECKPOINT_FILE)
    resumable_fit.load_weights_without_optimizer(model, path)
    for want, got in zip(checkpointed.weights, model.weights):
        np.testing.assert_array_equal(ops.convert_to_numpy(got), ops.convert_to_numpy(want), err_msg=want.path)
    assert int(ops.convert_to_numpy(model.optimizer.iterations)) == 0
    fresh = make_pretrainer().optimizer
    fresh.build(model.trainable_variables)
    for want, got in zip(fresh.variables, model.optimizer.variables):
        np.testing.assert_array_equal(ops.convert_to_numpy(got), ops.convert_to_numpy(want), err_msg=got.path)
    assert int(ops.convert_to_numpy(checkpointed.optimizer.iterations)) == KILL_AT


def test_continuation_of_another_pretrainer_shape_names_the_mismatch(runs):
    model = make_pretrainer(num_prototypes=32)
    with pytest.raises(IncompatibleRunError, match="does not fit this model"):
        resumable_fit.load_weights_without_optimizer(
            model, os.path.join(runs["backup_dir"], CHECKPOINT_FILE)
        )


def test_resuming_with_another_model_names_the_checkpoint(runs):
    model = make_pretrainer(num_prototypes=32)
    path = os.path.join(runs["backup_dir"], CHECKPOINT_FILE)
    with pytest.raises(IncompatibleRunError, match=f"checkpoint {path} does not fit"):
        resumable_fit.ResumableBackupAndRestore(runs["backup_dir"]).restore(model)


def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = make_pretrainer()
    model.optimizer.build(model.trainable_variables)
    path = str(tmp_path / CHECKPOINT_FILE)
    resumable_fit.save_checkpoint(model, path)
    with open(path, "rb") as f:
        before = f.read()

    def fail(model, temporary):
        raise OSError("disk full")

    model.cls_center.assign(np.ones(model.cls_center.shape, "float32"))  # a newer state to save
    monkeypatch.setattr(resumable_fit, "_write_random_states", fail)
    with pytest.raises(OSError, match="disk full"):
        resumable_fit.save_checkpoint(model, path)
    with open(path, "rb") as f:
        assert f.read() == before
    assert os.listdir(tmp_path) == [CHECKPOINT_FILE]  # no temporary left behind


class StepBatches(keras.utils.PyDataset):
    """Batches keyed by global step, as `ShapesWorldBatches` serves them."""

    def __init__(self, first, count, requested):
        super().__init__()
        self.first, self.count, self.requested = first, count, requested

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        step = self.first + index
        self.requested.append(step)
        return make_batch(seed=step, crops=False)


def test_step_keyed_source_resumes_at_the_killed_step(tmp_path):
    requested = []

    def fit_steps(model, callbacks=()):
        return resumable_fit.fit_resumable(
            model, None, EPOCHS, STEPS_PER_EPOCH, str(tmp_path), save_every=1,
            callbacks=list(callbacks), verbose=0,
            step_batches=lambda first, count: StepBatches(first, count, requested),
        )  # fmt: skip

    # One model for both runs (one compilation): the restart still restores
    # from the checkpoint and asks the source for the missing steps only.
    model = make_pretrainer()
    with pytest.raises(KeyboardInterrupt):
        fit_steps(model, [Kill()])
    requested.clear()
    result = fit_steps(model)
    assert result["start_step"] == KILL_AT
    assert result["end_step"] == EPOCHS * STEPS_PER_EPOCH
    assert sorted(set(requested)) == list(range(KILL_AT, EPOCHS * STEPS_PER_EPOCH))


# --- The plan ----------------------------------------------------------------


def test_a_saved_plan_is_what_a_resumed_run_reads(tmp_path):
    settings = {"config": {"crop_scale": (0.6, 1.0)}, "flags": {"seed": 0}}
    assert resumable_fit.stored_plan(str(tmp_path), settings) is None
    saved = resumable_fit.save_plan(str(tmp_path), {"epochs": 4, "steps_per_epoch": 5}, settings)
    assert resumable_fit.stored_plan(str(tmp_path), settings) == saved
    assert saved == {
        "epochs": 4, "steps_per_epoch": 5,
        "settings": {"config": {"crop_scale": [0.6, 1.0]}, "flags": {"seed": 0}},
    }  # fmt: skip


def test_plan_of_other_settings_is_refused_naming_the_first_difference(tmp_path):
    saved = {"config": {"image_size": 64, "batch_size": 8}, "flags": {"quick": False}}
    resumable_fit.save_plan(str(tmp_path / "checkpoint"), {"epochs": 1}, saved)
    other = {"config": {"image_size": 32, "batch_size": 8}, "flags": {"quick": True}}
    with pytest.raises(IncompatibleRunError) as error:
        resumable_fit.stored_plan(str(tmp_path / "checkpoint"), other)
    assert str(error.value) == (
        f"{tmp_path} holds another run: config.image_size is 64 there, 32 here "
        "(and 1 more: flags.quick)"
    )


# --- The CSV log ---------------------------------------------------------------


def test_csv_log_drops_the_rows_a_resume_repeats_and_a_row_cut_by_a_kill(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("epoch,loss,val_loss\r\n0,1.5,NA\r\n1,1.25,NA\r\n2,1.0,NA\r\n3,0.")
    logger = resumable_fit.ResumableCSVLogger(str(path))
    logger.on_train_begin()
    logger.on_epoch_begin(2)
    logger.on_epoch_end(2, {"loss": 0.75})
    logger.on_train_end()
    assert path.read_bytes().decode() == "epoch,loss,val_loss\r\n0,1.5,NA\r\n1,1.25,NA\r\n2,0.75,NA\r\n"


def test_csv_log_of_a_fresh_start_replaces_the_old_one(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("epoch,old_metric,val_old_metric\r\n0,1.5,NA\r\n")
    logger = resumable_fit.ResumableCSVLogger(str(path))
    logger.on_train_begin()
    logger.on_epoch_begin(0)
    logger.on_epoch_end(0, {"loss": 2.0})
    logger.on_train_end()
    assert path.read_bytes().decode() == "epoch,loss,val_loss\r\n0,2.0,NA\r\n"
