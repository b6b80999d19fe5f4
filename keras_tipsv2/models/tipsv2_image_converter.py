import keras
from keras import ops
from keras_hub.layers import ImageConverter
from keras_hub.src.utils.tensor_utils import convert_preprocessing_outputs_grain
from keras_hub.src.utils.tensor_utils import in_grain_data_pipeline
from keras_hub.src.utils.tensor_utils import preprocessing_function
from keras_hub.src.utils.tensor_utils import tf

from keras_tipsv2.models.tipsv2_backbone import TIPSv2Backbone
from keras_tipsv2.models.tipsv2_images import image_array, rgb, short_side_size, unit_range

RESIZE_MODES = ("square", "short_side")
# The official demos (google-deepmind/tips `pytorch/TIPS_Demo.ipynb`) resize to a square with antialiased
# bilinear; the zero-shot segmentation protocol resizes the short side with
# PIL's bicubic (which always antialiases).
DEFAULT_INTERPOLATION = {"square": "bilinear", "short_side": "bicubic"}


def preset_image_size(preset, default=448):
    """The side of the square images a preset's image converter makes;
    `default` (the published models' 448) for a preset without one."""
    try:
        size = TIPSv2ImageConverter.from_preset(preset).image_size
    except FileNotFoundError:
        return default
    return size[0] if size else default


@keras.saving.register_keras_serializable(package="keras_tipsv2")
class TIPSv2ImageConverter(ImageConverter):
    """Turns raw images into TIPSv2 inputs: RGB float32 in [0, 1], resized.

    Accepts a uint8 or float array or tensor (one image (H, W, C) or a batch
    (B, H, W, C)), a PIL image, an image file path, or a list of those.
    Grayscale and RGBA inputs become RGB. Integer inputs are divided by 255;
    float inputs must already be in [0, 1]. No mean/std normalisation is
    applied (TIPS uses mean 0, std 1); `scale` and `offset`, if given, are
    applied after the conversion to [0, 1].

    Two resize modes:
    * "square" (the demos): resize to `image_size` without keeping the
      aspect ratio, antialiased bilinear by default.
    * "short_side" (the zero-shot segmentation protocol): resize so the short
      side is `short_side`, keeping the aspect ratio, antialiased bicubic by
      default. Images of a list that end up with different sizes are
      returned as a list.

    Args:
        image_size: (height, width) for "square"; None skips resizing.
        resize_mode: "square" or "short_side".
        short_side: target short side for "short_side".
        interpolation: None picks the mode's default ("bilinear" for
            "square", "bicubic" for "short_side").
        antialias: antialias when downsampling (True, like PIL).
        scale, offset: optional normalisation after conversion to [0, 1].

    Example:
    ```python
    converter = TIPSv2ImageConverter(image_size=(448, 448))
    converter(np.zeros((2, 300, 500, 3), "uint8")).shape    # (2, 448, 448, 3)
    segmenter_input = TIPSv2ImageConverter(resize_mode="short_side")
    segmenter_input("photo.jpg").shape                     # (448, 672, 3)
    ```
    """

    backbone_cls = TIPSv2Backbone

    def __init__(
        self,
        image_size=(448, 448),
        resize_mode="square",
        short_side=448,
        interpolation=None,
        antialias=True,
        scale=None,
        offset=None,
        crop_to_aspect_ratio=False,
        **kwargs,
    ):
        if resize_mode not in RESIZE_MODES:
            raise ValueError(
                f"resize_mode must be one of {RESIZE_MODES}; got {resize_mode!r}."
            )
        if resize_mode == "short_side" and not short_side:
            raise ValueError("resize_mode='short_side' needs a short_side.")
        data_format = kwargs.pop("data_format", None)
        if data_format not in (None, "channels_last"):
            raise ValueError(
                "TIPSv2ImageConverter outputs channels-last images; got "
                f"data_format={data_format!r}."
            )
        super().__init__(
            image_size=image_size if resize_mode == "square" else None,
            scale=scale,
            offset=offset,
            crop_to_aspect_ratio=crop_to_aspect_ratio,
            interpolation=interpolation or DEFAULT_INTERPOLATION[resize_mode],
            antialias=antialias,
            data_format="channels_last",
            **kwargs,
        )
        self.resize_mode = resize_mode
        self.short_side = short_side

    def call(self, inputs):
        if self._use_tf_workflow():
            return self._call_tf(inputs)
        return self._call_python(inputs)

    def _call_python(self, inputs):
        if isinstance(inputs, (list, tuple)):
            arrays = [image_array(image) for image in inputs]
            if any(array.ndim == 4 for array in arrays):
                raise ValueError(
                    "A list passed to TIPSv2ImageConverter must hold single "
                    "images, not batches; concatenate the batches instead."
                )
            images = [self._convert_one(array) for array in arrays]
            if all(img.shape == images[0].shape for img in images):
                outputs = ops.stack(images)
            else:
                outputs = images
        else:
            outputs = self._convert_one(image_array(inputs))
        if in_grain_data_pipeline():
            return convert_preprocessing_outputs_grain(outputs)
        return outputs

    def _convert_one(self, array):
        """One image or one batch (numpy) -> resized, normalised tensor."""
        images = ops.convert_to_tensor(unit_range(rgb(array)))
        return self._normalize(self._resize(images, images.shape[-3:-1]))

    def _resize(self, images, hw):
        if self.resize_mode == "square":
            return self.resizing(images) if self.image_size else images
        size = short_side_size(hw[0], hw[1], self.short_side)
        if tuple(hw) == size:
            return images
        resized = ops.image.resize(
            images,
            size,
            interpolation=self.interpolation,
            antialias=self.antialias,
            data_format="channels_last",
        )
        # Bicubic overshoots; the reference resizes uint8 in PIL, which clips.
        return ops.clip(resized, 0.0, 1.0)

    def _normalize(self, images):
        if self.scale is not None:
            images = images * ops.convert_to_tensor(self.scale, images.dtype)
        if self.offset is not None:
            images = images + ops.convert_to_tensor(self.offset, images.dtype)
        return images

    @preprocessing_function
    def _call_tf(self, inputs):
        # Inside tf.data every op must be a TensorFlow op, whatever the
        # Keras backend; this mirrors rgb/unit_range/_resize (values cannot be checked in a graph).
        images = tf.convert_to_tensor(inputs)
        if images.shape.rank == 2:
            images = images[..., None]
        channels = images.shape[-1]
        if images.shape.rank not in (3, 4) or channels not in (1, 3, 4):
            raise ValueError(
                "Images must be channels-last (H, W), (H, W, C) or (B, H, W, C)"
                f" with C in (1, 3, 4); got shape {images.shape}."
            )
        if channels == 1:
            images = tf.concat([images] * 3, axis=-1)
        images = images[..., :3]
        if images.dtype.is_integer:
            images = tf.cast(images, "float32") / 255.0
        images = tf.cast(images, "float32")
        if self.resize_mode == "square":
            images = self.resizing(images) if self.image_size else images
        else:
            hw = tf.cast(tf.shape(images)[-3:-1], "float64")
            size = tf.cast(
                tf.math.floor(hw * self.short_side / tf.reduce_min(hw)), "int32"
            )
            images = tf.image.resize(
                images, size, method=self.interpolation, antialias=self.antialias
            )
            images = tf.clip_by_value(images, 0.0, 1.0)
        if self.scale is not None:
            images = images * tf.constant(self.scale, "float32")
        if self.offset is not None:
            images = images + tf.constant(self.offset, "float32")
        return images

    def get_config(self):
        config = super().get_config()
        config.update(
            {"resize_mode": self.resize_mode, "short_side": self.short_side}
        )
        if self.resize_mode == "short_side":
            config["image_size"] = None
        return config
