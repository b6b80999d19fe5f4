"""Image-caption manifests: JSONL or CSV files of image paths and captions.

One record per image, e.g. (JSONL)
    {"image": "images/0001.jpg", "alt_text": "panda zoo 2004",
     "caption_short": "Baby pandas in foliage.", "caption_long": "..."}
Relative image paths are resolved against the manifest's folder. Missing
or empty caption fields become "" and are counted and skipped later by the
pipeline, as are unreadable images.
"""

import csv
import json
import os

import tensorflow as tf

DEFAULT_CAPTION_KEYS = ("caption_short", "caption_long")


def read_manifest(path):
    """Returns the manifest's records as a list of dicts.

    Args:
        path: a ".jsonl" (one JSON object a line) or ".csv" (with a header
            row) file.
    """
    extension = os.path.splitext(path)[1].lower()
    if extension == ".csv":
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    if extension == ".jsonl":
        return _read_jsonl(path)
    raise ValueError(
        f"Unknown manifest format {path!r}; expected a .jsonl or .csv file."
    )


def _read_jsonl(path):
    records = []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{path}, line {number}: not valid JSON ({error.msg})."
                ) from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}, line {number}: expected a JSON object.")
            records.append(record)
    return records


def text_field(record, key):
    """Returns a record's field as a string, "" when missing or null."""
    value = record.get(key)
    return "" if value is None else str(value)


def manifest_examples(
    path,
    image_key="image",
    alt_text_key="alt_text",
    caption_keys=DEFAULT_CAPTION_KEYS,
):
    """Raw examples of a manifest as a `tf.data.Dataset`.

    Args:
        path: the .jsonl or .csv manifest.
        image_key: field holding the image path.
        alt_text_key: field holding the alt-text (paired with CLS_1).
        caption_keys: fields forming the caption pool for CLS_2.

    Returns:
        Dataset of {"image_path": string, "alt_text": string,
        "captions": string (len(caption_keys),)}.
    """
    records = read_manifest(path)
    if not records:
        raise ValueError(f"Manifest {path!r} has no records.")
    if not caption_keys:
        raise ValueError("caption_keys must name at least one caption field.")
    root = os.path.dirname(os.path.abspath(path))
    paths = [_resolve(root, text_field(r, image_key)) for r in records]
    return tf.data.Dataset.from_tensor_slices(
        {
            "image_path": paths,
            "alt_text": [text_field(r, alt_text_key) for r in records],
            "captions": [[text_field(r, k) for k in caption_keys] for r in records],
        }
    )


def _resolve(root, image_path):
    # An empty path stays empty so that it fails to load and is counted.
    if not image_path:
        return ""
    return os.path.join(root, image_path)
