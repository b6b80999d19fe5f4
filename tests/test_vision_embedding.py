"""The position table's resize: antialiased bilinear, as both references, and
computed as two fixed matmuls whenever the output size is static."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_tipsv2.layers.vision_embedding import (
    antialiased_resize,
    bilinear_resize_weights,
    resize_position_grid,
)

tf_only = pytest.mark.skipif(keras.config.backend() != "tensorflow", reason="TensorFlow graphs and XLA")


def _grid(seed=0, size=(32, 32), dim=24):
    return np.random.default_rng(seed).normal(size=(1,) + size + (dim,)).astype("float32")


def _backend_resize(grid, height, width):
    return ops.image.resize(
        grid, (height, width), interpolation="bilinear", antialias=True, data_format="channels_last"
    )


@pytest.mark.parametrize(
    "size",
    [(16, 16), (20, 30), (24, 7), (1, 1), (5, 32), (40, 40), (64, 33), (48, 20)],
    ids=lambda s: f"{s[0]}x{s[1]}",
)
def test_equals_the_backends_antialiased_bilinear_resize(size):
    # Shrinking (antialiased), growing, and one side of each.
    grid = _grid()
    np.testing.assert_allclose(
        ops.convert_to_numpy(resize_position_grid(grid, *size)),
        ops.convert_to_numpy(_backend_resize(grid, *size)),
        atol=2e-5,
    )


def test_images_resize_as_the_backends_resize():
    images = np.random.default_rng(3).random((2, 28, 42, 3)).astype("float32")
    for size in ((56, 56), (14, 21)):
        np.testing.assert_allclose(
            ops.convert_to_numpy(antialiased_resize(images, *size)),
            ops.convert_to_numpy(_backend_resize(images, *size)),
            atol=2e-6,
        )


def test_the_native_grid_is_returned_unchanged():
    grid = ops.convert_to_tensor(_grid())
    assert resize_position_grid(grid, 32, 32) is grid


def test_weights_sum_to_one_and_reach_only_neighbours():
    shrink = bilinear_resize_weights(32, 16)
    np.testing.assert_allclose(shrink.sum(axis=1), 1.0, rtol=1e-6)
    # Halving: each output averages a 4-pixel triangle around its centre.
    np.testing.assert_allclose(shrink[3, 4:10], [0.0, 0.125, 0.375, 0.375, 0.125, 0.0])
    grow = bilinear_resize_weights(4, 8)
    # Doubling: plain bilinear, the borders clamped to the edge pixel.
    np.testing.assert_allclose(grow[0], [1.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(grow[1], [0.75, 0.25, 0.0, 0.0])


def test_keeps_a_half_precision_tables_dtype():
    grid = ops.convert_to_tensor(_grid(), dtype="bfloat16")
    assert keras.backend.standardize_dtype(resize_position_grid(grid, 16, 16).dtype) == "bfloat16"


@tf_only
def test_a_graph_traced_for_any_size_is_refused_by_name():
    import tensorflow as tf

    grid = tf.constant(_grid(seed=1))

    @tf.function(input_signature=[tf.TensorSpec((), tf.int32), tf.TensorSpec((), tf.int32)])
    def dynamic(height, width):
        return resize_position_grid(grid, height, width)

    with pytest.raises(ValueError, match="patch grid, which must be known"):
        dynamic(tf.constant(20), tf.constant(30))


@tf_only
def test_compiles_under_xla_at_every_size():
    # ScaleAndTranslate (TensorFlow's antialiased resize) has no XLA kernel.
    import tensorflow as tf

    grid = _grid(seed=2)
    compiled = tf.function(lambda g: resize_position_grid(g, 16, 24), jit_compile=True)
    np.testing.assert_allclose(
        compiled(tf.constant(grid)).numpy(),
        ops.convert_to_numpy(_backend_resize(grid, 16, 24)),
        atol=2e-5,
    )
