"""TIPSv2LayerNorm: Keras's LayerNormalization, computed by an XLA kernel on
TensorFlow and by torch's kernel on torch, equal to it on every backend."""

from unittest import mock

import keras
import numpy as np
import pytest
from keras import ops

from keras_tipsv2.layers import layer_norm
from keras_tipsv2.layers.layer_norm import TIPSv2LayerNorm
from tests.test_attention import _grads


def _pair(dtype="float32", **kwargs):
    """Ours and Keras's layer, built, with the same non-trivial weights."""
    ours = TIPSv2LayerNorm(epsilon=1e-6, dtype=dtype, **kwargs)
    keras_layer = keras.layers.LayerNormalization(epsilon=1e-6, dtype=dtype, **kwargs)
    rng = np.random.default_rng(0)
    for layer in (ours, keras_layer):
        layer.build((None, 16))
    for a, b in zip(ours.weights, keras_layer.weights):
        value = rng.standard_normal(a.shape).astype("float32")
        a.assign(value)
        b.assign(value)
    return ours, keras_layer


def _inputs(dtype="float32", seed=1):
    x = np.random.default_rng(seed).standard_normal((3, 5, 16)).astype("float32") * 4 + 2
    return ops.convert_to_tensor(x, dtype=dtype)


def _numpy(x):
    return ops.convert_to_numpy(ops.cast(x, "float32"))


def test_equals_keras_layer_normalization():
    ours, reference = _pair()
    x = _inputs()
    np.testing.assert_allclose(_numpy(ours(x)), _numpy(reference(x)), atol=2e-6, rtol=1e-6)


def test_weights_and_config_are_keras_own():
    ours, reference = _pair()
    assert [w.path.split("/")[-1] for w in ours.weights] == ["gamma", "beta"]
    config = ours.get_config()
    assert config == reference.get_config() | {"name": ours.name}
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(ours))
    assert isinstance(again, TIPSv2LayerNorm)


def test_bfloat16_rounds_once_like_keras():
    ours, reference = _pair("bfloat16")
    x = _inputs("bfloat16", seed=2)
    got = ours(x)
    assert keras.backend.standardize_dtype(got.dtype) == "bfloat16"
    # Both normalise in float32 and round once; any difference is at most
    # one bfloat16 step of the output.
    expected = _numpy(reference(x))
    np.testing.assert_array_less(np.abs(_numpy(got) - expected), np.abs(expected) / 128 + 1e-6)


def test_mixed_precision_matches_keras():
    ours, reference = _pair("mixed_bfloat16")
    x = _inputs(seed=3)
    got, expected = ours(x), reference(x)
    assert keras.backend.standardize_dtype(got.dtype) == "bfloat16"
    np.testing.assert_array_less(
        np.abs(_numpy(got) - _numpy(expected)), np.abs(_numpy(expected)) / 128 + 1e-6
    )


def test_gradients_equal_those_of_keras():
    ours, reference = _pair()
    x = _inputs(seed=4)
    w = ops.convert_to_tensor(np.random.default_rng(5).standard_normal((3, 5, 16)).astype("float32"))

    def loss(layer):
        # Gradients w.r.t. the input and both weights, as functions of
        # tensors (the weights enter through the layer's stateless call).
        def fn(x_, gamma, beta):
            out, _ = layer.stateless_call([gamma, beta], [], x_)
            return ops.sum(out * w)

        return fn

    args = (x, ours.gamma.value, ours.beta.value)
    for got, expected in zip(_grads(loss(ours), *args), _grads(loss(reference), *args)):
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_symbolic_inputs_build_a_functional_model():
    inputs = keras.Input((5, 16))
    model = keras.Model(inputs, TIPSv2LayerNorm(epsilon=1e-6)(inputs))
    assert model.output_shape == (None, 5, 16)
    assert model(_inputs()).shape == (3, 5, 16)


@pytest.mark.parametrize("kwargs", [dict(rms_scaling=True), dict(center=False), dict(axis=[1, 2])])
def test_other_configurations_take_keras_op(kwargs):
    ours = TIPSv2LayerNorm(epsilon=1e-6, **kwargs)
    reference = keras.layers.LayerNormalization(epsilon=1e-6, **kwargs)
    x = _inputs(seed=6)
    ours.build(x.shape)
    reference.build(x.shape)
    with mock.patch.object(layer_norm, "_xla_layer_norm") as xla:
        got = ours(x)
    xla.assert_not_called()
    np.testing.assert_allclose(_numpy(got), _numpy(reference(x)), atol=1e-6)


@pytest.mark.skipif(keras.config.backend() != "tensorflow", reason="TensorFlow's XLA kernel")
def test_tensorflow_runs_the_xla_kernel_eagerly_and_in_graphs():
    import tensorflow as tf

    ours, reference = _pair()
    x = _inputs(seed=7)
    with mock.patch.object(layer_norm, "_xla_layer_norm", wraps=layer_norm._xla_layer_norm) as spy:
        eager = ours(x)
        graph = tf.function(lambda t: ours(t))(x)
    assert spy.call_count == 2
    for got in (eager, graph):
        np.testing.assert_allclose(_numpy(got), _numpy(reference(x)), atol=2e-6, rtol=1e-6)
