"""FusedBiasDense is Keras's Dense: same numbers, gradients, weights and
config, on every backend (on torch through `addmm`)."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_tipsv2.layers.compiled_call import inference_scope
from keras_tipsv2.layers.fused_dense import FusedBiasDense


def _pair(units=6, **kwargs):
    """A FusedBiasDense and a keras Dense holding the same random weights."""
    fused = FusedBiasDense(units, **kwargs)
    plain = keras.layers.Dense(units, **kwargs)
    fused.build((None, 5))
    plain.build((None, 5))
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal(w.shape).astype("float32") for w in plain.get_weights()]
    fused.set_weights(weights)
    plain.set_weights(weights)
    return fused, plain


@pytest.mark.parametrize("shape", [(4, 5), (2, 3, 5), (2, 3, 4, 5)])
@pytest.mark.parametrize("activation", [None, "gelu", "relu"])
def test_outputs_match_keras_dense(shape, activation):
    fused, plain = _pair(activation=activation)
    x = np.random.default_rng(1).standard_normal(shape).astype("float32")
    out = ops.convert_to_numpy(fused(x))
    assert out.shape == shape[:-1] + (6,)
    np.testing.assert_allclose(out, ops.convert_to_numpy(plain(x)), atol=1e-6)


@pytest.mark.parametrize("shape", [(4, 5), (2, 3, 5)])
def test_inference_without_autograd_matches_keras_dense(shape):
    # On torch/CPU in float32 that is oneDNN's matmul: float32 rounding apart.
    fused, plain = _pair(activation="relu")
    x = np.random.default_rng(5).standard_normal(shape).astype("float32")
    with inference_scope():
        out = ops.convert_to_numpy(fused(x))
    np.testing.assert_allclose(out, ops.convert_to_numpy(plain(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(keras.config.backend() != "torch", reason="torch's matmul choice")
def test_torch_takes_onednn_only_for_float32_cpu_inference():
    import torch

    from keras_tipsv2.layers import fused_dense

    x, kernel, bias = torch.ones(2, 3), torch.ones(3, 4), torch.ones(4)
    with torch.no_grad():
        assert fused_dense._onednn_applies(x, kernel, bias) == torch.backends.mkldnn.is_available()
        assert not fused_dense._onednn_applies(x.double(), kernel.double(), bias.double())
    assert not fused_dense._onednn_applies(x, kernel, bias)  # autograd records


def test_takes_the_fused_path_on_torch_only():
    fused, _ = _pair()
    assert fused._fuses_bias() == (keras.config.backend() == "torch")
    no_bias = FusedBiasDense(3, use_bias=False)
    no_bias.build((None, 5))
    assert not no_bias._fuses_bias()


def test_gradients_match_keras_dense():
    fused, plain = _pair(activation="gelu")
    x = np.random.default_rng(2).standard_normal((3, 4, 5)).astype("float32")

    def grads(layer):
        if keras.config.backend() == "torch":
            import torch

            xt = torch.tensor(x, requires_grad=True)
            layer(xt).square().sum().backward()
            return [xt.grad.numpy()] + [v.value.grad.numpy() for v in layer.trainable_variables]
        if keras.config.backend() == "tensorflow":
            import tensorflow as tf

            xt = tf.constant(x)
            with tf.GradientTape() as tape:
                tape.watch(xt)
                loss = tf.reduce_sum(tf.square(layer(xt)))
            return [g.numpy() for g in tape.gradient(loss, [xt] + [v.value for v in layer.trainable_variables])]
        import jax

        values = [v.value for v in layer.trainable_variables]

        def loss(x, values):
            out, _ = layer.stateless_call(values, [], x)
            return (out**2).sum()

        gx, gv = jax.grad(loss, argnums=(0, 1))(x, values)
        return [np.asarray(gx)] + [np.asarray(g) for g in gv]

    for a, b in zip(grads(fused), grads(plain)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_mixed_precision_computes_in_bfloat16():
    fused, _ = _pair(dtype="mixed_bfloat16")
    reference, _ = _pair()  # float32, same weights
    x = np.random.default_rng(3).standard_normal((2, 3, 5)).astype("float32")
    out = fused(x)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    # bfloat16 keeps 8 significant bits: inputs, weights and output each
    # round once (Keras's Dense rounds once more, after the matmul).
    np.testing.assert_allclose(
        ops.convert_to_numpy(ops.cast(out, "float32")),
        ops.convert_to_numpy(reference(x)),
        rtol=2e-2,
        atol=2e-2,
    )


def test_lora_falls_back_to_keras_dense():
    fused, plain = _pair()
    fused.enable_lora(2)
    plain.enable_lora(2)
    assert not fused._fuses_bias()
    rng = np.random.default_rng(4)
    for layer in (fused, plain):
        layer.lora_kernel_b.assign(np.full(layer.lora_kernel_b.shape, 0.5, "float32"))
    plain.lora_kernel_a.assign(ops.convert_to_numpy(fused.lora_kernel_a))
    x = rng.standard_normal((4, 5)).astype("float32")
    np.testing.assert_allclose(ops.convert_to_numpy(fused(x)), ops.convert_to_numpy(plain(x)), atol=1e-5)


def test_weights_and_config_are_keras_dense_ones():
    fused, plain = _pair(activation="relu")
    assert [v.path.split("/")[-1] for v in fused.weights] == ["kernel", "bias"]
    revived = FusedBiasDense.from_config(fused.get_config())
    assert revived.get_config() == fused.get_config()
    config = dict(fused.get_config())
    assert config == {**plain.get_config(), "name": config["name"]}
