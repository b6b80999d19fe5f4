"""Train a segmentation head on frozen TIPSv2 features with `model.fit`.

A DPT head (the official decoder architecture) or a per-patch linear probe
on ShapesWorld label maps; the backbone stays frozen. `--probe foreground`
runs the official foreground-segmentation linear probe instead
(google-deepmind/tips `pytorch/TIPS_foreground_segmentation_demo.ipynb`:
box-filtered patch labels, logistic regression,
3x3 median filter), with "any object" as foreground.

    python recipes/train_dense_head.py --preset tipsv2_b14 --head dpt \
        --vocabulary shape --image-size 224 --epochs 10 --output /tmp/seg_b14
    python recipes/train_dense_head.py --tiny --head linear --epochs 2
    python recipes/train_dense_head.py --tiny --probe foreground
"""

import argparse
import sys

import keras
import numpy as np

import keras_tipsv2  # noqa: F401  (registers the classes for from_preset)
from keras_tipsv2.shapes.world import ShapesWorld, class_names
from keras_tipsv2.evaluation.foreground_probe import (
    ForegroundProbe,
    average_precision,
    choose_c_leave_one_image_out,
    confident_patches,
    patch_mask_means,
)
from keras_tipsv2.models.tipsv2_backbone import TIPSv2Backbone
from keras_tipsv2.convert.preset import write_task_preset
from keras_tipsv2.models.tipsv2_dense_tasks import TIPSv2DenseSegmenter

TINY_BACKBONE = dict(
    vision_hidden_dim=32,
    vision_num_layers=4,
    vision_num_heads=4,
    vision_intermediate_dim=64,
    vision_position_grid=(8, 8),
    text_vocabulary_size=64,
    text_hidden_dim=32,
    text_num_layers=1,
    text_num_heads=4,
    text_intermediate_dim=64,
    text_max_sequence_length=16,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", help="backbone preset name or local dir")
    source.add_argument("--tiny", action="store_true", help="a random tiny backbone (smoke runs)")
    parser.add_argument("--probe", choices=("segmentation", "foreground"), default="segmentation")
    parser.add_argument("--head", choices=("dpt", "linear"), default="dpt")
    parser.add_argument("--vocabulary", choices=("colour", "shape", "colour_shape"), default="shape")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--train", type=int, default=256, help="training images")
    parser.add_argument("--val", type=int, default=64, help="held-out images")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--fusion-channels", type=int, default=256)
    parser.add_argument("--output", help="directory for the trained task preset")
    return parser.parse_args(argv)


def shapes_arrays(split, count, image_size, vocabulary):
    """(images (N, S, S, 3) float in [0, 1], labels (N, S, S) int32)."""
    world = ShapesWorld(image_size=image_size, split=split)
    samples = [world.sample(i) for i in range(count)]
    images = np.stack([s["image"] for s in samples]).astype("float32") / 255.0
    labels = np.stack([s["labels"][vocabulary] for s in samples]).astype("int32")
    return images, labels


def train_segmentation_head(backbone, args):
    x, y = shapes_arrays("train", args.train, args.image_size, args.vocabulary)
    x_val, y_val = shapes_arrays("validation", args.val, args.image_size, args.vocabulary)
    model = TIPSv2DenseSegmenter(
        backbone,
        num_classes=len(class_names(args.vocabulary)),
        head_type=args.head,
        fusion_channels=args.fusion_channels,
    )
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate))
    before = model.evaluate(x_val, y_val, batch_size=args.batch_size, return_dict=True, verbose=0)
    model.fit(
        x,
        y,
        validation_data=(x_val, y_val),
        batch_size=args.batch_size,
        epochs=args.epochs,
    )
    after = model.evaluate(x_val, y_val, batch_size=args.batch_size, return_dict=True, verbose=0)
    print(f"held-out before training: {before}")
    print(f"held-out after training:  {after}")
    if args.output:
        write_task_preset(model, args.output, overwrite=True)
        print(f"saved to {args.output}")
    return model


def patch_tokens(backbone, images, batch_size):
    batches = [
        keras.ops.convert_to_numpy(
            backbone.encode_images(images[i : i + batch_size])["patch_tokens"]
        )
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(batches)


def foreground_probe(backbone, args):
    """The notebook's protocol with ShapesWorld objects as foreground."""
    if args.image_size % backbone.vision_patch_size:
        raise ValueError("--image-size must be a multiple of the patch size for this probe.")
    x, y = shapes_arrays("train", args.train, args.image_size, args.vocabulary)
    x_val, y_val = shapes_arrays("validation", args.val, args.image_size, args.vocabulary)
    tokens = patch_tokens(backbone, x, args.batch_size)
    means = patch_mask_means((y > 0).astype("float32"), backbone.vision_patch_size)
    features, labels = confident_patches(tokens, means)
    index = np.broadcast_to(np.arange(len(x))[:, None, None], means.shape)
    keep = (means < 0.01) | (means > 0.99)
    # Leave-one-image-out over a handful of images keeps this quick.
    few = index[keep] < 9
    c, _ = choose_c_leave_one_image_out(features[few], labels[few], index[keep][few])
    probe = ForegroundProbe(c).fit(features, labels)
    val_tokens = patch_tokens(backbone, x_val, args.batch_size)
    val_means = patch_mask_means((y_val > 0).astype("float32"), backbone.vision_patch_size)
    vx, vy = confident_patches(val_tokens, val_means)
    print(f"C = {c:.0e}; held-out patch AP = {average_precision(vy, probe.predict_proba(vx)):.3f}")
    return probe


def main(argv=None):
    args = parse_args(argv)
    if args.tiny:
        backbone = TIPSv2Backbone(**TINY_BACKBONE)
        args.fusion_channels = min(args.fusion_channels, 16)
    else:
        backbone = TIPSv2Backbone.from_preset(args.preset)
    if args.probe == "foreground":
        return foreground_probe(backbone, args)
    return train_segmentation_head(backbone, args)


if __name__ == "__main__":
    from keras_tipsv2.utils.cli import run

    sys.exit(run(main))
