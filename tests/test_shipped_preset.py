"""The tiny ShapesWorld preset shipped in the package: offline, on every backend."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import keras_tipsv2  # noqa: F401
from keras_tipsv2.models.tipsv2_backbone import TIPSv2Backbone
from keras_tipsv2.models.tipsv2_zero_shot_segmenter import TIPSv2ZeroShotSegmenter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESET_DIR = os.path.join(ROOT, "keras_tipsv2", "presets", "tipsv2_tiny_shapes")
sys.path.insert(0, os.path.join(ROOT, "recipes"))


def stored_benchmark():
    with open(os.path.join(PRESET_DIR, "benchmark.json")) as f:
        return json.load(f)


def test_preset_is_registered_by_name_and_loads_without_network():
    assert "tipsv2_tiny_shapes" in TIPSv2Backbone.presets
    backbone = TIPSv2Backbone.from_preset("tipsv2_tiny_shapes")
    assert backbone.vision_patch_size == 8
    images = np.random.default_rng(0).uniform(size=(2, 64, 64, 3)).astype("float32")
    out = backbone.encode_images(images)
    assert tuple(out["patch_tokens"].shape) == (2, 8, 8, 128)


def test_weights_are_a_few_megabytes():
    size = os.path.getsize(os.path.join(PRESET_DIR, "model.weights.h5"))
    assert size < 8 * 2**20


def test_held_out_numbers_reproduce_on_this_backend():
    # benchmark.json was written on JAX when the preset was made; the first
    # 24 held-out images are rescored here, on whichever backend runs the tests.
    import eval_shapes

    stored = stored_benchmark()["check_24_images"]
    results = eval_shapes.main(["--images", "24"])
    for vocabulary, scores in stored["segmentation"].items():
        for key in ("values", "values_no_residual", "background", "oracle"):
            assert results["segmentation"][vocabulary][key] == pytest.approx(
                scores[key], abs=1e-4
            ), (vocabulary, key)
    for vocabulary, scores in stored["classification"].items():
        assert results["classification"][vocabulary]["cls_1"] == pytest.approx(scores["cls_1"])


def test_stored_full_benchmark_matches_the_model_card():
    # The 200-image numbers TRAINING.md quotes are the ones in benchmark.json.
    stored = stored_benchmark()["segmentation"]
    with open(os.path.join(PRESET_DIR, "TRAINING.md")) as f:
        card = f.read()
    for vocabulary in ("colour", "shape", "colour_shape"):
        row = f"| {vocabulary} | " + " | ".join(
            [str(stored[vocabulary]["num_classes"])]
            + [f"{100 * stored[vocabulary][k]:.1f}" for k in ("values", "values_no_residual", "background", "oracle")]
        ) + " |"
        assert row in card, row


def test_zero_shot_guide_runs_on_the_preset(tmp_path):
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "guides", "zero_shot_segmentation.py"),
         "--out-dir", str(tmp_path), "--vocabulary", "colour"],
        cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "mIoU" in done.stdout
    assert (tmp_path / "zero_shot_segmentation.png").exists()


def test_segmenter_from_preset_finds_the_red_object():
    from keras_tipsv2.shapes.world import ShapesWorld

    segmenter = TIPSv2ZeroShotSegmenter.from_preset(
        "tipsv2_tiny_shapes", short_side=64, window_size=64, window_stride=48
    )
    segmenter.set_classes(["background", "red", "green", "blue", "yellow", "purple"])
    world = ShapesWorld(image_size=64, split="validation")
    hits = 0
    for index in range(12):
        sample = world.sample(index)
        truth = sample["labels"]["colour"]
        labels = segmenter.segment(sample["image"], mode="whole")["labels"]
        for obj in sample["objects"]:
            colour = 1 + obj["colour_index"]
            inside = truth == colour
            # The object's own colour is the most frequent label inside it.
            hits += np.bincount(labels[inside], minlength=6).argmax() == colour
    total = sum(len(world.sample(i)["objects"]) for i in range(12))
    assert hits >= 0.6 * total, (hits, total)
