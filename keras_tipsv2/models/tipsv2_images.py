"""Reading, checking and resizing images: the one home of these helpers.

TIPS models read RGB images as floats in [0, 1] with no mean/std
normalisation. Every entry point that takes images (the backbone, the image
converter, the preprocessor, the zero-shot classifier and segmenter, the
evaluation and ShapesWorld code) goes through these functions, so that an
image file path, a PIL image, a uint8 array and a float array in [0, 1] mean
the same thing everywhere, and a float image in 0-255 or holding NaN is
refused with an error that says what to do.
"""

import os

import numpy as np
from keras import ops
from keras_hub.src.utils.tensor_utils import convert_to_numpy
from PIL import Image


def read_image_file(path):
    """uint8 RGB (H, W, 3) from an image file; the error names the file."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise FileNotFoundError(f"Image file not found: {path!r}") from None
    except Exception as e:
        raise ValueError(f"Could not decode image file {path!r}: {e}") from e


def is_image_file_or_pil(image):
    """Whether `image` is a path or a PIL image (rather than an array)."""
    return isinstance(image, (str, os.PathLike)) or isinstance(image, Image.Image)


def image_array(image):
    """One image or batch (array, tensor, PIL image or file path) as numpy."""
    if isinstance(image, (str, os.PathLike)):
        return read_image_file(os.fspath(image))
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    return convert_to_numpy(image)


def rgb(array):
    """Channels-last RGB: grayscale (H, W) / (..., 1) is repeated, an alpha
    channel is dropped (as PIL's convert("RGB") does)."""
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim not in (3, 4):
        raise ValueError(
            "Images must have shape (H, W), (H, W, C) or (B, H, W, C); got "
            f"shape {array.shape}."
        )
    channels = array.shape[-1]
    if channels == 1:
        return np.repeat(array, 3, axis=-1)
    if channels == 3:
        return array
    if channels == 4:
        return array[..., :3]
    raise ValueError(
        "Images must be channels-last with 1 (gray), 3 (RGB) or 4 (RGBA) "
        f"channels; got shape {array.shape}."
    )


def check_pixel_values(array):
    """Raises unless `array` holds 8-bit integers or finite floats in [0, 1].

    The message says what to do: TIPS reads floats in [0, 1], so a float
    image in 0-255 (the most common slip) must be divided by 255 or passed
    as uint8.
    """
    if array.dtype == bool or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise ValueError(f"Images must be integer (0-255) or float (0-1); got {array.dtype}.")
    if not array.size:
        return
    if np.issubdtype(array.dtype, np.integer):
        low, high = array.min(), array.max()
        if low < 0 or high > 255:
            raise ValueError(
                f"Integer images must be 8-bit values in [0, 255]; got values in [{low}, {high}]."
            )
        return
    if not np.isfinite(array).all():
        raise ValueError(
            "Images contain NaN or infinite values; every pixel must be a "
            "finite float in [0, 1]. Check how the image was decoded or resized."
        )
    low, high = array.min(), array.max()
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"Float images must be in [0, 1]; got values in [{low:g}, {high:g}]. "
            "Pass uint8 images or divide by 255."
        )


def as_float(array):
    """float32 in [0, 1]: integers are 8-bit values, floats are kept as they
    are (no check; see `unit_range`)."""
    if np.issubdtype(array.dtype, np.integer):
        return array.astype("float32") / 255.0
    return array.astype("float32")


def unit_range(array):
    """float32 in [0, 1] from a checked uint8 or float image (`check_pixel_values`)."""
    check_pixel_values(array)
    return as_float(array)


def image_as_array(image):
    """One RGB image (path, PIL, uint8 or float array) as float32 (H, W, 3) in [0, 1]."""
    array = image_array(image)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(
            f"Expected one RGB image of shape (height, width, 3); got {array.shape}."
        )
    return unit_range(array)


def short_side_size(height, width, short_side):
    """(h, w) with min(h, w) == short_side and the aspect ratio kept; the long
    side is truncated, as torchvision's Resize(int) does."""
    if height <= width:
        return short_side, int(short_side * width / height)
    return int(short_side * height / width), short_side


def resize_bicubic(image, size):
    """Resizes a (H, W, 3) image to `size` = (height, width) with PIL bicubic.

    uint8 images go through PIL as RGB images, exactly as the reference
    (torchvision on a PIL image); float images are resized channel by channel
    in PIL's float mode so that nothing is quantised.
    """
    height, width = size
    image = np.asarray(image)
    if image.dtype == np.uint8:
        resized = Image.fromarray(image).resize((width, height), Image.BICUBIC)
        return np.asarray(resized)
    channels = [
        np.asarray(
            Image.fromarray(image[..., c].astype("float32")).resize(
                (width, height), Image.BICUBIC
            )
        )
        for c in range(image.shape[-1])
    ]
    return np.stack(channels, axis=-1)


def upsampled_scores(scores, size):
    """(h, w, C) dense scores bilinearly resized (half-pixel) to `size`.

    The zero-shot segmentation protocol's final step before the argmax, at
    the annotation size. Scores already of that size are returned as they
    are: a half-pixel bilinear resize to the same size samples every pixel
    at its own centre.
    """
    scores = ops.convert_to_tensor(scores, "float32")
    if tuple(scores.shape[:2]) == tuple(size):
        return scores
    return ops.image.resize(scores[None], size, interpolation="bilinear", antialias=False)[0]
