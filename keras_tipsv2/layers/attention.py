import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_tipsv2")
class TIPSv2Attention(keras.layers.Layer):
    """Multi-head self-attention with one fused `qkv` projection.

    One (D, 3D) kernel holds the query, key and value projections in that
    order, so the official PyTorch `qkv` weight ports 1:1. The scores are
    softmax(q k^T / sqrt(hd)) with hd = D / H, as in both reference
    implementations.

    Args:
        hidden_dim: model width D.
        num_heads: number of heads H; `hidden_dim` must divide by it.
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: (B, N, D).
        key_mask: optional (B, N) bool/int, 1 = a real key. A row whose keys
            are all padding attends uniformly and stays finite (the PyTorch
            reference returns NaN there).
        values_only: the MaskCLIP "values trick": the attention matrix is
            replaced by the identity, so each token gets its own value
            vector through the output projection.
        attention_fn: optional `fn(query, key, value, scale) -> output` on
            (B, N, H, hd) tensors for unmasked attention, the same function
            as `ops.dot_product_attention` computed another way. The models
            pass one from `keras_tipsv2.kernels` where it is faster; None
            (default) calls `ops.dot_product_attention`.

    Returns:
        (B, N, D).

    Example:
    ```python
    attention = TIPSv2Attention(hidden_dim=64, num_heads=4)
    outputs = attention(np.ones((2, 10, 64)))   # (2, 10, 64)
    ```
    """

    def __init__(self, hidden_dim, num_heads, **kwargs):
        super().__init__(**kwargs)
        if hidden_dim % num_heads:
            raise ValueError(
                f"hidden_dim={hidden_dim} is not divisible by num_heads={num_heads}."
            )
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.head_dim = hidden_dim // num_heads
        self.qkv = keras.layers.Dense(3 * hidden_dim, dtype=self.dtype_policy, name="qkv")
        self.proj = keras.layers.Dense(hidden_dim, dtype=self.dtype_policy, name="proj")

    def build(self, input_shape):
        self.qkv.build(input_shape)
        self.proj.build(tuple(input_shape[:-1]) + (self.hidden_dim,))

    def call(self, inputs, key_mask=None, values_only=False, attention_fn=None):
        query, key, value = ops.split(self.qkv(inputs), 3, axis=-1)
        if values_only:
            return self.proj(value)
        query, key, value = (self._heads(t) for t in (query, key, value))
        scale = self.head_dim**-0.5
        if key_mask is not None:
            mask = ops.cast(key_mask, "bool")[:, None, None, :]
            out = ops.dot_product_attention(query, key, value, mask=mask, scale=scale)
        elif attention_fn is not None:
            out = attention_fn(query, key, value, scale)
        else:
            out = ops.dot_product_attention(query, key, value, scale=scale)
        batch, length = ops.shape(out)[0], ops.shape(out)[1]
        return self.proj(ops.reshape(out, (batch, length, self.hidden_dim)))

    def _heads(self, x):
        """(B, N, D) -> (B, N, H, hd)."""
        batch, length = ops.shape(x)[0], ops.shape(x)[1]
        return ops.reshape(x, (batch, length, self.num_heads, self.head_dim))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"hidden_dim": self.hidden_dim, "num_heads": self.num_heads})
        return config
