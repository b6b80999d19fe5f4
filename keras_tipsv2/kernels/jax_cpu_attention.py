"""Attention written out as einsums for JAX on CPU.

XLA:CPU compiles `jax.nn.dot_product_attention` (what
`ops.dot_product_attention` calls on JAX) into one dot fusion of the logits
matmul, row max, exponentials and sums, which runs far slower than the same
math as separate einsums (B/14 at 448 px: the whole image tower 1.34x
faster on a Zen 3 CPU, 1.23x on a Zen 4; benchmarks/RESULTS.md). The
policy passes this function as the image tower's `attention_fn` in float32
compiled inference on CPU.
"""

from keras import ops


def explicit_attention(query, key, value, scale):
    """softmax(q k^T * scale) v on (B, N, H, hd), normalised after the PV matmul.

    Same result as `ops.dot_product_attention(query, key, value,
    scale=scale)` up to float rounding. Dividing the (B, N, H, hd) output by
    the row sums, instead of the (B, H, N, N) weights, saves one pass over
    the largest tensor. The row max is a constant shift that softmax cancels,
    so no gradient flows through it.

    Args:
        query, key, value: (B, N, H, hd).
        scale: the logits' multiplier, hd^-0.5.

    Returns:
        (B, N, H, hd).
    """
    logits = ops.einsum("bqhd,bkhd->bhqk", query * ops.cast(scale, query.dtype), key)
    shift = ops.stop_gradient(ops.max(logits, axis=-1, keepdims=True))
    weights = ops.exp(logits - shift)
    out = ops.einsum("bhqk,bkhd->bqhd", weights, value)
    row_sums = ops.transpose(ops.sum(weights, axis=-1), (0, 2, 1))  # (B, N, H)
    return out / row_sums[..., None]
