"""keras_tipsv2: TIPSv2 image-text encoders and their training recipe for Keras 3."""

from keras_hub.src.utils.preset_utils import register_presets

from keras_tipsv2.models.tipsv2_backbone import TIPSv2Backbone
from keras_tipsv2.models.tipsv2_presets import backbone_presets

register_presets(backbone_presets, TIPSv2Backbone)

__version__ = "0.1.0"
