"""TIPSv2Attention's explicit softmax path (taken on JAX CPUs for speed)."""

from unittest import mock

import keras
import numpy as np
from keras import ops
from keras_hub.src.tests.test_case import TestCase

from keras_tipsv2.layers import attention


def _qkv(seed=0, tokens=7):
    rng = np.random.default_rng(seed)
    # Large logits on purpose: the shift by the row max must keep exp finite.
    return [
        ops.convert_to_tensor(rng.standard_normal((2, tokens, 3, 8)).astype("float32") * 6)
        for _ in range(3)
    ]


class ExplicitAttentionTest(TestCase):
    def test_matches_the_backend_kernel(self):
        q, k, v = _qkv()
        expected = ops.dot_product_attention(q, k, v, scale=8**-0.5)
        got = attention._explicit_attention(q, k, v, 8**-0.5)
        self.assertAllClose(got, expected, atol=1e-5, rtol=1e-5)

    def test_gradients_match_the_backend_kernel(self):
        q, k, v = _qkv(seed=1)
        weights = ops.convert_to_tensor(
            np.random.default_rng(2).standard_normal((2, 7, 3, 8)).astype("float32")
        )

        def loss(fn):
            return lambda q_, k_, v_: ops.sum(fn(q_, k_, v_) * weights)

        fused = loss(lambda a, b, c: ops.dot_product_attention(a, b, c, scale=8**-0.5))
        explicit = loss(lambda a, b, c: attention._explicit_attention(a, b, c, 8**-0.5))
        for got, expected in zip(_grads(explicit, q, k, v), _grads(fused, q, k, v)):
            self.assertAllClose(got, expected, atol=1e-4, rtol=1e-4)

    def test_only_jax_on_cpu_takes_the_explicit_path(self):
        expected = keras.config.backend() == "jax" and all(
            d.lower().startswith("cpu") for d in keras.distribution.list_devices()
        )
        self.assertEqual(attention.explicit_attention_is_faster(), expected)

    def test_layer_output_does_not_depend_on_the_path(self):
        layer = attention.TIPSv2Attention(24, 3)
        x = ops.convert_to_tensor(
            np.random.default_rng(3).standard_normal((2, 9, 24)).astype("float32")
        )
        outputs = []
        for explicit in (True, False):
            with mock.patch.object(
                attention, "explicit_attention_is_faster", return_value=explicit
            ):
                outputs.append(ops.convert_to_numpy(layer(x)))
        self.assertAllClose(outputs[0], outputs[1], atol=1e-5, rtol=1e-5)


def _grads(fn, *args):
    """Gradients of a scalar fn with respect to each argument, as numpy."""
    backend = keras.config.backend()
    if backend == "jax":
        import jax

        return [np.asarray(g) for g in jax.grad(fn, argnums=(0, 1, 2))(*args)]
    if backend == "tensorflow":
        import tensorflow as tf

        variables = [tf.Variable(a) for a in args]
        with tf.GradientTape() as tape:
            value = fn(*variables)
        return [g.numpy() for g in tape.gradient(value, variables)]
    import torch

    leaves = [a.detach().clone().requires_grad_(True) for a in args]
    fn(*leaves).backward()
    return [leaf.grad.cpu().numpy() for leaf in leaves]
