"""The pretraining recipe end to end, and step-exact resume after a kill."""

import os
import shutil
import sys
from unittest import mock

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from keras_tipsv2.models.tipsv2_backbone import TIPSv2Backbone
from keras_tipsv2.training import recipe_utils
from tests.test_pretrainer import make_batch
from tests.test_pretrainer import make_pretrainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "recipes"))

STEPS_PER_EPOCH = 3
EPOCHS = 2
KILL_AT = 4  # global step: epoch 1, batch 1


def epoch_dataset(epoch):
    """Batches keyed by epoch, with explicit masks (the in-step mask seed is
    not checkpointed, so random masks would differ after a restore)."""
    batches = []
    for i in range(STEPS_PER_EPOCH):
        batch = make_batch(seed=10 * epoch + i, crops=False)
        batch["masks"] = np.random.default_rng(10 * epoch + i).uniform(size=(8, 2, 2)) < 0.5
        batches.append(batch)
    stacked = {k: (np.stack([b[k] for b in batches]) if not isinstance(batches[0][k], dict)
                   else {kk: np.stack([b[k][kk] for b in batches]) for kk in batches[0][k]})
               for k in batches[0]}
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
    return recipe_utils.fit_resumable(
        model, epoch_dataset, EPOCHS, STEPS_PER_EPOCH, backup_dir,
        save_every=1, callbacks=list(callbacks), verbose=0,
    )


def numpy_weights(weights):
    return [ops.convert_to_numpy(w).copy() for w in weights]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run, and a run killed at step 4 then restarted."""
    root = tmp_path_factory.mktemp("resume")
    straight = make_pretrainer()
    fit(straight, str(root / "straight"))
    killed = make_pretrainer()
    with pytest.raises(KeyboardInterrupt):
        fit(killed, str(root / "killed"), [Kill()])
    at_kill = numpy_weights(killed.teacher_head.weights)
    shutil.copytree(root / "killed", root / "at_kill")  # the restart overwrites it
    restarted = make_pretrainer()
    record = Record()
    result = fit(restarted, str(root / "killed"), [record])
    return dict(
        straight=straight, at_kill=at_kill, restarted=restarted, record=record,
        result=result, backup_dir=str(root / "at_kill"),
    )


def test_restart_resumes_at_the_killed_step_not_from_scratch(runs):
    assert runs["result"]["start_step"] == KILL_AT
    assert runs["record"].steps == EPOCHS * STEPS_PER_EPOCH - KILL_AT
    assert runs["record"].epochs == [1]  # only the interrupted epoch's rest


def test_restart_ends_with_the_same_schedule(runs):
    restarted = runs["restarted"]
    assert int(ops.convert_to_numpy(restarted.optimizer.iterations)) == EPOCHS * STEPS_PER_EPOCH
    assert int(ops.convert_to_numpy(restarted.step_counter)) == EPOCHS * STEPS_PER_EPOCH


def test_restore_loads_the_checkpointed_ema_teacher_and_optimizer_step(runs):
    model = make_pretrainer()
    step = recipe_utils.ResumableBackupAndRestore(runs["backup_dir"]).restore(model)
    assert step == KILL_AT
    assert int(ops.convert_to_numpy(model.step_counter)) == KILL_AT
    for got, want in zip(numpy_weights(model.teacher_head.weights), runs["at_kill"]):
        np.testing.assert_array_equal(got, want)
    # The checkpointed teacher is not the initial one.
    initial = numpy_weights(make_pretrainer().teacher_head.weights)
    assert not np.allclose(runs["at_kill"][0], initial[0], atol=1e-6)


def test_killed_and_resumed_run_matches_the_uninterrupted_run(runs):
    for a, b in zip(runs["straight"].weights, runs["restarted"].weights):
        np.testing.assert_allclose(
            ops.convert_to_numpy(b), ops.convert_to_numpy(a), rtol=1e-4, atol=1e-5, err_msg=a.path
        )
    for a, b in zip(runs["straight"].optimizer.variables, runs["restarted"].optimizer.variables):
        np.testing.assert_allclose(
            ops.convert_to_numpy(b), ops.convert_to_numpy(a), rtol=1e-4, atol=1e-6, err_msg=a.path
        )


def test_continuation_loads_every_model_weight_but_starts_a_fresh_optimizer(runs):
    checkpointed = make_pretrainer()
    recipe_utils.ResumableBackupAndRestore(runs["backup_dir"]).restore(checkpointed)
    model = make_pretrainer()
    path = os.path.join(runs["backup_dir"], recipe_utils.CHECKPOINT_FILE)
    recipe_utils.load_pretrainer_weights(model, path)
    for want, got in zip(checkpointed.weights, model.weights):
        np.testing.assert_array_equal(ops.convert_to_numpy(got), ops.convert_to_numpy(want), err_msg=want.path)
    assert int(ops.convert_to_numpy(model.optimizer.iterations)) == 0
    fresh = make_pretrainer().optimizer
    fresh.build(model.trainable_variables)
    for want, got in zip(fresh.variables, model.optimizer.variables):
        np.testing.assert_array_equal(ops.convert_to_numpy(got), ops.convert_to_numpy(want), err_msg=got.path)
    # The checkpoint's optimizer had moved: the reset is not vacuous.
    assert int(ops.convert_to_numpy(checkpointed.optimizer.iterations)) == KILL_AT


def test_continuation_of_another_pretrainer_shape_names_the_mismatch(runs):
    model = make_pretrainer(num_prototypes=32)
    with pytest.raises(ValueError, match="does not fit this pretrainer"):
        recipe_utils.load_pretrainer_weights(
            model, os.path.join(runs["backup_dir"], recipe_utils.CHECKPOINT_FILE)
        )


def test_init_from_names_a_preset_or_a_finished_run(tmp_path):
    assert recipe_utils.init_sources("tipsv2_tiny_shapes") == ("tipsv2_tiny_shapes", None)
    run = tmp_path / "run"
    (run / "preset").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        recipe_utils.init_sources(str(run))
    (run / "checkpoint").mkdir()
    (run / "checkpoint" / recipe_utils.CHECKPOINT_FILE).write_bytes(b"")
    assert recipe_utils.init_sources(str(run)) == (
        str(run / "preset"), str(run / "checkpoint" / recipe_utils.CHECKPOINT_FILE)
    )


def test_quick_recipe_run_writes_a_loadable_preset_and_a_report(tmp_path, capsys):
    import pretrain

    # --minutes takes the README main command's path: a step measured on a
    # tf.data batch plans the epochs that fit the budget.
    out = pretrain.main(
        ["--quick", "--minutes", "0.01", "--output", str(tmp_path / "run"), "--verbose", "0"]
    )
    assert "s/step ->" in capsys.readouterr().out
    backbone = TIPSv2Backbone.from_preset(out["preset"])
    trained = out["train"]
    assert trained["start_step"] == 0 and trained["epochs"] >= 1
    assert trained["steps"] == trained["epochs"] * trained["steps_per_epoch"]
    images = np.random.default_rng(0).uniform(size=(1, 32, 32, 3)).astype("float32")
    tokens = backbone.encode_images(images)["patch_tokens"]
    assert tuple(tokens.shape) == (1, 4, 4, 32)
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Zero-shot segmentation mIoU" in report and "all background" in report
    for name in ("pca.png", "segmentation.png", "log.csv", "results.json"):
        assert (tmp_path / "run" / name).exists(), name
    for name in ("config.json", "tokenizer.json", "image_converter.json"):
        assert os.path.exists(os.path.join(out["preset"], name)), name


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
        batch = make_batch(seed=step, crops=False)
        batch["masks"] = np.random.default_rng(step).uniform(size=(8, 2, 2)) < 0.5
        return batch


def test_step_keyed_source_resumes_at_the_killed_step(tmp_path):
    requested = []

    def step_batches(first, count):
        return StepBatches(first, count, requested)

    def fit_steps(model, callbacks=()):
        return recipe_utils.fit_resumable(
            model, None, EPOCHS, STEPS_PER_EPOCH, str(tmp_path), save_every=1,
            callbacks=list(callbacks), verbose=0, step_batches=step_batches,
        )  # fmt: skip

    with pytest.raises(KeyboardInterrupt):
        fit_steps(make_pretrainer(), [Kill()])
    requested.clear()
    result = fit_steps(make_pretrainer())
    assert result["start_step"] == KILL_AT
    assert result["end_step"] == EPOCHS * STEPS_PER_EPOCH
    assert sorted(set(requested)) == list(range(KILL_AT, EPOCHS * STEPS_PER_EPOCH))


def test_set_overrides_nested_config_entries_with_json_values():
    import pretrain

    config = {"learning_rate": 1e-3, "pretrainer": {"dino_weight": 0.1}, "world": {}}
    pretrain.apply_override(config, "pretrainer.dino_weight=0.5")
    pretrain.apply_override(config, "world.describe_background=false")
    pretrain.apply_override(config, "learning_rate=2e-3")
    pretrain.apply_override(config, "pretrainer.patch_loss=ibot")
    assert config == {
        "learning_rate": 2e-3,
        "pretrainer": {"dino_weight": 0.5, "patch_loss": "ibot"},
        "world": {"describe_background": False},
    }
    with pytest.raises(ValueError, match="KEY=VALUE"):
        pretrain.apply_override(config, "learning_rate")
    with pytest.raises(ValueError, match="not a config section"):
        pretrain.apply_override(config, "learning_rate.x=1")


def test_empty_images_are_trained_on_but_never_scored():
    import pretrain

    config = {"image_size": 32, "world": {"describe_background": True, "empty_fraction": 0.5}}
    assert pretrain.shapes_world(config, "train").empty_fraction == 0.5
    held_out = pretrain.shapes_world(config, "validation")
    assert held_out.empty_fraction == 0.0
    assert all(held_out.sample(index)["objects"] for index in range(10))
    assert config["world"]["empty_fraction"] == 0.5  # the config is left as it was


def test_ablation_hands_its_overrides_to_every_run():
    import ablate
    import pretrain

    args = ablate.parse_args(["--steps", "5", "--set", "world.empty_fraction=0"])
    for name, variant in ablate.VARIANTS:
        flags = ablate.run_flags(variant, 2, args, 5, "out")
        config = pretrain.run_config(pretrain.parse_args(flags))
        assert config["world"]["empty_fraction"] == 0, name
        assert config["pretrainer"]["patch_loss"] == variant["patch_loss"], name


def test_python_pipeline_trains_on_shapes_world_without_tf_data(tmp_path):
    import pretrain

    out = pretrain.main(
        ["--quick", "--pipeline", "python", "--steps", "2", "--no-eval",
         "--output", str(tmp_path / "run"), "--verbose", "0"]
    )  # fmt: skip
    assert out["train"]["pipeline"] == "python"
    assert out["train"]["start_step"] == 0
    assert np.isfinite(out["train"]["final_logs"]["loss"])
    TIPSv2Backbone.from_preset(out["preset"])


def test_a_finished_run_continues_with_its_heads_on_a_new_schedule(tmp_path):
    import pretrain

    common = ["--quick", "--pipeline", "python", "--no-eval", "--verbose", "0"]
    first = pretrain.main(common + ["--steps", "2", "--output", str(tmp_path / "a")])
    load = mock.patch.object(
        recipe_utils, "load_pretrainer_weights", wraps=recipe_utils.load_pretrainer_weights
    )
    with load as loaded:
        out = pretrain.main(
            common + ["--steps", "2", "--init-from", str(tmp_path / "a"), "--output", str(tmp_path / "b")]
        )
    assert loaded.call_args.args[1] == str(tmp_path / "a" / "checkpoint" / recipe_utils.CHECKPOINT_FILE)
    assert out["train"]["start_step"] == 0 and out["train"]["init_from"] == str(tmp_path / "a")
    assert np.isfinite(out["train"]["final_logs"]["loss"])
    # The continuation's tokenizer is the first run's.
    with open(os.path.join(first["preset"], "assets", "tokenizer", "vocabulary.spm"), "rb") as f:
        first_vocabulary = f.read()
    with open(os.path.join(out["preset"], "assets", "tokenizer", "vocabulary.spm"), "rb") as f:
        assert f.read() == first_vocabulary


def test_mixed_precision_trains_in_bfloat16_and_writes_a_float32_preset(tmp_path, monkeypatch):
    import pretrain

    built = []
    build = pretrain.build_pretrainer

    def build_and_keep(*args, **kwargs):
        built.append(build(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(pretrain, "build_pretrainer", build_and_keep)
    out = pretrain.main(
        ["--quick", "--pipeline", "python", "--steps", "2", "--no-eval", "--mixed-precision",
         "--output", str(tmp_path / "run"), "--verbose", "0"]
    )  # fmt: skip
    trained = built[-1].backbone
    assert trained.compute_dtype == "bfloat16" and trained.variable_dtype == "float32"
    assert np.isfinite(out["train"]["final_logs"]["loss"])
    # The process's policy is back, and the preset computes in float32 with
    # exactly the trained (float32) variables.
    assert keras.config.dtype_policy().name == "float32"
    preset = TIPSv2Backbone.from_preset(out["preset"])
    assert preset.compute_dtype == "float32"
    for want, got in zip(trained.weights, preset.weights):
        np.testing.assert_array_equal(ops.convert_to_numpy(got), ops.convert_to_numpy(want))
