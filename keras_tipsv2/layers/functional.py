"""Small functions on tensors that several parts of the library share."""

from keras import ops


def l2_normalize(x, axis=-1, epsilon=1e-12):
    """x / max(||x||, epsilon) along `axis` (PyTorch's `F.normalize` rule).

    The reference helpers divide by the norm floored at a small epsilon, so an
    all-zero vector (an empty text) stays zero instead of becoming NaN.

    Args:
        x: a tensor.
        axis: the axis normalised.
        epsilon: the smallest norm divided by.

    Returns:
        A tensor of `x`'s shape and dtype.
    """
    norm = ops.sqrt(ops.sum(ops.square(x), axis=axis, keepdims=True))
    return x / ops.maximum(norm, ops.cast(epsilon, x.dtype))
