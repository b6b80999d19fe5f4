"""Input pipelines for TIPSv2 pretraining and the synthetic ShapesWorld set.

ShapesWorld and the NumPy batch source (`ShapesWorldBatches`) need no
TensorFlow, so JAX- or torch-only machines (an accelerator image without
TensorFlow, say) can train on ShapesWorld. The tf.data pipelines are
imported on first use, so `import keras_tipsv2.data` works without it.
"""

import importlib

from keras_tipsv2.data.shapes import COLOURS
from keras_tipsv2.data.shapes import SHAPES
from keras_tipsv2.data.shapes import VOCABULARIES
from keras_tipsv2.data.shapes import ShapesWorld
from keras_tipsv2.data.shapes import class_names
from keras_tipsv2.data.shapes import write_ade_layout
from keras_tipsv2.data.shapes import write_manifest
from keras_tipsv2.data.shapes_batches import ShapesWorldBatches

# Names that need TensorFlow, and the module each lives in.
_TF_DATA = {
    "CAPTION_MODES": "captions",
    "caption_pair": "captions",
    "sample_caption": "captions",
    "coco_examples": "coco",
    "manifest_examples": "manifest",
    "read_manifest": "manifest",
    "SkipCounter": "pipeline",
    "make_pretraining_dataset": "pipeline",
    "raw_examples": "pipeline",
    "shapes_examples": "pipeline",
    "tfrecord_examples": "tfrecord",
    "write_tfrecords": "tfrecord",
}


def __getattr__(name):
    if name not in _TF_DATA:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{_TF_DATA[name]}")
    return getattr(module, name)
