"""Zero-shot semantic segmentation mIoU of a TIPSv2 preset.

The protocol of the official TIPS notebook
(google-deepmind/tips `pytorch/TIPS_zeroshot_segmentation.ipynb`): short
side 448, 448 / 336 sliding windows, MaskCLIP values trick, 9 TCL prompt
templates, mIoU from a confusion matrix at annotation resolution.

    python recipes/eval_zero_shot_segmentation.py --preset tipsv2_l14 \
        --data /data/ADEChallengeData2016 --dataset ade20k

Saved notebook output for TIPSv2 L/14 on ADE20K-150: mIoU 25.06.
"""

import argparse
import sys

import keras_tipsv2  # noqa: F401  (registers the classes for from_preset)
from keras_tipsv2.evaluation.datasets import DATASETS
from keras_tipsv2.evaluation.datasets import load_segmentation_dataset
from keras_tipsv2.evaluation.segmentation import evaluate_segmentation
from keras_tipsv2.evaluation.segmentation import iou_table
from keras_tipsv2.evaluation.segmentation import set_dataset_classes
from keras_tipsv2.models.tipsv2_zero_shot_segmenter import TIPSv2ZeroShotSegmenter


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", required=True, help="preset name or local dir")
    parser.add_argument("--data", required=True, help="dataset root folder")
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="ade20k")
    parser.add_argument(
        "--classes",
        help="text file with one class name per line in label order; replaces "
        "the benchmark's list (e.g. a ShapesWorld set in the ADE20K layout)",
    )
    parser.add_argument("--mode", choices=("slide", "whole"), default="slide")
    parser.add_argument(
        "--values-trick",
        choices=("values", "values_no_residual", "none"),
        default="values",
    )
    parser.add_argument("--templates", choices=("tcl", "imagenet"), default="tcl")
    parser.add_argument(
        "--background-threshold",
        type=float,
        help="VOC21 / PC60: constant score for class 0 (else 'background' is prompted)",
    )
    parser.add_argument("--max-images", type=int, help="score only the first N")
    parser.add_argument("--short-side", type=int, default=448)
    parser.add_argument("--window", type=int, default=448)
    parser.add_argument("--stride", type=int, default=336)
    parser.add_argument("--batch-size", type=int, default=8, help="windows per pass")
    return parser.parse_args(argv)


def read_class_names(path):
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def main(argv=None):
    args = parse_args(argv)
    class_names = read_class_names(args.classes) if args.classes else None
    dataset = load_segmentation_dataset(args.dataset, args.data, class_names)
    segmenter = TIPSv2ZeroShotSegmenter.from_preset(
        args.preset,
        short_side=args.short_side,
        window_size=args.window,
        window_stride=args.stride,
        batch_size=args.batch_size,
    )
    set_dataset_classes(segmenter, dataset, args.templates, args.background_threshold)
    score = evaluate_segmentation(
        segmenter,
        dataset,
        mode=args.mode,
        values_trick=None if args.values_trick == "none" else args.values_trick,
        max_images=args.max_images,
        progress=True,
    )
    print(iou_table(dataset.class_names, score.class_iou()))
    print(f"{dataset.name} mIoU ({args.mode}): {100 * score.mean_iou():.2f}")
    return score


if __name__ == "__main__":
    from keras_tipsv2.utils.cli import run

    sys.exit(run(main))
