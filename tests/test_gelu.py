"""functional.gelu: the MLP's GELU, XLA-compiled on TensorFlow, equal to
`ops.gelu` in values and gradients on every backend."""

from unittest import mock

import keras
import numpy as np
import pytest
from keras import ops

from keras_tipsv2.layers import functional
from keras_tipsv2.layers.vision_block import TIPSv2VisionMLP
from tests.test_attention import _grads

tf_only = pytest.mark.skipif(keras.config.backend() != "tensorflow", reason="TensorFlow's XLA kernel")


def _inputs(dtype="float32", seed=0):
    values = np.random.default_rng(seed).standard_normal((3, 5, 16)).astype("float32") * 3
    return ops.convert_to_tensor(values, dtype=dtype)


@pytest.mark.parametrize("approximate", [False, True])
def test_equals_ops_gelu(approximate):
    x = _inputs()
    np.testing.assert_allclose(
        ops.convert_to_numpy(functional.gelu(x, approximate)),
        ops.convert_to_numpy(ops.gelu(x, approximate=approximate)),
        atol=1e-6,
    )


def test_bfloat16_is_no_less_exact_than_ops_gelu():
    x = _inputs("bfloat16", seed=1)
    got = functional.gelu(x)
    assert keras.backend.standardize_dtype(got.dtype) == "bfloat16"
    exact = ops.convert_to_numpy(ops.gelu(ops.cast(x, "float32"), approximate=False))

    def error(y):
        return np.abs(ops.convert_to_numpy(ops.cast(y, "float32")) - exact)

    # At most one bfloat16 step (8 significant bits) worse than the
    # backend's own bfloat16 GELU, anywhere.
    np.testing.assert_array_less(
        error(got), error(ops.gelu(x, approximate=False)) + np.abs(exact) / 128 + 1e-6
    )


@pytest.mark.parametrize("approximate", [False, True])
def test_gradients_equal_those_of_ops_gelu(approximate):
    x = _inputs(seed=2)

    def loss(fn):
        return lambda a, b, c: ops.sum(fn(a) * b * c)

    ones = ops.ones_like(x)
    ours = _grads(loss(lambda t: functional.gelu(t, approximate)), x, ones, ones)[0]
    reference = _grads(loss(lambda t: ops.gelu(t, approximate=approximate)), x, ones, ones)[0]
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_symbolic_inputs_give_symbolic_outputs():
    out = functional.gelu(keras.KerasTensor((2, 4)))
    assert isinstance(out, keras.KerasTensor) and out.shape == (2, 4)


@tf_only
def test_tensorflow_runs_it_as_one_xla_kernel_in_the_mlp():
    import tensorflow as tf

    mlp = TIPSv2VisionMLP(8, 16)
    x = _inputs()[..., :8]
    with mock.patch.object(functional, "_xla_gelu", wraps=functional._xla_gelu) as spy:
        eager = mlp(x)
        graph = tf.function(lambda t: mlp(t))(x)
    assert spy.call_count == 2
    expected = ops.convert_to_numpy(mlp.fc2(ops.gelu(mlp.fc1(x), approximate=False)))
    for out in (eager, graph):
        np.testing.assert_allclose(ops.convert_to_numpy(out), expected, atol=1e-5)
    assert functional._xla_gelu(False).function_spec.jit_compile
