"""Image decoding and stateless, seeded augmentation for tf.data.

Every random op takes an explicit stateless seed (a pair of integers), so a
pipeline is a pure function of its seed and element order. Defaults follow
DINOv2's multi-crop recipe (facebookresearch/dinov2, `data/augmentations.py`): random-resized
crops, horizontal flip 0.5, colour jitter (0.4, 0.4, 0.2, 0.1) with p = 0.8;
local crops use scale (0.05, 0.4). Outputs are float32 RGB in [0, 1], the
range TIPSv2 encoders take.
"""

import tensorflow as tf

from keras_tipsv2.data.common import ASPECT_RATIO_RANGE
from keras_tipsv2.data.common import GLOBAL_CROP_SCALE
from keras_tipsv2.data.common import LOCAL_CROP_SCALE

JITTER_STRENGTH = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
JITTER_PROBABILITY = 0.8


def decode_image(data):
    """Decodes JPEG/PNG/BMP/GIF bytes to a (H, W, 3) uint8 tensor."""
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def load_image(example):
    """Returns the uint8 image of a raw example, decoding it if needed.

    A raw example holds exactly one of "image_path" (a file to read),
    "image_bytes" (encoded bytes) or "image" (decoded uint8 pixels).
    """
    if "image" in example:
        return tf.ensure_shape(tf.cast(example["image"], tf.uint8), [None, None, 3])
    if "image_bytes" in example:
        return decode_image(example["image_bytes"])
    if "image_path" in example:
        return decode_image(tf.io.read_file(example["image_path"]))
    raise ValueError(
        "A raw example needs one of 'image_path', 'image_bytes' or 'image'; "
        f"got keys {sorted(example)}."
    )


def try_load_image(example):
    """Returns (image, ok): ok is False when the file is missing or corrupt.

    Decoding errors are caught inside a one-element dataset with
    `ignore_errors`, so a bad image becomes a value that can be counted
    instead of an exception that ends the pipeline.
    """
    if "image" in example:
        # Decoded pixels cannot fail to decode; the nested dataset below
        # costs about as much as the whole augmentation of an example.
        return load_image(example), tf.constant(True)
    attempt = (
        tf.data.Dataset.from_tensors(example)
        .map(load_image)
        .ignore_errors()
    )
    empty = (tf.zeros([0, 0, 3], tf.uint8), tf.constant(False))
    image, ok = attempt.reduce(empty, lambda _, image: (image, tf.constant(True)))
    image.set_shape([None, None, 3])
    return image, ok


def split_seed(seed, count):
    """Returns `count` independent stateless seeds derived from `seed`."""
    return tf.unstack(tf.random.experimental.stateless_split(seed, count))


def random_resized_crop(
    image, size, seed, scale=GLOBAL_CROP_SCALE, ratio=ASPECT_RATIO_RANGE
):
    """Crops a random box of area fraction in `scale`, resized to size x size.

    Args:
        image: (H, W, 3) uint8 or float image.
        size: output side in pixels.
        seed: stateless seed pair.
        scale: (min, max) area fraction of the crop; (1, 1) keeps the whole
            image (then only resized).
        ratio: (min, max) aspect ratio of the crop.

    Returns:
        (size, size, 3) float32 in [0, 1].
    """
    image = to_unit_float(image)
    begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=ratio,
        area_range=scale,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    crop = tf.slice(image, begin, extent)
    resized = tf.image.resize(crop, [size, size], method="bilinear", antialias=True)
    return tf.clip_by_value(resized, 0.0, 1.0)


def to_unit_float(image):
    if image.dtype == tf.uint8:
        return tf.cast(image, tf.float32) / 255.0
    return tf.cast(image, tf.float32)


def random_flip(image, seed):
    """Flips left-right with probability 0.5."""
    return tf.image.stateless_random_flip_left_right(image, seed=seed)


def colour_jitter(
    image, seed, strength=JITTER_STRENGTH, probability=JITTER_PROBABILITY
):
    """Random brightness, contrast, saturation and hue, applied with `probability`.

    Args:
        image: float image in [0, 1].
        seed: stateless seed pair.
        strength: (brightness, contrast, saturation, hue); the first three
            scale by a factor in [1 - s, 1 + s], hue shifts by up to +-s of a
            full turn (torchvision's ColorJitter convention).
        probability: chance of applying the jitter at all.
    """
    seeds = split_seed(seed, 5)
    brightness, contrast, saturation, hue = strength

    def factor(s, amount):
        return tf.random.stateless_uniform([], s, 1.0 - amount, 1.0 + amount)

    jittered = image * factor(seeds[0], brightness)
    jittered = tf.image.adjust_contrast(jittered, factor(seeds[1], contrast))
    jittered = tf.image.adjust_saturation(jittered, factor(seeds[2], saturation))
    jittered = tf.image.adjust_hue(
        jittered, tf.random.stateless_uniform([], seeds[3], -hue, hue)
    )
    jittered = tf.clip_by_value(jittered, 0.0, 1.0)
    apply = tf.random.stateless_uniform([], seeds[4]) < probability
    return tf.where(apply, jittered, image)


def augmented_view(
    image, size, seed, scale=GLOBAL_CROP_SCALE, flip=True, jitter=True
):
    """One augmented view: random-resized crop, then optional flip and jitter.

    Returns:
        (size, size, 3) float32 in [0, 1].
    """
    seeds = split_seed(seed, 3)
    view = random_resized_crop(image, size, seeds[0], scale=scale)
    if flip:
        view = random_flip(view, seeds[1])
    if jitter:
        view = colour_jitter(view, seeds[2])
    # Decoded images have an unknown channel count in the graph; models
    # check (B, H, W, 3) statically (TensorFlow traces with this shape).
    return tf.ensure_shape(view, [size, size, 3])


def local_crops(
    image, count, size, seed, scale=LOCAL_CROP_SCALE, flip=True, jitter=True
):
    """DINO's small local views of one image.

    Args:
        image: (H, W, 3) image.
        count: number of crops M (at least 1).
        size: side s of each crop.
        seed: stateless seed pair.
        scale: (min, max) area fraction of each crop.

    Returns:
        (M, s, s, 3) float32 in [0, 1].
    """
    seeds = split_seed(seed, count)
    return tf.stack(
        [augmented_view(image, size, s, scale, flip, jitter) for s in seeds]
    )
