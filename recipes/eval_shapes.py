"""The held-out ShapesWorld benchmark of a preset, on any backend.

Scores what `recipes/pretrain.py` reports after training (zero-shot
segmentation mIoU per vocabulary beside the all-background floor and the
patch oracle, zero-shot classification, retrieval R@1) for a saved preset,
so a preset's numbers can be reproduced after loading it anywhere:

    KERAS_BACKEND=torch python recipes/eval_shapes.py --preset tipsv2_tiny_shapes

The world flags must describe the world the preset was trained on; the
defaults are the tiny config's (64 px images come from the preset's image
converter).
"""

import argparse
import os
import sys

import keras

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras_tipsv2  # noqa: E402,F401  (registers the classes for from_preset)
from keras_tipsv2.shapes import ShapesWorld  # noqa: E402
from keras_tipsv2.shapes.benchmark import evaluate_on_shapes  # noqa: E402
from keras_tipsv2.shapes.benchmark import markdown_report  # noqa: E402
from keras_tipsv2.models.tipsv2_backbone import TIPSv2Backbone  # noqa: E402
from keras_tipsv2.models.tipsv2_image_converter import preset_image_size  # noqa: E402
from keras_tipsv2.models.tipsv2_tokenizer import TIPSv2Tokenizer  # noqa: E402
from keras_tipsv2.utils import atomic_files  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tipsv2_tiny_shapes", help="preset name or local dir")
    parser.add_argument("--images", type=int, default=200, help="held-out images to score")
    parser.add_argument("--image-size", type=int, help="world side in px (default: the preset's converter)")
    parser.add_argument("--radius-range", type=float, nargs=2, default=(0.2, 0.4))
    parser.add_argument("--num-objects", type=int, nargs=2, default=(1, 3))
    parser.add_argument("--describe-background", type=int, choices=(0, 1), default=1,
                        help="whether the world's captions name the background (retrieval texts)")
    parser.add_argument("--templates", choices=("tcl", "imagenet"), default="tcl")
    parser.add_argument("--json", help="also write the results to this file")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    backbone = TIPSv2Backbone.from_preset(args.preset)
    tokenizer = TIPSv2Tokenizer.from_preset(args.preset)
    world = ShapesWorld(
        image_size=args.image_size or preset_image_size(args.preset),
        radius_range=tuple(args.radius_range),
        num_objects=tuple(args.num_objects),
        split="validation",
        describe_background=bool(args.describe_background),
    )
    results = evaluate_on_shapes(
        backbone, tokenizer, world, num_images=args.images, templates=args.templates
    )
    results["backend"] = keras.backend.backend()
    print(markdown_report(results, title=f"{args.preset} on held-out ShapesWorld ({results['backend']})"))
    if args.json:
        atomic_files.write_json(args.json, results)
    return results


if __name__ == "__main__":
    from keras_tipsv2.utils.cli import run

    sys.exit(run(main))
