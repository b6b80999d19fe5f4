"""Input contracts of the public entry points, checked in one place.

- Images are RGB floats in [0, 1]. uint8 (any integer 0-255) is divided by
  255; floats outside [0, 1] or not finite are refused with an error that
  says what to do; paths and PIL images are read (`tipsv2_images`).
- Token ids must lie in [0, vocabulary size): an id of -1 would silently
  read the last embedding row on some backends and NaN on others.
- Block indices count from 0, negative ones from the end; an index past
  the tower is refused. An int n instead of a list means the last n blocks
  (DINOv2's `get_intermediate_layers(x, n)`).

Value checks run only where values exist: on numpy input (on the host, a
pass over the array) and on eager backend tensors (three reductions on the
device and one small transfer to the host: a few milliseconds against a
tower's forward pass). Symbolic inputs (`keras.Input`) and inputs traced in
a compiled train step (JAX tracers, TensorFlow graph tensors,
`torch.compile`) get the shape checks only.
"""

import numpy as np
from keras import KerasTensor, backend, config, ops

from keras_tipsv2.models.tipsv2_images import (
    check_pixel_values,
    image_as_array,
    is_image_file_or_pil,
)


def has_values(tensor):
    """Whether `tensor`'s values can be read now: numpy, or an eager tensor
    (not symbolic and not traced by jit, a graph or `torch.compile`)."""
    if isinstance(tensor, np.ndarray):
        return True
    if isinstance(tensor, KerasTensor):
        return False
    backend = config.backend()
    if backend == "jax":
        import jax

        return not isinstance(tensor, jax.core.Tracer)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.executing_eagerly() and not tf.is_symbolic_tensor(tensor)
    if backend == "torch":
        import torch

        return not torch.compiler.is_compiling()
    return False


def _is_tensor(value):
    return isinstance(value, (np.ndarray, KerasTensor)) or ops.is_tensor(value)


def _read_images(images):
    """A (B, H, W, 3) float32 batch from paths / PIL images (one or a list)."""
    if is_image_file_or_pil(images):
        images = [images]
    arrays = [image_as_array(image) for image in images]
    if len({a.shape for a in arrays}) > 1:
        raise ValueError(
            "Images of a batch must share one size; got "
            f"{sorted({a.shape[:2] for a in arrays})}. Resize them first, e.g. "
            "with TIPSv2ImageConverter."
        )
    return np.stack(arrays)


def _check_tensor_pixels(images):
    """The float [0, 1] / finite check of `check_pixel_values`, on device."""
    if not bool(ops.all(ops.isfinite(images))):
        raise ValueError(
            "Images contain NaN or infinite values; every pixel must be a "
            "finite float in [0, 1]. Check how the image was decoded or resized."
        )
    low, high = float(ops.min(images)), float(ops.max(images))
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"Float images must be in [0, 1]; got values in [{low:g}, {high:g}]. "
            "Pass uint8 images or divide by 255."
        )


def checked_images(images, dtype, where, check_values=True):
    """A (B, H, W, 3) tensor of `dtype` in [0, 1] from what the user passed.

    Args:
        images: a batch as numpy / tensor (uint8 or float in [0, 1]), an
            image file path, a PIL image, or a list of paths / PIL images.
        dtype: the dtype the tower computes in.
        where: the entry point's name, for messages.
        check_values: False skips the value checks (train steps: their
            inputs come from the data pipeline, and on torch, which trains
            eagerly, a check would wait for the device at every step).
    """
    if is_image_file_or_pil(images) or (
        isinstance(images, (list, tuple)) and images and all(map(is_image_file_or_pil, images))
    ):
        images = _read_images(images)
    elif not _is_tensor(images):
        images = np.asarray(images)
    if len(images.shape) != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"{where} expects images of shape (batch, height, width, 3); got "
            f"{tuple(images.shape)}."
        )
    if isinstance(images, np.ndarray):
        if check_values:
            check_pixel_values(images)
        if np.issubdtype(images.dtype, np.integer):
            images = images.astype("float32") / 255.0
        return ops.convert_to_tensor(images, dtype=dtype)
    check_values = check_values and has_values(images)
    if "int" in backend.standardize_dtype(images.dtype):
        if check_values:
            check_pixel_values(np.asarray([int(ops.min(images)), int(ops.max(images))]))
        return ops.cast(images, dtype) / 255.0
    if check_values:
        _check_tensor_pixels(images)
    return ops.cast(images, dtype)


def checked_token_ids(token_ids, padding_mask, vocabulary_size, check_values=True):
    """int32 (token_ids, padding_mask), both (B, T), ids in [0, vocabulary).

    `check_values=False` skips the id range check, as in `checked_images`.
    """
    token_ids = ops.convert_to_tensor(token_ids, dtype="int32")
    padding_mask = ops.convert_to_tensor(padding_mask, dtype="int32")
    if len(token_ids.shape) != 2 or tuple(token_ids.shape) != tuple(padding_mask.shape):
        raise ValueError(
            "encode_text expects token_ids and padding_mask of the same "
            f"shape (batch, length); got {tuple(token_ids.shape)} and "
            f"{tuple(padding_mask.shape)}."
        )
    if check_values and has_values(token_ids) and np.prod(token_ids.shape):
        low, high = int(ops.min(token_ids)), int(ops.max(token_ids))
        if low < 0 or high >= vocabulary_size:
            raise ValueError(
                f"Token ids must be in [0, {vocabulary_size}) (the text tower's "
                f"vocabulary); got ids in [{low}, {high}]. Were they made by "
                "this model's tokenizer?"
            )
    return token_ids, padding_mask


def block_indices(indices, num_layers):
    """0-based block indices from a list (negative counts from the end) or
    an int n (the last n blocks), every one checked against the tower."""
    if isinstance(indices, bool):
        raise ValueError(f"indices must be an int or a list of ints; got {indices!r}.")
    if isinstance(indices, (int, np.integer)):
        if not 1 <= indices <= num_layers:
            raise ValueError(
                f"Asked for the last {indices} blocks of a tower of {num_layers}; "
                f"n must be in [1, {num_layers}]."
            )
        return tuple(range(num_layers - int(indices), num_layers))
    checked = []
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise ValueError(f"Block indices must be ints; got {index!r}.")
        if not -num_layers <= index < num_layers:
            raise ValueError(
                f"Block index {index} is outside the image tower's {num_layers} "
                f"blocks (0 to {num_layers - 1}, or -{num_layers} to -1 from the end)."
            )
        checked.append(int(index) % num_layers)
    return tuple(checked)
