"""keras_tipsv2: TIPSv2 image-text encoders and their training recipe for Keras 3."""

from keras_tipsv2.models.tipsv2_backbone import TIPSv2Backbone

__version__ = "0.1.0"
