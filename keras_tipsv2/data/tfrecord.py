"""TFRecord shards of encoded images and captions.

Each record is a `tf.train.Example` with features
    "image":    bytes, the encoded image file (JPEG/PNG) as stored;
    "alt_text": bytes, UTF-8;
    "captions": bytes list, the caption pool (any length).
"""

import os

import numpy as np
import tensorflow as tf

FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "alt_text": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "captions": tf.io.VarLenFeature(tf.string),
}


def encoded_image(example):
    """Returns the encoded image bytes of a raw example (read or encoded)."""
    if "image_bytes" in example:
        return _as_bytes(example["image_bytes"])
    if "image_path" in example:
        with open(_as_bytes(example["image_path"]).decode(), "rb") as f:
            return f.read()
    if "image" in example:
        return tf.io.encode_png(np.asarray(example["image"], np.uint8)).numpy()
    raise ValueError(
        "A raw example needs one of 'image_path', 'image_bytes' or 'image'; "
        f"got keys {sorted(example)}."
    )


def _as_bytes(value):
    value = value.numpy() if hasattr(value, "numpy") else value
    return value.encode() if isinstance(value, str) else bytes(value)


def serialize_example(example):
    """Returns one raw example as a serialised `tf.train.Example`."""
    captions = np.asarray(example["captions"]).reshape(-1)

    def feature(values):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))

    return tf.train.Example(
        features=tf.train.Features(
            feature={
                "image": feature([encoded_image(example)]),
                "alt_text": feature([_as_bytes(example["alt_text"])]),
                "captions": feature([_as_bytes(c) for c in captions]),
            }
        )
    ).SerializeToString()


def write_tfrecords(examples, directory, num_shards=1, prefix="shard"):
    """Writes raw examples round-robin into `num_shards` TFRecord files.

    Args:
        examples: iterable of raw examples, e.g. a dataset from
            `manifest_examples` or `coco_examples` (images are read from
            disk) or dicts with "image_bytes"/"image", "alt_text", "captions".
        directory: output folder (created).
        num_shards: number of files, named
            "<prefix>-00000-of-00004.tfrecord".
        prefix: file name prefix.

    Returns:
        The list of shard paths.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be at least 1; got {num_shards}.")
    os.makedirs(directory, exist_ok=True)
    paths = [
        os.path.join(directory, f"{prefix}-{i:05d}-of-{num_shards:05d}.tfrecord")
        for i in range(num_shards)
    ]
    writers = [tf.io.TFRecordWriter(p) for p in paths]
    try:
        for index, example in enumerate(examples):
            writers[index % num_shards].write(serialize_example(example))
    finally:
        for writer in writers:
            writer.close()
    return paths


def parse_example(record):
    """Parses one serialised record into a raw example."""
    parsed = tf.io.parse_single_example(record, FEATURES)
    return {
        "image_bytes": parsed["image"],
        "alt_text": parsed["alt_text"],
        "captions": tf.sparse.to_dense(parsed["captions"], default_value=""),
    }


def tfrecord_examples(file_pattern):
    """Raw examples of TFRecord shards as a `tf.data.Dataset`.

    Args:
        file_pattern: a glob such as "shards/train-*.tfrecord", or a list of
            files. Files are read in sorted order.

    Returns:
        Dataset of {"image_bytes", "alt_text", "captions" (K,)}.
    """
    patterns = [file_pattern] if isinstance(file_pattern, str) else file_pattern
    files = sorted(f for p in patterns for f in tf.io.gfile.glob(p))
    if not files:
        raise ValueError(f"No TFRecord files match {file_pattern!r}.")
    return tf.data.TFRecordDataset(files).map(
        parse_example, num_parallel_calls=tf.data.AUTOTUNE
    )
