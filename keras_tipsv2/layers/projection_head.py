import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_tipsv2")
class TIPSv2ProjectionHead(keras.layers.Layer):
    """DINO / iBOT projection head: MLP, L2-normalise, cosine prototypes.

    Dense(hidden) - GELU - ... - Dense(bottleneck), then the bottleneck vector
    is L2-normalised and scored against `num_prototypes` prototypes. The
    prototype matrix is weight-normalised with the gain fixed to 1 (DINO's
    `norm_last_layer`): each prototype column is divided by its norm at every
    call and has no bias, so the logits are cosines in [-1, 1].

    Args:
        hidden_dim: width of the hidden MLP layers (2048).
        bottleneck_dim: width of the last MLP layer (256).
        num_prototypes: K (32768 for TIPS).
        num_layers: number of Dense layers in the MLP (3).

    Call arguments:
        inputs: (..., D) tokens.

    Returns:
        (..., num_prototypes) prototype logits.
    """

    def __init__(
        self,
        hidden_dim=2048,
        bottleneck_dim=256,
        num_prototypes=32768,
        num_layers=3,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1; got {num_layers}.")
        self.hidden_dim = hidden_dim
        self.bottleneck_dim = bottleneck_dim
        self.num_prototypes = num_prototypes
        self.num_layers = num_layers
        widths = [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
        self.mlp = [
            keras.layers.Dense(
                width,
                kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
                bias_initializer="zeros",
                dtype=self.dtype_policy,
                name=f"dense_{i}",
            )
            for i, width in enumerate(widths)
        ]

    def build(self, input_shape):
        shape = tuple(input_shape)
        for dense in self.mlp:
            dense.build(shape)
            shape = shape[:-1] + (dense.units,)
        self.prototypes = self.add_weight(
            shape=(self.bottleneck_dim, self.num_prototypes),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            name="prototypes",
        )

    def bottleneck(self, inputs):
        """The L2-normalised (..., bottleneck_dim) vector before the prototypes."""
        x = inputs
        for i, dense in enumerate(self.mlp):
            x = dense(x)
            if i < len(self.mlp) - 1:
                x = ops.gelu(x, approximate=False)
        x = ops.cast(x, "float32")
        # F.normalize's rule: divide by max(norm, 1e-12).
        norm = ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True))
        return x / ops.maximum(norm, 1e-12)

    def call(self, inputs):
        x = self.bottleneck(inputs)
        v = ops.cast(self.prototypes, "float32")
        v = v / ops.maximum(ops.sqrt(ops.sum(ops.square(v), axis=0, keepdims=True)), 1e-12)
        return ops.cast(ops.matmul(x, v), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.num_prototypes,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "bottleneck_dim": self.bottleneck_dim,
                "num_prototypes": self.num_prototypes,
                "num_layers": self.num_layers,
            }
        )
        return config
