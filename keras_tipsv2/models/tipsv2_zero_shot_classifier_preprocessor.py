import keras
from keras_hub.models import Preprocessor

from keras_tipsv2.models.tipsv2_backbone import TIPSv2Backbone
from keras_tipsv2.models.tipsv2_image_converter import TIPSv2ImageConverter
from keras_tipsv2.models.tipsv2_inputs import are_files_or_pil, read_images
from keras_tipsv2.models.tipsv2_tokenizer import TIPSv2Tokenizer


@keras.saving.register_keras_serializable(package="keras_tipsv2")
class TIPSv2ZeroShotClassifierPreprocessor(Preprocessor):
    """Raw images to `TIPSv2ZeroShotClassifier` inputs; holds the tokenizer
    its `set_classes` encodes the prompts with.

    Called on images (what `TIPSv2ImageConverter` takes: a uint8 or float
    [0, 1] batch, paths, PIL images), it returns them converted; `(x, y,
    sample_weight)` tuples pass `y` and `sample_weight` through unchanged.
    Without an image converter, paths and PIL images are read (one size per
    batch) and arrays pass through as they are; the classifier converts
    uint8 itself.

    Args:
        tokenizer: a `TIPSv2Tokenizer`, used by `set_classes` only.
        image_converter: a `TIPSv2ImageConverter`, or None.

    Example:
    ```python
    preprocessor = TIPSv2ZeroShotClassifierPreprocessor.from_preset("tipsv2_tiny_shapes")
    images = preprocessor(["photo_1.jpg", "photo_2.jpg"])   # (2, 64, 64, 3) in [0, 1]
    ```
    """

    backbone_cls = TIPSv2Backbone
    tokenizer_cls = TIPSv2Tokenizer
    image_converter_cls = TIPSv2ImageConverter

    def __init__(self, tokenizer=None, image_converter=None, **kwargs):
        super().__init__(**kwargs)
        self.tokenizer = tokenizer
        self.image_converter = image_converter

    def call(self, x, y=None, sample_weight=None):
        if self.image_converter is not None:
            x = self.image_converter(x)
        elif are_files_or_pil(x):
            x = read_images(x)
        return keras.utils.pack_x_y_sample_weight(x, y, sample_weight)
