"""
Title: Zero-shot semantic segmentation with TIPSv2
Author: keras_tipsv2 contributors
Description: Segment an image into classes named in plain text, score the
    result with mIoU, and look at what the patch tokens encode.
Accelerator: None (CPU is enough for the tiny preset)

Run it end to end:

    python guides/zero_shot_segmentation.py --preset tipsv2_tiny_shapes

Any preset works (a local directory too); the tiny ShapesWorld preset keeps it
to seconds on a CPU.
"""

"""
## Introduction

TIPSv2 trains its patch tokens to line up with text. That makes zero-shot
segmentation a matter of geometry: embed a prompt per class, embed every
14 x 14 patch, and give each pixel the class whose prompt is nearest. The
official recipe (google-deepmind/tips, `pytorch/TIPS_zeroshot_segmentation.ipynb`) adds three details that matter:

1. **Prompt ensembling** - each class name is filled into 9 "TCL" templates
   ("itap of a {}.", "a photo of many {}.", ...), the 9 text embeddings are
   L2-normalised, averaged and normalised again.
2. **The MaskCLIP values trick** - in the last ViT block the attention is
   replaced by its value path, so each patch token describes its own patch
   rather than a global summary.
3. **Sliding windows** - the image (short side 448) is scored in 448 x 448
   windows with stride 336; each window's cosine map is upsampled, softmaxed
   over classes and averaged where windows overlap.

`TIPSv2ZeroShotSegmenter` is that recipe in one object.
"""

"""
## Setup
"""

import argparse
import os

import numpy as np

import keras_tipsv2  # noqa: F401  (registers the classes for from_preset)
from keras_tipsv2.shapes.world import ShapesWorld
from keras_tipsv2.shapes.world import class_names
from keras_tipsv2.evaluation.miou import class_iou
from keras_tipsv2.evaluation.miou import confusion_matrix
from keras_tipsv2.evaluation.miou import mean_iou
from keras_tipsv2.evaluation.pictures import segmentation_picture
from keras_tipsv2.models.tipsv2_zero_shot_segmenter import TIPSv2ZeroShotSegmenter
from keras_tipsv2.evaluation.pca import pca_image

parser = argparse.ArgumentParser()
parser.add_argument("--preset", default="tipsv2_tiny_shapes")
parser.add_argument("--vocabulary", default="shape", choices=("colour", "shape", "colour_shape"))
parser.add_argument("--image-size", type=int, default=64)
parser.add_argument("--out-dir", default=".")
args = parser.parse_args()

"""
## Load the segmenter

`from_preset` loads the backbone and the tokenizer. The window geometry is
configurable: the official numbers (short side 448, window 448, stride 336)
suit 448-px models; for the tiny preset, trained on 64-px ShapesWorld images,
we keep the same proportions at 64 / 64 / 48.
"""

size = args.image_size
segmenter = TIPSv2ZeroShotSegmenter.from_preset(
    args.preset, short_side=size, window_size=size, window_stride=size * 3 // 4
)

"""
## An image with a known answer

ShapesWorld draws coloured shapes on textured backgrounds and returns the
pixel labels with the image, so we can score the segmentation exactly.
Class 0 is "background".
"""

world = ShapesWorld(image_size=size, split="validation")
sample = world.sample(0)
image = sample["image"]
truth = sample["labels"][args.vocabulary]
names = class_names(args.vocabulary)
print("Caption:", sample["caption_short"])
print("Classes:", names)

"""
## Name the classes

`set_classes` encodes every (class, template) prompt once and caches the
class embeddings; every later `segment` call reuses them. Here "background"
is prompted like any other class. The alternative, TCL's rule for datasets
with a background class, is a constant score: pass
`background_threshold=0.5` with the foreground names only, and a pixel becomes
background when no class beats the threshold.
"""

segmenter.set_classes(names, templates="tcl")

"""
## Segment

`segment` returns the label map and the per-class scores at the image's
original size. In "slide" mode the scores are window-averaged probabilities;
in "whole" mode (one pass over the full image) they are raw cosines.
"""

slide = segmenter.segment(image, mode="slide")
whole = segmenter.segment(image, mode="whole")
print("Label map:", slide["labels"].shape, "scores:", slide["scores"].shape)

"""
## Score it

mIoU comes from a confusion matrix (rows = truth, columns = prediction),
averaged over the classes that occur in either. Benchmarks add ignore labels
and a label shift (ADE20K ignores 0 and 255 and subtracts 1); our labels are
already class ids.
"""

for mode, result in (("slide", slide), ("whole", whole)):
    confusion = confusion_matrix(result["labels"], truth, len(names))
    print(f"{mode:>5}: mIoU {100 * mean_iou(confusion):.1f}")
    for name, iou in zip(names, class_iou(confusion)):
        if iou == iou:  # skip classes absent from image and prediction
            print(f"       {name:<16} IoU {100 * iou:5.1f}")

"""
## What the values trick buys

Without it (`values_trick=None`) the last block mixes information across
the image and the patch tokens are less local. Comparing the two label maps
shows how many pixels change.
"""

plain = segmenter.segment(image, mode="slide", values_trick=None)
changed = np.mean(plain["labels"] != slide["labels"])
print(f"Pixels labelled differently without the values trick: {100 * changed:.1f}%")

"""
## Pictures

Two pictures tell a lot about a model: the first three principal
components of its patch tokens (regions the model groups together share a
colour), and the segmentation laid over the image. `python -m
keras_tipsv2.visualize` makes both from the command line.
"""

os.makedirs(args.out_dir, exist_ok=True)
pca_path = os.path.join(args.out_dir, "zero_shot_pca.png")
overlay_path = os.path.join(args.out_dir, "zero_shot_segmentation.png")
pca_image(segmenter.backbone, image, short_side=size).save(pca_path)
segmentation_picture(image, slide["labels"], segmenter.label_names).save(overlay_path)
print("Wrote", pca_path, "and", overlay_path)

"""
## Next steps

* Benchmarks: `recipes/eval_zero_shot_segmentation.py --dataset ade20k`
  (also `voc`, `voc20`, `context`, `context60`) runs this protocol over a
  whole validation set and prints a per-class IoU table.
* Any dataset in the ADE20K folder layout with a `--classes` file works too,
  e.g. the ShapesWorld sets that `keras_tipsv2.shapes.world.write_ade_layout`
  writes.
"""
