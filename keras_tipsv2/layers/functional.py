"""Small functions on tensors that several parts of the library share."""

import functools

import keras
from keras import ops


def l2_normalize(x, axis=-1, epsilon=1e-12):
    """x / max(||x||, epsilon) along `axis` (PyTorch's F.normalize rule).

    The reference helpers divide by the norm floored at a small epsilon, so an
    all-zero vector (an empty text) stays zero instead of becoming NaN.
    """
    norm = ops.sqrt(ops.sum(ops.square(x), axis=axis, keepdims=True))
    return x / ops.maximum(norm, ops.cast(epsilon, x.dtype))


def gelu(x, approximate=False):
    """GELU (exact erf form, or the tanh approximation), as `ops.gelu`.

    On TensorFlow it runs as one XLA-compiled kernel: TensorFlow's graph
    runs `tf.nn.gelu` as separate elementwise ops, each a pass over the
    (tokens, 4D) activation. Measured on the B/14 MLP's 2,056 x 3,072
    activation (two cores, tf.function, median of 11): 13.6 -> 7.8 ms in
    float32, 23.5 -> 8.7 ms in bfloat16 (benchmarks/RESULTS.md); float32
    outputs within 2.4e-7, bfloat16 within one bfloat16 step (XLA rounds
    once instead of after every op). Gradients are TensorFlow's gradient of
    the same function. JAX (XLA fuses it already) and torch (one fused
    kernel) take `ops.gelu`.
    """
    if keras.config.backend() == "tensorflow" and not isinstance(x, keras.KerasTensor):
        return _xla_gelu(bool(approximate))(x)
    return ops.gelu(x, approximate=approximate)


@functools.cache
def _xla_gelu(approximate):
    import tensorflow as tf

    return tf.function(
        lambda x: tf.nn.gelu(x, approximate=approximate), jit_compile=True
    )
