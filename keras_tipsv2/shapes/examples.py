"""ShapesWorld samples as the raw-example `tf.data.Dataset` the pretraining
pipeline reads (`keras_tipsv2.data.make_pretraining_dataset`)."""

import numpy as np
import tensorflow as tf


def shapes_examples(world, num_samples=None, start=0):
    """Raw examples of a `ShapesWorld`, generated in memory (no disk).

    Args:
        world: the `ShapesWorld` (its split and seed choose the samples).
        num_samples: None for an unlimited stream rendered on the fly;
            otherwise this many samples are rendered once and kept in memory,
            which is faster per epoch.
        start: index of the first sample.

    Returns:
        Dataset of {"image" uint8 (S, S, 3), "alt_text",
        "captions" [caption_short, caption_long]}.
    """
    size = world.image_size
    signature = {
        "image": tf.TensorSpec([size, size, 3], tf.uint8),
        "alt_text": tf.TensorSpec([], tf.string),
        "captions": tf.TensorSpec([2], tf.string),
    }

    def raw(index):
        sample = world.sample(index)
        captions = [sample["caption_short"], sample["caption_long"]]
        return {"image": sample["image"], "alt_text": sample["alt_text"], "captions": captions}

    if num_samples is None:

        def stream():
            index = start
            while True:
                yield raw(index)
                index += 1

        return tf.data.Dataset.from_generator(stream, output_signature=signature)
    samples = [raw(i) for i in range(start, start + num_samples)]
    return tf.data.Dataset.from_tensor_slices(
        {
            "image": np.stack([s["image"] for s in samples]),
            "alt_text": [s["alt_text"] for s in samples],
            "captions": [s["captions"] for s in samples],
        }
    )
