"""Attention computed a few (image, head) pairs at a time, for XLA on CPU.

XLA:CPU materialises the whole (B, H, N, N) logits of an attention call:
400 MB for the B/14 tower at 448 px and batch 8, written and read back
several times per layer, so the layer runs at memory speed. Computing the
same math for a few (image, head) pairs at a time, in a loop XLA keeps as
a loop (`ops.map`), leaves each step's logits small enough to stay in the
CPU's caches and puts the heads first, the layout XLA's batched matmuls
run fastest on. A flash-attention kernel would go further (no logits at
all); XLA:CPU has none, and this gets most of the way with plain ops.
Measured on the whole tower in benchmarks/RESULTS.md ("Kernel A/B on the
image tower, by CPU"). The policy passes it as the image tower's
`attention_fn` in float32 compiled inference on CPU: on JAX at every
length, on TensorFlow (whose `encode_images` compiles with XLA too) only
where an image's heads do not fit one step (`attention_for_long_sequences`),
since at 257 tokens the loop over images never ran faster than
TensorFlow's own kernel. Written in `keras.ops`, it runs on every backend.
"""

from keras import ops

# Logits bytes one loop step may hold: a few MB, well inside a server
# core's L2 + its share of L3, and large enough that a step's matmuls still
# use every core. Steps of 1-2 heads at 1,025 tokens, 12 heads at 257.
STEP_BYTES = 12 * 2**20


def heads_per_step(length, num_heads, itemsize=4):
    """How many (image, head) pairs one loop step computes.

    The largest divisor of `num_heads` whose logits, `heads * length**2 *
    itemsize` bytes, fit `STEP_BYTES`; at least 1.

    Args:
        length: tokens per image, N.
        num_heads: heads per image, H.
        itemsize: bytes per logit.

    Returns:
        An int dividing `num_heads`.
    """
    per_head = length * length * itemsize
    fitting = [g for g in range(1, num_heads + 1) if num_heads % g == 0 and g * per_head <= STEP_BYTES]
    return max(fitting, default=1)


def splits_heads(length, num_heads, itemsize=4):
    """Whether a step holds fewer than all of an image's heads, i.e. one
    image's logits, `num_heads * length**2 * itemsize` bytes, overflow
    `STEP_BYTES` (1,025 tokens and more for 12 heads; not 257)."""
    return heads_per_step(length, num_heads, itemsize) < num_heads


def attention_by_head_groups(query, key, value, scale):
    """softmax(q k^T * scale) v on (B, N, H, hd), a few heads per step.

    Same result as `ops.dot_product_attention(query, key, value,
    scale=scale)` up to float rounding. Each step takes `heads_per_step`
    (image, head) pairs in heads-major layout, computes their logits,
    subtracts the row max (a constant shift that softmax cancels, so no
    gradient flows through it), and divides the (N, hd) output by the row
    sums instead of the (N, N) weights.

    Args:
        query, key, value: (B, N, H, hd). Where N, H or hd is unknown
            when traced, the step size cannot be chosen and the call is
            `ops.dot_product_attention`'s.
        scale: the logits' multiplier, hd^-0.5.

    Returns:
        (B, N, H, hd).

    Example:
    ```python
    q = k = v = np.random.normal(size=(2, 1025, 12, 64)).astype("float32")
    out = attention_by_head_groups(q, k, v, 64**-0.5)   # (2, 1025, 12, 64)
    ```
    """
    _, length, num_heads, head_dim = query.shape
    if None in (length, num_heads, head_dim):
        return ops.dot_product_attention(query, key, value, scale=scale)
    group = heads_per_step(length, num_heads)

    def heads_major(t):  # (B, N, H, hd) -> (B * H / group, group, N, hd)
        return ops.reshape(ops.transpose(t, (0, 2, 1, 3)), (-1, group, length, head_dim))

    def attend(qkv):
        q, k, v = qkv
        logits = ops.einsum("gqd,gkd->gqk", q, k)
        weights = ops.exp(logits - ops.stop_gradient(ops.max(logits, axis=-1, keepdims=True)))
        out = ops.einsum("gqk,gkd->gqd", weights, v)
        return out / ops.sum(weights, axis=-1)[..., None]

    scaled = query * ops.cast(scale, query.dtype)
    out = ops.map(attend, (heads_major(scaled), heads_major(key), heads_major(value)))
    out = ops.reshape(out, (-1, num_heads, length, head_dim))
    return ops.transpose(out, (0, 2, 1, 3))


def attention_for_long_sequences(query, key, value, scale):
    """`attention_by_head_groups` where one image's heads overflow a step,
    `ops.dot_product_attention` otherwise.

    For backends where the loop pays only once it splits an image's heads
    (TensorFlow's XLA: faster on the B/14 tower at 448 px, 1,025 tokens and
    two heads per step; never faster at 224 px, 257 tokens and one image
    per step; benchmarks/RESULTS.md).

    Args:
        query, key, value: (B, N, H, hd).
        scale: the logits' multiplier, hd^-0.5.

    Returns:
        (B, N, H, hd), as `ops.dot_product_attention(query, key, value,
        scale=scale)` up to float rounding.

    Example:
    ```python
    q = k = v = np.random.normal(size=(2, 257, 12, 64)).astype("float32")
    out = attention_for_long_sequences(q, k, v, 64**-0.5)  # Keras's kernel
    ```
    """
    _, length, num_heads, _ = query.shape
    if None in (length, num_heads) or not splits_heads(length, num_heads):
        return ops.dot_product_attention(query, key, value, scale=scale)
    return attention_by_head_groups(query, key, value, scale)
