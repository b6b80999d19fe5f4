import keras
from keras import ops

from keras_tipsv2.layers.vision_block import TIPSv2VisionBlock
from keras_tipsv2.layers.vision_embedding import TIPSv2VisionEmbedding


def layer_scale_init_per_block(layer_scale_init, num_layers):
    """One LayerScale starting value per block from a number or a list.

    A list lets the last block start at full strength while the others
    start near zero: the TIPS zero-shot protocol keeps the last block's
    residual, so its value path must be trained to outweigh it.
    """
    if isinstance(layer_scale_init, (int, float)):
        return [float(layer_scale_init)] * num_layers
    values = [float(v) for v in layer_scale_init]
    if len(values) != num_layers:
        raise ValueError(
            f"layer_scale_init has {len(values)} values but the tower has "
            f"{num_layers} blocks; give one number or one per block."
        )
    return values


@keras.saving.register_keras_serializable(package="keras_tipsv2")
class TIPSv2VisionEncoder(keras.layers.Layer):
    """The TIPSv2 image tower: embedding, pre-LN blocks, final LayerNorm.

    Holds the ways the library runs the tower besides the plain forward:
    with iBOT masks, with the MaskCLIP values trick in the last block, and
    with intermediate outputs for the DPT heads. `TIPSv2Backbone` documents
    the arguments (`vision_*`).

    Call arguments:
        images: (B, H, W, 3) floats in [0, 1]; sides that are not a multiple
            of the patch are centre-padded.
        masks: optional (B, h, w) bool patch mask (iBOT masking).
        training: enables stochastic depth.
        values_trick: None, "values" or "values_no_residual", applied in the
            last block (`TIPSv2VisionBlock`).
        attention_fn: passed to every block's attention (`TIPSv2Attention`).

    Returns:
        {"cls_tokens": (B, k, D), "patch_tokens": (B, h, w, D)}, both after
        the final norm.
    """

    def __init__(
        self,
        patch_size,
        hidden_dim,
        num_layers,
        num_heads,
        intermediate_dim,
        mlp_activation="gelu",
        num_cls_tokens=2,
        position_grid=(32, 32),
        layer_norm_epsilon=1e-6,
        layer_scale=False,
        layer_scale_init=1.0,
        drop_path_rate=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.patch_size = patch_size
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.mlp_activation = mlp_activation
        self.num_cls_tokens = num_cls_tokens
        self.position_grid = tuple(position_grid)
        self.layer_norm_epsilon = layer_norm_epsilon
        self.layer_scale = layer_scale
        self.layer_scale_init = layer_scale_init
        self.drop_path_rate = drop_path_rate
        block_inits = layer_scale_init_per_block(layer_scale_init, num_layers)
        policy = self.dtype_policy
        self.embedding = TIPSv2VisionEmbedding(
            hidden_dim,
            patch_size=patch_size,
            num_cls_tokens=num_cls_tokens,
            position_grid=self.position_grid,
            dtype=policy,
            name="embedding",
        )
        self.blocks = [
            TIPSv2VisionBlock(
                hidden_dim,
                num_heads,
                intermediate_dim,
                mlp_activation=mlp_activation,
                layer_scale=layer_scale,
                layer_scale_init=block_inits[i],
                # Linear stochastic-depth schedule over depth (Scenic's).
                drop_path_rate=drop_path_rate * i / max(num_layers - 1, 1),
                layer_norm_epsilon=layer_norm_epsilon,
                dtype=policy,
                name=f"block_{i}",
            )
            for i in range(num_layers)
        ]
        self.norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=policy, name="norm"
        )

    def build(self, input_shape):
        self.embedding.build(input_shape)
        token_shape = (None, None, self.hidden_dim)
        for block in self.blocks:
            block.build(token_shape)
        self.norm.build(token_shape)

    def _split(self, tokens, grid):
        """Splits (B, k + h*w, D) tokens into CLS tokens and a patch grid."""
        batch = ops.shape(tokens)[0]
        h, w = grid
        return {
            "cls_tokens": tokens[:, : self.num_cls_tokens],
            "patch_tokens": ops.reshape(
                tokens[:, self.num_cls_tokens :], (batch, h, w, self.hidden_dim)
            ),
        }

    def _grid(self, images):
        shape = ops.shape(images)
        p = self.patch_size
        return (shape[1] + p - 1) // p, (shape[2] + p - 1) // p

    def call(
        self, images, masks=None, training=False, values_trick=None, attention_fn=None
    ):
        x = self.embedding(images, masks=masks)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x = block(
                x,
                training=training,
                values_trick=values_trick if i == last else None,
                attention_fn=attention_fn,
            )
        return self._split(self.norm(x), self._grid(images))

    def intermediate_layers(self, images, indices, attention_fn=None):
        """Outputs of the blocks at 0-based `indices`, each final-normed.

        What the official `get_intermediate_layers(..., norm=True)` returns
        and what the DPT heads read. Only the blocks up to the deepest index
        are run.

        Args:
            images: (B, H, W, 3).
            indices: 0-based block indices in [0, num_layers).
            attention_fn: passed to every block's attention.

        Returns:
            A list of {"cls_tokens", "patch_tokens"} dicts, one per index.
        """
        indices = [int(i) for i in indices]
        wanted = set(indices)
        x = self.embedding(images)
        collected = {}
        for i, block in enumerate(self.blocks[: max(indices) + 1]):
            x = block(x, attention_fn=attention_fn)
            if i in wanted:
                collected[i] = self._split(self.norm(x), self._grid(images))
        return [collected[i] for i in indices]

    def compute_output_spec(
        self, images, masks=None, training=False, values_trick=None, attention_fn=None
    ):
        h, w = images.shape[1], images.shape[2]
        if h is not None:
            h = -(-h // self.patch_size)
        if w is not None:
            w = -(-w // self.patch_size)
        batch = images.shape[0]
        dtype = self.compute_dtype
        return {
            "cls_tokens": keras.KerasTensor(
                (batch, self.num_cls_tokens, self.hidden_dim), dtype=dtype
            ),
            "patch_tokens": keras.KerasTensor(
                (batch, h, w, self.hidden_dim), dtype=dtype
            ),
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "patch_size": self.patch_size,
                "hidden_dim": self.hidden_dim,
                "num_layers": self.num_layers,
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "mlp_activation": self.mlp_activation,
                "num_cls_tokens": self.num_cls_tokens,
                "position_grid": list(self.position_grid),
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "layer_scale": self.layer_scale,
                # Keras wraps list attributes in a TrackedList; configs hold
                # plain values.
                "layer_scale_init": (
                    self.layer_scale_init
                    if isinstance(self.layer_scale_init, (int, float))
                    else list(self.layer_scale_init)
                ),
                "drop_path_rate": self.drop_path_rate,
            }
        )
        return config
