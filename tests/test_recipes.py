"""The training recipes end to end: outputs, run folders, continuations."""

import json
import os
import sys
from unittest import mock

import keras
import numpy as np
import pytest
from keras import ops

from keras_tipsv2.models.tipsv2_backbone import TIPSv2Backbone
from keras_tipsv2.training import resumable_fit
from keras_tipsv2.training.resumable_fit import CHECKPOINT_FILE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "recipes"))

import common  # noqa: E402  (recipes/common.py)

def test_init_from_names_a_preset_or_a_finished_run(tmp_path):
    assert common.init_sources("tipsv2_tiny_shapes") == ("tipsv2_tiny_shapes", None)
    run = tmp_path / "run"
    (run / "preset").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        common.init_sources(str(run))
    (run / "checkpoint").mkdir()
    (run / "checkpoint" / CHECKPOINT_FILE).write_bytes(b"")
    assert common.init_sources(str(run)) == (
        str(run / "preset"), str(run / "checkpoint" / CHECKPOINT_FILE)
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
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["train"]["skipped_examples"] == {
        "corrupt_images": 0, "missing_captions": 0, "total": 0, "first_reasons": []
    }  # fmt: skip
    for name in ("config.json", "tokenizer.json", "image_converter.json"):
        assert os.path.exists(os.path.join(out["preset"], name)), name


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


def test_quick_run_has_its_own_folder_which_the_main_command_refuses(tmp_path, monkeypatch):
    import pretrain

    monkeypatch.chdir(tmp_path)
    out = pretrain.main(["--quick", "--pipeline", "python", "--steps", "2", "--no-eval", "--verbose", "0"])
    assert out["output"] == os.path.join("runs", "pretrain_tiny_quick")
    assert out["train"]["pipeline"] == "python" and out["train"]["start_step"] == 0
    assert np.isfinite(out["train"]["final_logs"]["loss"])
    TIPSv2Backbone.from_preset(out["preset"])
    # The main command pointed at that folder stops before any work, in one
    # line that names a difference and both ways out.
    with pytest.raises(SystemExit) as error:
        pretrain.main(["--steps", "2", "--pipeline", "python", "--output", out["output"]])
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{os.path.abspath(out['output'])} holds another run: config.")
    assert "--fresh" in message and "--output" in message


def test_an_unreadable_manifest_stops_the_recipe_naming_it(tmp_path):
    import pretrain
    from keras_tipsv2.data import DataSourceError
    from tests.spm_utils import train_tiny_spm

    for i in range(3):
        (tmp_path / f"{i}.jpg").write_bytes(b"not an image")
    manifest = tmp_path / "data.jsonl"
    manifest.write_text("".join(f'{{"image": "{i}.jpg", "alt_text": "a", "caption_short": "b"}}\n' for i in range(3)))
    with pytest.raises(DataSourceError, match=f"Stopped reading {manifest}: every one of its records"):
        pretrain.main(
            ["--quick", "--steps", "2", "--manifest", str(manifest), "--tokenizer", train_tiny_spm(str(tmp_path)),
             "--output", str(tmp_path / "run"), "--verbose", "0"]
        )  # fmt: skip


def test_skip_report_prints_each_epochs_drops_and_the_totals(capsys):
    class Counter:
        total = 0

        def totals(self):
            return {"total": self.total, "corrupt_images": self.total - 1, "missing_captions": 1}

    counter = Counter()
    report = common.SkipReport(counter)
    report.on_epoch_end(0)
    assert capsys.readouterr().out == ""  # silent while nothing was dropped
    counter.total = 5
    report.on_epoch_end(1)
    counter.total = 7
    report.on_epoch_end(2)
    assert capsys.readouterr().out.splitlines() == [
        "Epoch 2: 5 examples skipped (5 so far: 4 unreadable or corrupt images, 1 missing captions)",
        "Epoch 3: 2 examples skipped (7 so far: 6 unreadable or corrupt images, 1 missing captions)",
    ]


def test_a_finished_run_continues_with_its_heads_on_a_new_schedule(tmp_path):
    import pretrain

    flags = ["--quick", "--pipeline", "python", "--no-eval", "--verbose", "0"]
    first = pretrain.main(flags + ["--steps", "2", "--output", str(tmp_path / "a")])
    load = mock.patch.object(
        resumable_fit, "load_weights_without_optimizer",
        wraps=resumable_fit.load_weights_without_optimizer,
    )  # fmt: skip
    with load as loaded:
        out = pretrain.main(
            flags + ["--steps", "2", "--init-from", str(tmp_path / "a"), "--output", str(tmp_path / "b")]
        )
    assert loaded.call_args.args[1] == str(tmp_path / "a" / "checkpoint" / CHECKPOINT_FILE)
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
