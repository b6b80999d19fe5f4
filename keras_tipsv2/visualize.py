"""Pictures of what a TIPSv2 model sees in an image.

    python -m keras_tipsv2.visualize IMAGE --preset P --out pca.png
    python -m keras_tipsv2.visualize IMAGE --preset P --segment "cat,grass,sky" --out seg.png

The first renders the first three principal components of the patch tokens
as RGB beside the image; the second a zero-shot segmentation overlay with a
legend of the classes found.
"""

import argparse
import sys

from keras_tipsv2.evaluation.pca import pca_image
from keras_tipsv2.evaluation.pictures import segmentation_picture
from keras_tipsv2.models.tipsv2_images import read_image_file
from keras_tipsv2.models.tipsv2_zero_shot_segmenter import TIPSv2ZeroShotSegmenter


def segmentation_image(segmenter, image, class_names, mode="slide"):
    """The image, its zero-shot segmentation overlay and a legend."""
    segmenter.set_classes(class_names)
    result = segmenter.segment(image, mode=mode)
    return segmentation_picture(image, result["labels"], segmenter.label_names)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_tipsv2.visualize", description=__doc__.split("\n")[0]
    )
    parser.add_argument("image", help="path of an RGB image")
    parser.add_argument("--preset", required=True, help="preset name or local dir")
    parser.add_argument("--out", default="pca.png", help="output PNG path")
    parser.add_argument(
        "--segment", help='comma-separated class names, e.g. "cat,grass,sky"'
    )
    parser.add_argument("--mode", choices=("slide", "whole"), default="slide")
    parser.add_argument("--short-side", type=int, default=448)
    parser.add_argument(
        "--window", type=int, default=None, help="slide window (default: short side)"
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    image = read_image_file(args.image)
    if args.segment:
        names = [n.strip() for n in args.segment.split(",") if n.strip()]
        if not names:
            raise ValueError("--segment needs at least one class name.")
        window = args.window or args.short_side
        segmenter = TIPSv2ZeroShotSegmenter.from_preset(
            args.preset,
            short_side=args.short_side,
            window_size=window,
            window_stride=max(1, window * 3 // 4),
        )
        picture = segmentation_image(segmenter, image, names, args.mode)
    else:
        from keras_tipsv2.models.tipsv2_backbone import TIPSv2Backbone

        backbone = TIPSv2Backbone.from_preset(args.preset)
        picture = pca_image(backbone, image, args.short_side)
    picture.save(args.out)
    print(f"Wrote {args.out} ({picture.width}x{picture.height}).")


if __name__ == "__main__":
    from keras_tipsv2.utils.cli import run

    sys.exit(run(main))
