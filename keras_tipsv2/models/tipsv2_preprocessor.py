import keras
from keras_hub.models import Preprocessor

from keras_tipsv2.models.tipsv2_backbone import TIPSv2Backbone
from keras_tipsv2.models.tipsv2_image_converter import TIPSv2ImageConverter
from keras_tipsv2.models.tipsv2_tokenizer import TIPSv2Tokenizer

INPUT_KEYS = ("images", "prompts")


@keras.saving.register_keras_serializable(package="keras_tipsv2")
class TIPSv2Preprocessor(Preprocessor):
    """Raw images and prompts to `TIPSv2Backbone` inputs.

    Call it on a dict with "images", "prompts" or both; it returns the
    matching subset of {"images", "token_ids", "padding_mask"}. Images go
    through the image converter (RGB float32 in [0, 1], resized), prompts
    through the tokenizer (lowercased, padded to `sequence_length`). Works
    eagerly, in `tf.data` and in Grain; `(x, y, sample_weight)` tuples pass
    `y` and `sample_weight` through unchanged.

    `from_preset` works on a directory written by the backbone's, the
    tokenizer's and the image converter's `save_to_preset` (no
    `preprocessor.json` needed).

    Args:
        tokenizer: a `TIPSv2Tokenizer`.
        image_converter: a `TIPSv2ImageConverter`, or None to pass images
            through unchanged.
        sequence_length: prompt length; None (default) takes the
            tokenizer's, which a preset sets to its text tower's length
            (64 for every published model).

    Example:
    ```python
    preprocessor = TIPSv2Preprocessor.from_preset("path/to/preset")
    inputs = preprocessor({"images": uint8_batch, "prompts": ["a cat", "a dog"]})
    outputs = backbone(inputs)
    ```
    """

    backbone_cls = TIPSv2Backbone
    tokenizer_cls = TIPSv2Tokenizer
    image_converter_cls = TIPSv2ImageConverter

    def __init__(
        self, tokenizer=None, image_converter=None, sequence_length=None, **kwargs
    ):
        super().__init__(**kwargs)
        self.tokenizer = tokenizer
        self.image_converter = image_converter
        self._sequence_length = sequence_length

    @property
    def sequence_length(self):
        """Prompt length: the one given, else the tokenizer's."""
        if self._sequence_length is None and self.tokenizer is not None:
            return self.tokenizer.sequence_length
        return self._sequence_length

    @sequence_length.setter
    def sequence_length(self, value):
        self._sequence_length = value

    def call(self, x, y=None, sample_weight=None, sequence_length=None):
        if not isinstance(x, dict) or not any(k in x for k in INPUT_KEYS):
            raise ValueError(
                "TIPSv2Preprocessor expects a dict with 'images' and/or "
                f"'prompts'; got {type(x).__name__}"
                + (f" with keys {sorted(x)}" if isinstance(x, dict) else "")
                + "."
            )
        unknown = sorted(set(x) - set(INPUT_KEYS))
        if unknown:
            raise ValueError(
                f"TIPSv2Preprocessor got unexpected input keys {unknown}; "
                f"it reads only {list(INPUT_KEYS)}."
            )
        outputs = {}
        if "images" in x:
            images = x["images"]
            if self.image_converter is not None:
                images = self.image_converter(images)
            outputs["images"] = images
        if "prompts" in x:
            if self.tokenizer is None:
                raise ValueError(
                    "TIPSv2Preprocessor got 'prompts' but has no tokenizer."
                )
            outputs.update(
                self.tokenizer(
                    x["prompts"],
                    sequence_length=sequence_length or self.sequence_length,
                )
            )
        return keras.utils.pack_x_y_sample_weight(outputs, y, sample_weight)

    def get_config(self):
        config = super().get_config()
        config["sequence_length"] = self._sequence_length
        return config
