"""ShapesWorld: a procedural image-caption set with pixel labels, and the
held-out benchmark that scores a model on it.

- `world`: the seeded generator (`ShapesWorld`), its vocabularies and the
  on-disk manifest / ADE20K layouts.
- `batches`: `ShapesWorldBatches`, NumPy training batches with no TensorFlow.
- `examples`: `shapes_examples`, the raw-example `tf.data` source for
  `keras_tipsv2.data.make_pretraining_dataset` (imported on first use).
- `tokenizer`: a SentencePiece model trained on ShapesWorld captions.
- `benchmark`: zero-shot segmentation, classification and retrieval on
  held-out images (`evaluate_on_shapes`, `markdown_report`, `save_pictures`).
"""

import importlib

from keras_tipsv2.shapes.batches import ShapesWorldBatches
from keras_tipsv2.shapes.world import COLOURS
from keras_tipsv2.shapes.world import SHAPES
from keras_tipsv2.shapes.world import VOCABULARIES
from keras_tipsv2.shapes.world import ShapesWorld
from keras_tipsv2.shapes.world import class_names
from keras_tipsv2.shapes.world import write_ade_layout
from keras_tipsv2.shapes.world import write_manifest

# Names whose modules import TensorFlow, the models or sentencepiece, and
# the module each lives in; imported on first use.
_LAZY = {
    "shapes_examples": "examples",
    "train_shapes_tokenizer": "tokenizer",
    "evaluate_on_shapes": "benchmark",
    "markdown_report": "benchmark",
    "save_pictures": "benchmark",
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
    return getattr(module, name)
