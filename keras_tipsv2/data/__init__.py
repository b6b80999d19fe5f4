"""tf.data input pipelines for TIPSv2 pretraining.

Manifests (JSONL/CSV), COCO captions and TFRecord shards become *raw
examples*, which `make_pretraining_dataset` augments, crops and tokenises.
The synthetic ShapesWorld set lives in `keras_tipsv2.shapes`.

The modules need TensorFlow and are imported on first use, so `import
keras_tipsv2.data` works without it (JAX- or torch-only machines).
"""

import importlib

# Public names, and the module each lives in.
_MODULES = {
    "CAPTION_MODES": "captions",
    "caption_pair": "captions",
    "sample_caption": "captions",
    "coco_examples": "coco",
    "manifest_examples": "manifest",
    "read_manifest": "manifest",
    "DataSourceError": "pipeline",
    "SkipCounter": "pipeline",
    "make_pretraining_dataset": "pipeline",
    "raw_examples": "pipeline",
    "tf_data_tokenizer": "pipeline",
    "tfrecord_examples": "tfrecord",
    "write_tfrecords": "tfrecord",
}


def __getattr__(name):
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{_MODULES[name]}")
    return getattr(module, name)
