import keras
from keras import ops

from keras_tipsv2.layers.attention import TIPSv2Attention
from keras_tipsv2.layers.drop_path import DropPath

MLP_ACTIVATIONS = ("gelu", "gelu_tanh", "swiglu")
VALUES_TRICKS = (None, "values", "values_no_residual")


@keras.saving.register_keras_serializable(package="keras_tipsv2")
class LayerScale(keras.layers.Layer):
    """Per-channel scale of a residual branch (DINOv2's `ls1` / `ls2`).

    Args:
        hidden_dim: the number of channels D.
        init_value: every gamma's starting value.
        **kwargs: `keras.layers.Layer` arguments.

    Call arguments:
        inputs: (..., D).

    Returns:
        `inputs * gamma`, the same shape.
    """

    def __init__(self, hidden_dim, init_value=1.0, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.init_value = init_value

    def build(self, input_shape):
        self.gamma = self.add_weight(
            shape=(self.hidden_dim,),
            initializer=keras.initializers.Constant(self.init_value),
            name="gamma",
        )

    def call(self, inputs):
        return inputs * ops.cast(self.gamma, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"hidden_dim": self.hidden_dim, "init_value": self.init_value})
        return config


@keras.saving.register_keras_serializable(package="keras_tipsv2")
class TIPSv2VisionMLP(keras.layers.Layer):
    """The vision feed-forward: GELU MLP, or SwiGLU for g/14.

    `"gelu"` is exact (erf) GELU as in the official PyTorch code;
    `"gelu_tanh"` is the tanh approximation, Flax's default, which the Scenic
    code uses. SwiGLU computes `W3(silu(Wg x) * (Wv x))` with the gate
    branch first, the PyTorch `w12` packing.

    Args:
        hidden_dim: input and output width D.
        intermediate_dim: hidden width; for SwiGLU the width of each of the
            two branches (4096 for g/14).
        activation: "gelu", "gelu_tanh" or "swiglu".
        **kwargs: `keras.layers.Layer` arguments.

    Call arguments:
        inputs: (..., D).

    Returns:
        (..., D).
    """

    def __init__(self, hidden_dim, intermediate_dim, activation="gelu", **kwargs):
        super().__init__(**kwargs)
        if activation not in MLP_ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {MLP_ACTIVATIONS}; got {activation!r}."
            )
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.activation = activation
        width = 2 * intermediate_dim if activation == "swiglu" else intermediate_dim
        self.fc1 = keras.layers.Dense(width, dtype=self.dtype_policy, name="fc1")
        self.fc2 = keras.layers.Dense(hidden_dim, dtype=self.dtype_policy, name="fc2")

    def build(self, input_shape):
        self.fc1.build(input_shape)
        self.fc2.build(input_shape[:-1] + (self.intermediate_dim,))

    def call(self, inputs):
        x = self.fc1(inputs)
        if self.activation == "swiglu":
            gate, value = ops.split(x, 2, axis=-1)
            x = ops.silu(gate) * value
        else:
            x = ops.gelu(x, approximate=self.activation == "gelu_tanh")
        return self.fc2(x)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "intermediate_dim": self.intermediate_dim,
                "activation": self.activation,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_tipsv2")
class TIPSv2VisionBlock(keras.layers.Layer):
    """Pre-LN ViT block: x + LS1(Attn(LN1 x)), then x + LS2(MLP(LN2 x)).

    Args:
        hidden_dim, num_heads, intermediate_dim: block shape.
        mlp_activation: "gelu" | "gelu_tanh" | "swiglu".
        layer_scale: keep LayerScale multipliers (the official PyTorch
            checkpoints carry them; the Scenic ones do not).
        layer_scale_init: the gammas' starting value when training from
            scratch (checkpoints overwrite it). 1.0 leaves each residual
            branch at full strength; DINOv2 trains from 1e-5, so every token
            starts as its own patch embedding and mixing grows as learned.
        drop_path_rate: stochastic depth rate, used only when training.
        layer_norm_epsilon: 1e-6 in both references.
        **kwargs: `keras.layers.Layer` arguments.

    Call arguments:
        inputs: (B, N, D).
        training: enables stochastic depth.
        values_trick: None for the normal block. "values" is the TIPS
            zero-shot protocol (attention replaced by its value path,
            residual and MLP kept); "values_no_residual" is MaskCLIP's
            original form (the value path alone, no residual, no MLP).
        attention_fn: passed to `TIPSv2Attention`.

    Returns:
        (B, N, D).

    Example:
    ```python
    block = TIPSv2VisionBlock(hidden_dim=64, num_heads=4, intermediate_dim=256)
    tokens = block(np.ones((2, 17, 64)))    # (2, 17, 64)
    ```
    """

    def __init__(
        self,
        hidden_dim,
        num_heads,
        intermediate_dim,
        mlp_activation="gelu",
        layer_scale=False,
        layer_scale_init=1.0,
        drop_path_rate=0.0,
        layer_norm_epsilon=1e-6,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.mlp_activation = mlp_activation
        self.layer_scale = layer_scale
        self.layer_scale_init = layer_scale_init
        self.drop_path_rate = drop_path_rate
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
        self.mlp = TIPSv2VisionMLP(
            hidden_dim, intermediate_dim, mlp_activation, dtype=policy, name="mlp"
        )
        self.ls1 = self.ls2 = None
        if layer_scale:
            self.ls1 = LayerScale(hidden_dim, layer_scale_init, dtype=policy, name="ls1")
            self.ls2 = LayerScale(hidden_dim, layer_scale_init, dtype=policy, name="ls2")
        self.drop_path = DropPath(drop_path_rate, dtype=policy, name="drop_path")

    def build(self, input_shape):
        for layer in (self.norm1, self.attention, self.norm2, self.mlp):
            layer.build(input_shape)
        if self.layer_scale:
            self.ls1.build(input_shape)
            self.ls2.build(input_shape)
        self.drop_path.build(input_shape)

    def call(self, inputs, training=False, values_trick=None, attention_fn=None):
        if values_trick not in VALUES_TRICKS:
            raise ValueError(
                f"values_trick must be one of {VALUES_TRICKS}; got {values_trick!r}."
            )
        branch = self.attention(
            self.norm1(inputs),
            values_only=values_trick is not None,
            attention_fn=attention_fn,
        )
        if values_trick == "values_no_residual":
            return self._scaled(branch, self.ls1)
        x = inputs + self.drop_path(self._scaled(branch, self.ls1), training=training)
        branch = self.mlp(self.norm2(x))
        return x + self.drop_path(self._scaled(branch, self.ls2), training=training)

    def _scaled(self, branch, layer_scale):
        return layer_scale(branch) if self.layer_scale else branch

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "mlp_activation": self.mlp_activation,
                "layer_scale": self.layer_scale,
                "layer_scale_init": self.layer_scale_init,
                "drop_path_rate": self.drop_path_rate,
                "layer_norm_epsilon": self.layer_norm_epsilon,
            }
        )
        return config
