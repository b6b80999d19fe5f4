import keras
from keras import ops

from keras_tipsv2.layers.attention import TIPSv2Attention


@keras.saving.register_keras_serializable(package="keras_tipsv2")
class TIPSv2TextBlock(keras.layers.Layer):
    """Pre-LN text block with a key-padding mask and a ReLU MLP.

    The MLP output is zeroed at padded positions, as the reference does, so
    padding never leaks into real tokens through later layers' residuals.

    Args:
        hidden_dim, num_heads, intermediate_dim: block shape.
        layer_norm_epsilon: 1e-6 (Scenic); the PyTorch and Hugging Face code
            use 1e-5.
        **kwargs: `keras.layers.Layer` arguments.

    Call arguments:
        inputs: (B, T, D).
        padding_mask: (B, T), 1 = real token.

    Returns:
        (B, T, D).
    """

    def __init__(
        self,
        hidden_dim,
        num_heads,
        intermediate_dim,
        layer_norm_epsilon=1e-6,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.layer_norm_epsilon = layer_norm_epsilon
        policy = self.dtype_policy
        self.norm1 = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=policy, name="norm1"
        )
        self.attention = TIPSv2Attention(
            hidden_dim, num_heads, dtype=policy, name="attention"
        )
        self.norm2 = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=policy, name="norm2"
        )
        self.fc1 = keras.layers.Dense(
            intermediate_dim, activation="relu", dtype=policy, name="fc1"
        )
        self.fc2 = keras.layers.Dense(hidden_dim, dtype=policy, name="fc2")

    def build(self, input_shape):
        self.norm1.build(input_shape)
        self.attention.build(input_shape)
        self.norm2.build(input_shape)
        self.fc1.build(input_shape)
        self.fc2.build(tuple(input_shape[:-1]) + (self.intermediate_dim,))

    def call(self, inputs, padding_mask):
        x = inputs + self.attention(self.norm1(inputs), key_mask=padding_mask)
        mask = ops.cast(padding_mask, x.dtype)[:, :, None]
        return x + self.fc2(self.fc1(self.norm2(x)) * mask) * mask

    def compute_output_shape(self, input_shape, padding_mask_shape=None):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "layer_norm_epsilon": self.layer_norm_epsilon,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_tipsv2")
class MaskedMeanPooling(keras.layers.Layer):
    """Mean over real tokens: sum(x * m) / (sum(m) + epsilon).

    With epsilon = 1e-8 (the reference's), a row with no real token pools to
    exactly zero rather than NaN.
    """

    def __init__(self, epsilon=1e-8, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def call(self, inputs, padding_mask):
        # float32 so that epsilon survives in float16 / bfloat16 policies.
        x = ops.cast(inputs, "float32")
        mask = ops.cast(padding_mask, "float32")[:, :, None]
        total = ops.sum(x * mask, axis=1)
        count = ops.sum(mask, axis=1)
        return ops.cast(total / (count + self.epsilon), inputs.dtype)

    def compute_output_shape(self, input_shape, padding_mask_shape=None):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update({"epsilon": self.epsilon})
        return config
