import functools

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_tipsv2")
class TIPSv2LayerNorm(keras.layers.LayerNormalization):
    """Keras's `LayerNormalization` over the last axis, with faster kernels.

    The same layer (weights `gamma` and `beta`, the same config), computed
    another way where a measured speed-up demands it (benchmarks/RESULTS.md,
    two Zen 3 cores, B/14, batch 8; a tower runs 25 of these norms):
    - TensorFlow: one XLA-compiled kernel. Keras's version runs as separate
      graph ops (moments, rsqrt, two multiply-adds), each a pass over the
      (tokens, D) activation: 6.7 -> 3.7 ms per norm at 257 tokens, 44 ->
      15-19 ms at 1,025, float32.
    - torch: `torch.nn.functional.layer_norm` straight on the input when the
      weights share its dtype. Keras's op casts a bfloat16 input to float32
      and the result back, two extra passes, where torch's kernel already
      accumulates it in float32: 2.83 -> 0.96 ms per norm at 257 tokens in
      bfloat16 (float32: the same kernel, 0.75 -> 0.67 ms).
    - JAX: Keras's op (XLA fuses it already).
    Half-precision inputs are normalised in float32 and rounded once, as in
    Keras's op. Anything but a plain last-axis norm with both weights (RMS
    scaling, other axes) and symbolic inputs take Keras's op, and so does a
    mixed-precision policy on torch (float32 weights, bfloat16 inputs).
    """

    def call(self, inputs):
        if self._fast_path_applies(inputs):
            backend = keras.config.backend()
            if backend == "tensorflow":
                # Read values, not variables: a compiled function traced
                # with a tf.distribute (mirrored) variable keeps that
                # variable for every later call, i.e. every norm would
                # run with the first norm's weights.
                out = _xla_layer_norm(float(self.epsilon))(
                    inputs, _read(self.gamma), _read(self.beta)
                )
                return ops.cast(out, self.compute_dtype)
            if backend == "torch" and _same_dtype(inputs, self.gamma.value):
                import torch

                out = torch.nn.functional.layer_norm(
                    inputs,
                    (inputs.shape[-1],),
                    self.gamma.value,
                    self.beta.value,
                    self.epsilon,
                )
                return ops.cast(out, self.compute_dtype)
        return super().call(inputs)

    def _fast_path_applies(self, inputs):
        return (
            not isinstance(inputs, keras.KerasTensor)
            and keras.config.backend() in ("tensorflow", "torch")
            and list(self.axis) in ([-1], [len(inputs.shape) - 1])
            and self.center
            and self.scale
            and not self.rms_scaling
        )


def _read(variable):
    import tensorflow as tf

    return tf.convert_to_tensor(variable.value)


def _same_dtype(a, b):
    return keras.backend.standardize_dtype(a.dtype) == keras.backend.standardize_dtype(
        b.dtype
    )


@functools.cache
def _xla_layer_norm(epsilon):
    import tensorflow as tf

    def normalise(x, gamma, beta):
        dtype = x.dtype
        x = tf.cast(x, "float32") if dtype != tf.float64 else x
        mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
        scale = tf.math.rsqrt(variance + epsilon) * tf.cast(gamma, x.dtype)
        out = x * scale + (tf.cast(beta, x.dtype) - mean * scale)
        return tf.cast(out, dtype)

    return tf.function(normalise, jit_compile=True)
