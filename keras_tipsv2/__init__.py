"""keras_tipsv2: TIPSv2 image-text encoders and their training recipe for Keras 3.

Importing the package registers every saveable class with Keras and the
TIPS preset loader with KerasHub (`keras_tipsv2.convert.preset_loader`), so
that `keras_hub.models.Backbone.from_preset`, the KerasHub tokenizer and
image-converter loaders and every `TIPSv2*.from_preset` load KerasHub
presets, `transformers` checkpoints, the official npz pair and the
published short names.
"""

from keras_hub.src.utils.preset_utils import register_presets

from keras_tipsv2.models import prompt_templates
from keras_tipsv2.models.tipsv2_backbone import TIPSv2Backbone
from keras_tipsv2.models.tipsv2_dense_tasks import (
    TIPSv2DenseSegmenter,
    TIPSv2DepthEstimator,
    TIPSv2NormalEstimator,
)
from keras_tipsv2.models.tipsv2_image_converter import TIPSv2ImageConverter
from keras_tipsv2.models.tipsv2_preprocessor import TIPSv2Preprocessor
from keras_tipsv2.models.tipsv2_presets import backbone_presets
from keras_tipsv2.models.tipsv2_tokenizer import TIPSv2Tokenizer
from keras_tipsv2.models.tipsv2_zero_shot_classifier import TIPSv2ZeroShotClassifier
from keras_tipsv2.models.tipsv2_zero_shot_segmenter import TIPSv2ZeroShotSegmenter

from keras_tipsv2.training.distiller import TIPSv2Distiller
from keras_tipsv2.training.pretrainer import TIPSv2Pretrainer
from keras_tipsv2.convert import preset_loader

register_presets(backbone_presets, TIPSv2Backbone)
preset_loader.register()

__version__ = "0.1.0"
