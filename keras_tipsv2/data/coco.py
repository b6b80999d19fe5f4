"""COCO captions (captions_train2017.json layout) as raw examples.

COCO has no alt-text: the first listed caption of an image stands in for it
(CLS_1), and all of the image's captions (usually five) form the pool from
which CLS_2's caption is drawn. Images without captions keep an empty pool
and are counted and skipped by the pipeline.
"""

import json
import os

import tensorflow as tf


def read_coco_captions(annotations_path):
    """Returns [(file_name, [captions...]), ...] in the file's image order."""
    with open(annotations_path) as f:
        data = json.load(f)
    for key in ("images", "annotations"):
        if key not in data:
            raise ValueError(
                f"{annotations_path!r} is not a COCO captions file: no {key!r} list."
            )
    pools = {image["id"]: [] for image in data["images"]}
    for annotation in data["annotations"]:
        if annotation["image_id"] not in pools:
            raise ValueError(
                f"{annotations_path!r}: caption for unknown image_id "
                f"{annotation['image_id']}."
            )
        pools[annotation["image_id"]].append(str(annotation.get("caption") or ""))
    return [(image["file_name"], pools[image["id"]]) for image in data["images"]]


def coco_examples(annotations_path, image_dir):
    """Raw examples of a COCO captions file as a `tf.data.Dataset`.

    Args:
        annotations_path: e.g. "annotations/captions_train2017.json".
        image_dir: folder holding the images named by "file_name".

    Returns:
        Dataset of {"image_path", "alt_text", "captions" (K,)}, K the largest
        caption count, shorter pools padded with "".
    """
    entries = read_coco_captions(annotations_path)
    if not entries:
        raise ValueError(f"{annotations_path!r} lists no images.")
    width = max(1, max(len(pool) for _, pool in entries))
    pools = [pool + [""] * (width - len(pool)) for _, pool in entries]
    return tf.data.Dataset.from_tensor_slices(
        {
            "image_path": [os.path.join(image_dir, name) for name, _ in entries],
            "alt_text": [pool[0] for pool in pools],
            "captions": pools,
        }
    )
