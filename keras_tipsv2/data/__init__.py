"""tf.data pipelines for TIPSv2 pretraining and the synthetic ShapesWorld set."""

from keras_tipsv2.data.captions import CAPTION_MODES
from keras_tipsv2.data.captions import caption_pair
from keras_tipsv2.data.captions import sample_caption
from keras_tipsv2.data.coco import coco_examples
from keras_tipsv2.data.manifest import manifest_examples
from keras_tipsv2.data.manifest import read_manifest
from keras_tipsv2.data.pipeline import SkipCounter
from keras_tipsv2.data.pipeline import make_pretraining_dataset
from keras_tipsv2.data.pipeline import raw_examples
from keras_tipsv2.data.pipeline import shapes_examples
from keras_tipsv2.data.shapes import COLOURS
from keras_tipsv2.data.shapes import SHAPES
from keras_tipsv2.data.shapes import VOCABULARIES
from keras_tipsv2.data.shapes import ShapesWorld
from keras_tipsv2.data.shapes import class_names
from keras_tipsv2.data.shapes import write_ade_layout
from keras_tipsv2.data.shapes import write_manifest
from keras_tipsv2.data.tfrecord import tfrecord_examples
from keras_tipsv2.data.tfrecord import write_tfrecords
