import keras

from keras_tipsv2.layers.text_block import MaskedMeanPooling, TIPSv2TextBlock
from keras_tipsv2.layers.text_embedding import TIPSv2TextEmbedding


@keras.saving.register_keras_serializable(package="keras_tipsv2")
class TIPSv2TextEncoder(keras.layers.Layer):
    """The TIPSv2 text tower: embedding, masked pre-LN blocks, final LN, mean pool.

    Call arguments:
        token_ids: (B, T) int, T <= max_sequence_length.
        padding_mask: (B, T), 1 = real token.

    Returns:
        (B, D) pooled text embedding, not normalised (callers L2-normalise).
    """

    def __init__(
        self,
        vocabulary_size,
        hidden_dim,
        num_layers,
        num_heads,
        intermediate_dim,
        max_sequence_length=64,
        layer_norm_epsilon=1e-6,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.max_sequence_length = max_sequence_length
        self.layer_norm_epsilon = layer_norm_epsilon
        policy = self.dtype_policy
        self.embedding = TIPSv2TextEmbedding(
            vocabulary_size,
            hidden_dim,
            max_sequence_length=max_sequence_length,
            dtype=policy,
            name="embedding",
        )
        self.blocks = [
            TIPSv2TextBlock(
                hidden_dim,
                num_heads,
                intermediate_dim,
                layer_norm_epsilon=layer_norm_epsilon,
                dtype=policy,
                name=f"block_{i}",
            )
            for i in range(num_layers)
        ]
        self.norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=policy, name="norm"
        )
        self.pooling = MaskedMeanPooling(dtype=policy, name="pooling")

    def build(self, token_ids_shape, padding_mask_shape=None):
        self.embedding.build(token_ids_shape)
        hidden_shape = tuple(token_ids_shape) + (self.hidden_dim,)
        for block in self.blocks:
            block.build(hidden_shape)
        self.norm.build(hidden_shape)
        self.pooling.build(hidden_shape)
        self.built = True

    def call(self, token_ids, padding_mask):
        x = self.embedding(token_ids)
        for block in self.blocks:
            x = block(x, padding_mask=padding_mask)
        return self.pooling(self.norm(x), padding_mask=padding_mask)

    def compute_output_shape(self, token_ids_shape, padding_mask_shape=None):
        return (token_ids_shape[0], self.hidden_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "hidden_dim": self.hidden_dim,
                "num_layers": self.num_layers,
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "max_sequence_length": self.max_sequence_length,
                "layer_norm_epsilon": self.layer_norm_epsilon,
            }
        )
        return config
