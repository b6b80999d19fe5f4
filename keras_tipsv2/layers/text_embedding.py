import math

import keras
import numpy as np
from keras import ops


def sinusoidal_position_signal(length, hidden_dim, min_timescale=1.0, max_timescale=1.0e4):
    """The fixed text position signal of TIPS: [sin | cos], concatenated.

    Timescales are spaced geometrically from `min_timescale` to
    `max_timescale` with an `n - 1` denominator (n = D / 2), the T5X/Lingvo
    form, which differs from the `2i / D` of the original Transformer and
    from KerasHub's interleaved `SinePositionEncoding`. An odd width gets one
    zero column. Returned as a float32 numpy array (length, hidden_dim).
    """
    n = hidden_dim // 2
    increment = math.log(max_timescale / min_timescale) / max(n - 1, 1)
    inv = min_timescale * np.exp(-increment * np.arange(n, dtype=np.float64))
    angles = np.arange(length, dtype=np.float64)[:, None] * inv[None, :]
    signal = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
    if hidden_dim % 2:
        signal = np.pad(signal, [[0, 0], [0, 1]])
    return signal.astype("float32")


@keras.saving.register_keras_serializable(package="keras_tipsv2")
class TIPSv2TextEmbedding(keras.layers.Layer):
    """Token embedding scaled by sqrt(D) plus the fixed sinusoidal signal.

    Args:
        vocabulary_size: 32000 for the published SentencePiece model.
        hidden_dim: width D.
        max_sequence_length: longest sequence the signal covers (64).
    """

    def __init__(self, vocabulary_size, hidden_dim, max_sequence_length=64, **kwargs):
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.hidden_dim = hidden_dim
        self.max_sequence_length = max_sequence_length
        self.token_embedding = keras.layers.Embedding(
            vocabulary_size,
            hidden_dim,
            embeddings_initializer=keras.initializers.RandomNormal(
                stddev=hidden_dim**-0.5
            ),
            dtype=self.dtype_policy,
            name="token_embedding",
        )
        self._signal = sinusoidal_position_signal(max_sequence_length, hidden_dim)

    def build(self, input_shape):
        self.token_embedding.build(input_shape)

    def call(self, token_ids):
        length = ops.shape(token_ids)[1]
        if isinstance(length, int) and length > self.max_sequence_length:
            raise ValueError(
                f"token_ids has length {length}, over the text tower's "
                f"max_sequence_length={self.max_sequence_length}. Tokenize with "
                "TIPSv2Tokenizer, which truncates."
            )
        x = self.token_embedding(token_ids)
        x = x * ops.cast(math.sqrt(self.hidden_dim), x.dtype)
        signal = ops.convert_to_tensor(self._signal, dtype=x.dtype)[:length]
        return x + signal[None]

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.hidden_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "hidden_dim": self.hidden_dim,
                "max_sequence_length": self.max_sequence_length,
            }
        )
        return config
