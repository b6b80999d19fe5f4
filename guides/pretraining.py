"""
Title: Pretraining TIPSv2 on your own image-caption data
Author: keras_tipsv2 contributors
Description: From a JSONL manifest of images and captions to a KerasHub
    preset, with `model.fit`, on any backend.
Accelerator: None (the tiny model here trains in a minute on a CPU)

Run it end to end:

    python guides/pretraining.py

For a real run use `recipes/pretrain.py --manifest your.jsonl --config b14`,
which adds schedules, logs, checkpoints and step-exact resume.
"""

"""
## Introduction

TIPSv2 learns from images with captions of several granularities: a terse,
noisy *alt-text* and richer synthetic captions. Its loss has three parts
(the TIPS and TIPSv2 papers): a dual image-text contrastive loss (CLS_1 <->
alt-text, CLS_2 <-> a caption sampled per example), DINO on CLS_1 and
iBOT++ on every patch token of a masked view, with targets from an EMA copy
of the projection head only.

`TIPSv2Pretrainer` wraps a `TIPSv2Backbone` with all of it, and trains with
an ordinary `compile()` / `fit()` on JAX, PyTorch or TensorFlow.
"""

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402

from keras_tipsv2.shapes import ShapesWorld  # noqa: E402
from keras_tipsv2.data import make_pretraining_dataset  # noqa: E402
from keras_tipsv2.shapes import write_manifest  # noqa: E402
from keras_tipsv2.shapes.tokenizer import train_shapes_tokenizer  # noqa: E402
from keras_tipsv2.models.tipsv2_backbone import TIPSv2Backbone  # noqa: E402
from keras_tipsv2.training import TIPSv2Pretrainer  # noqa: E402
from keras_tipsv2.convert.preset import write_preset  # noqa: E402
from keras_tipsv2.data import tf_data_tokenizer  # noqa: E402

keras.utils.set_random_seed(0)
workdir = tempfile.mkdtemp(prefix="tipsv2-guide-")

"""
## Your data as a manifest

A manifest is one JSON object per line: an image path (relative to the
manifest) and caption fields. `alt_text` is required; any of
`caption_short` / `caption_long` form the pool CLS_2's caption is drawn
from. Here we write one from ShapesWorld, the library's synthetic set, so
that the guide runs offline; point `manifest` at your own file instead.
"""

world = ShapesWorld(image_size=64, split="train")
manifest = write_manifest(world, os.path.join(workdir, "data"), num_samples=128)
with open(manifest) as f:
    print(f.readline())

"""
## A tokenizer

Published TIPSv2 models come with their SentencePiece model
(`TIPSv2Tokenizer.from_preset(...)`). For a from-scratch toy we train a
small one on the captions. The tokenizer is made with `tf_data_tokenizer`,
which creates its TensorFlow op eagerly so several tf.data pipelines can
share it.
"""

proto = train_shapes_tokenizer(world, num_samples=500, vocab_size=256)
tokenizer = tf_data_tokenizer(proto, sequence_length=48)

"""
## The input pipeline

`make_pretraining_dataset` reads the manifest, decodes and augments the
images, samples a caption per example and tokenises both texts. Corrupt
images or missing captions are skipped and counted, never fatal. Colour
jitter and flips are off because these captions name colours and sides.
"""

dataset = make_pretraining_dataset(
    manifest,
    tokenizer,
    batch_size=16,
    image_size=64,
    horizontal_flip=False,
    colour_jitter=False,
    repeat=True,
)

"""
## The model

A tiny backbone (patch 8 on 64 px images gives an 8 x 8 grid) and the
pretrainer with a small projection head. Everything else uses TIPSv2's
defaults: iBOT++, head-only EMA, multi-granularity captions.
"""

backbone = TIPSv2Backbone(
    vision_patch_size=8,
    vision_hidden_dim=64,
    vision_num_layers=2,
    vision_num_heads=4,
    vision_intermediate_dim=128,
    vision_position_grid=(8, 8),
    text_vocabulary_size=256,
    text_hidden_dim=64,
    text_num_layers=1,
    text_num_heads=4,
    text_intermediate_dim=128,
    text_max_sequence_length=48,
)
pretrainer = TIPSv2Pretrainer(
    backbone,
    head_hidden_dim=256,
    head_bottleneck_dim=64,
    num_prototypes=256,
    ema_momentum=0.99,
)
pretrainer.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.05))
print(pretrainer.parameter_counts())

"""
## Training

`fit` logs every loss term, the learned contrastive temperature, the teacher
temperature and the EMA momentum.
"""

pretrainer.fit(dataset, epochs=2, steps_per_epoch=10)

"""
## Saving a preset

Only the backbone (with tokenizer and image converter) goes into the preset:
the heads are training machinery. The preset loads like any KerasHub one.
"""

preset = write_preset(pretrainer.backbone, os.path.join(workdir, "preset"), proto, image_size=64)
reloaded = TIPSv2Backbone.from_preset(preset)
print("preset:", preset, "| patch tokens:", reloaded.encode_images(keras.ops.ones((1, 64, 64, 3)))["patch_tokens"].shape)

"""
## Next steps

* `python recipes/pretrain.py --manifest your.jsonl --config b14` adds the
  learning-rate schedule, CSV / TensorBoard logs, checkpoints that resume at
  the exact step, and the ShapesWorld benchmark for ShapesWorld data.
* `--init-from tipsv2_b14` continues from published weights with new heads.
* `guides/zero_shot_segmentation.py --preset <your preset>` segments images
  with classes named in text.
"""
