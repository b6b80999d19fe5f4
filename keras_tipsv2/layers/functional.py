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


def overwritable(x):
    """Whether `x` may be overwritten in place by the op that consumes it.

    Only on torch with autograd off (`torch.no_grad()`, inference mode),
    and only for temporaries the caller alone holds (the callers pass the
    fresh output of their own matmul). Eager torch allocates every op's
    output with malloc; computing the GELU, LayerScale and residual adds
    of a block into tensors that are about to be dropped anyway saves
    those allocations, and glibc returning the freed memory to the system
    between layers, with its page faults on the next one
    (benchmarks/RESULTS.md). With autograd on, in-place ops could
    overwrite what the backward pass saved, so everything is computed
    afresh.
    """
    if keras.config.backend() != "torch" or isinstance(x, keras.KerasTensor):
        return False
    import torch

    return not torch.is_grad_enabled() and not x.requires_grad


def add_into(temporary, other):
    """temporary + other, written into `temporary` where `overwritable`
    allows it and the result has its shape and dtype (addition commutes
    exactly, so the numbers are the same either way)."""
    if _fits_into(temporary, other):
        return temporary.add_(other)
    return temporary + other


def multiply_into(temporary, other):
    """temporary * other, written into `temporary` as `add_into` does."""
    if _fits_into(temporary, other):
        return temporary.mul_(other)
    return temporary * other


def _fits_into(temporary, other):
    if not overwritable(temporary):
        return False
    import torch

    return (
        isinstance(other, torch.Tensor)
        and other.dtype == temporary.dtype
        and torch.broadcast_shapes(temporary.shape, other.shape) == temporary.shape
    )


def gelu(x, approximate=False, in_place=False):
    """GELU (exact erf form, or the tanh approximation), as `ops.gelu`.

    `in_place=True` lets torch overwrite `x`, where `overwritable(x)`
    allows it (the same kernel, bit-identical outputs).

    On TensorFlow it runs as one XLA-compiled kernel: TensorFlow's graph
    runs `tf.nn.gelu` as separate elementwise ops, each a pass over the
    (tokens, 4D) activation. Measured on the B/14 MLP's 2,056 x 3,072
    activation (two cores, tf.function, median of 11): 13.6 -> 7.8 ms in
    float32, 23.5 -> 8.7 ms in bfloat16 (benchmarks/RESULTS.md); float32
    outputs within 2.4e-7, bfloat16 within one bfloat16 step (XLA rounds
    once instead of after every op). Gradients are TensorFlow's gradient of
    the same function. On both XLA backends the exact form is written out
    (`_erf_gelu`; on JAX XLA fuses it into one loop as it is); torch (one
    fused kernel) and the tanh form elsewhere take `ops.gelu`.
    """
    if in_place and overwritable(x):
        import torch

        return torch.ops.aten.gelu_(x, approximate="tanh" if approximate else "none")
    backend = keras.config.backend()
    if backend == "tensorflow" and not isinstance(x, keras.KerasTensor):
        return _xla_gelu(bool(approximate))(x)
    if backend == "jax" and not approximate:
        return _erf_gelu(x)
    return ops.gelu(x, approximate=approximate)


def _erf_gelu(x):
    """Exact GELU, x/2 (1 + erf(x / sqrt 2)), with the division written as a
    multiplication by 2^-0.5.

    `jax.nn.gelu` and `tf.nn.gelu` divide by sqrt 2 and by 2; XLA keeps a
    division by a constant as a division (rounding differs by at most one
    ulp). On the B/14 MLP's 8,200 x 3,072 activation at 448 px, the
    division form against this one: 53 vs 45 ms on TensorFlow, 64-68 vs 53
    ms on JAX (two Zen 3 cores, XLA alone, medians of 15; torch's kernel
    50-59 ms).
    Whole B/14 towers, `encode_images` batch 8, interleaved with the
    division form: JAX 3.06 -> 2.89 s at 224 px, 17.6 -> 16.5 s at 448;
    TensorFlow within the host's noise (3.11 vs 3.11 s; 17.4 vs 17.0 and
    17.4 vs 18.1 s in two runs at 448).
    Half-precision inputs are computed in float32 and rounded once (the
    casts fuse into the same XLA loop).
    """
    dtype = x.dtype
    x = ops.cast(x, "float32")
    return ops.cast(x * 0.5 * (1.0 + ops.erf(x * 0.5**0.5)), dtype)


@functools.cache
def _xla_gelu(approximate):
    import tensorflow as tf

    if approximate:
        return tf.function(lambda x: tf.nn.gelu(x, approximate=True), jit_compile=True)
    return tf.function(_erf_gelu, jit_compile=True)
