import keras
from keras import ops
from keras_hub.models import Backbone

from keras_tipsv2.kernels import policy as kernels
from keras_tipsv2.layers.temperature import ContrastiveTemperature
from keras_tipsv2.layers.vision_embedding import centre_pad_to_multiple
from keras_tipsv2.models import tipsv2_inference
from keras_tipsv2.models.tipsv2_backbone_config import check_backbone_config
from keras_tipsv2.models.tipsv2_inputs import (
    block_indices,
    check_backbone_values,
    checked_backbone_inputs,
    checked_images,
    checked_token_ids,
)
from keras_tipsv2.models.tipsv2_text_encoder import TIPSv2TextEncoder
from keras_tipsv2.models.tipsv2_vision_encoder import TIPSv2VisionEncoder


@keras.saving.register_keras_serializable(package="keras_tipsv2")
class TIPSv2Backbone(Backbone):
    """TIPSv2 image-text encoder: a ViT image tower and a text tower.

    Reproduces the published TIPS (v1) and TIPSv2 models. Images are RGB in
    [0, 1] with no mean/std normalisation; both towers share the width D and
    are compared by cosine similarity divided by `temperature`.

    Args:
        vision_patch_size: 14 for every published model.
        vision_hidden_dim, vision_num_layers, vision_num_heads: tower shape.
        vision_intermediate_dim: MLP width; for SwiGLU the width of each of
            the two branches (4096 for g/14).
        vision_mlp_activation: "gelu" (exact, the official PyTorch code),
            "gelu_tanh" (Flax's default, the Scenic code) or "swiglu" (g/14).
        vision_num_cls_tokens: 2 (CLS_1 pairs with alt-text, CLS_2 with
            synthetic captions).
        vision_position_grid: the learned position table, (32, 32) for v2 and
            the v1 high-res PyTorch files, (16, 16) for v1 Scenic / low-res.
        vision_layer_norm_epsilon: 1e-6.
        vision_layer_scale: keep LayerScale multipliers (checkpoints whose
            gammas are not all one); converters fold them otherwise.
        vision_layer_scale_init: the gammas' starting value for training
            from scratch (DINOv2: 1e-5; checkpoints overwrite it): one
            number, or a list with one per block (e.g. near zero except the
            last block, whose value path the TIPS protocol reads).
        vision_drop_path_rate: stochastic depth for training.
        vision_remat: in training calls, recompute each image-tower block
            in the backward pass instead of keeping its activations (less
            memory, about one more forward pass; not with stochastic depth).
            On JAX on CPU, XLA's default scheduler orders ops for
            concurrency and keeps the activations anyway; run with
            `XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=false`
            there to get the saving (benchmarks/RESULTS.md).
        text_vocabulary_size: 32000.
        text_hidden_dim, text_num_layers, text_num_heads,
        text_intermediate_dim: text tower shape (27 layers for So400m).
        text_max_sequence_length: 64.
        text_layer_norm_epsilon: 1e-6 (Scenic); the PyTorch and Hugging Face
            code use 1e-5.
        initial_temperature: starting value of the learned temperature.
        image_shape: (H, W, 3); None sides accept any size.
        dtype: dtype policy.

    Example:
    ```python
    backbone = TIPSv2Backbone.from_preset("tipsv2_tiny_shapes")
    out = backbone.encode_images(images)        # images (B, H, W, 3) in [0, 1]
    out["cls_tokens"], out["patch_tokens"]      # (B, 2, D), (B, H/14, W/14, D)
    text = backbone.encode_text(token_ids, padding_mask)   # (B, D)
    ```
    """

    def __init__(
        self,
        vision_hidden_dim,
        vision_num_layers,
        vision_num_heads,
        vision_intermediate_dim,
        text_hidden_dim,
        text_num_layers,
        text_num_heads,
        text_intermediate_dim,
        vision_patch_size=14,
        vision_mlp_activation="gelu",
        vision_num_cls_tokens=2,
        vision_position_grid=(32, 32),
        vision_layer_norm_epsilon=1e-6,
        vision_layer_scale=False,
        vision_layer_scale_init=1.0,
        vision_drop_path_rate=0.0,
        vision_remat=False,
        text_vocabulary_size=32000,
        text_max_sequence_length=64,
        text_layer_norm_epsilon=1e-6,
        initial_temperature=0.07,
        image_shape=(None, None, 3),
        dtype=None,
        **kwargs,
    ):
        check_backbone_config(locals())
        # === Layers ===
        self.vision_encoder = TIPSv2VisionEncoder(
            patch_size=vision_patch_size,
            hidden_dim=vision_hidden_dim,
            num_layers=vision_num_layers,
            num_heads=vision_num_heads,
            intermediate_dim=vision_intermediate_dim,
            mlp_activation=vision_mlp_activation,
            num_cls_tokens=vision_num_cls_tokens,
            position_grid=vision_position_grid,
            layer_norm_epsilon=vision_layer_norm_epsilon,
            layer_scale=vision_layer_scale,
            layer_scale_init=vision_layer_scale_init,
            drop_path_rate=vision_drop_path_rate,
            remat=vision_remat,
            dtype=dtype,
            name="vision_encoder",
        )
        self.text_encoder = TIPSv2TextEncoder(
            vocabulary_size=text_vocabulary_size,
            hidden_dim=text_hidden_dim,
            num_layers=text_num_layers,
            num_heads=text_num_heads,
            intermediate_dim=text_intermediate_dim,
            max_sequence_length=text_max_sequence_length,
            layer_norm_epsilon=text_layer_norm_epsilon,
            dtype=dtype,
            name="text_encoder",
        )
        self.contrastive_temperature = ContrastiveTemperature(
            initial_temperature, dtype=dtype, name="contrastive_temperature"
        )
        self.contrastive_temperature.build()

        # === Functional model ===
        image_input = keras.Input(shape=image_shape, name="images")
        token_id_input = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        padding_mask_input = keras.Input(
            shape=(None,), dtype="int32", name="padding_mask"
        )
        vision = self.vision_encoder(image_input)
        text = self.text_encoder(token_id_input, padding_mask=padding_mask_input)
        super().__init__(
            inputs={
                "images": image_input,
                "token_ids": token_id_input,
                "padding_mask": padding_mask_input,
            },
            outputs={
                "vision_cls_tokens": vision["cls_tokens"],
                "vision_patch_tokens": vision["patch_tokens"],
                "text_embeddings": text,
            },
            dtype=dtype,
            **kwargs,
        )
        # The temperature is on no path of the graph. On torch, layers set
        # before Functional.__init__ are tracked only through the graph, so
        # without this its variable is neither trained nor saved there.
        self.contrastive_temperature = self.contrastive_temperature

        # === Config ===
        self.vision_patch_size = vision_patch_size
        self.vision_hidden_dim = vision_hidden_dim
        self.vision_num_layers = vision_num_layers
        self.vision_num_heads = vision_num_heads
        self.vision_intermediate_dim = vision_intermediate_dim
        self.vision_mlp_activation = vision_mlp_activation
        self.vision_num_cls_tokens = vision_num_cls_tokens
        self.vision_position_grid = tuple(vision_position_grid)
        self.vision_layer_norm_epsilon = vision_layer_norm_epsilon
        self.vision_layer_scale = vision_layer_scale
        self.vision_layer_scale_init = vision_layer_scale_init
        self.vision_drop_path_rate = vision_drop_path_rate
        self.vision_remat = vision_remat
        self.text_vocabulary_size = text_vocabulary_size
        self.text_hidden_dim = text_hidden_dim
        self.text_num_layers = text_num_layers
        self.text_num_heads = text_num_heads
        self.text_intermediate_dim = text_intermediate_dim
        self.text_max_sequence_length = text_max_sequence_length
        self.text_layer_norm_epsilon = text_layer_norm_epsilon
        self.initial_temperature = initial_temperature
        self.image_shape = tuple(image_shape)

    @classmethod
    def from_config(cls, config):
        # Presets written by keras_tipsv2 0.1 name the attention path they
        # ran; that choice is `keras_tipsv2.kernels`'s now.
        config = dict(config)
        config.pop("vision_attention_implementation", None)
        return super().from_config(config)

    @property
    def token_embedding(self):
        return self.text_encoder.embedding.token_embedding

    @property
    def temperature(self):
        """The contrastive temperature: probabilities are softmax(cos / t)."""
        return self.contrastive_temperature()

    def call(self, inputs, training=None, mask=None):
        # `backbone(inputs)`, `predict` and `fit` on the functional model get
        # the input contract of `encode_images` / `encode_text`: uint8
        # images become [0, 1] and shapes are checked always; values are
        # checked where they can be read (eager calls, not a compiled step).
        inputs = checked_backbone_inputs(
            inputs, self.compute_dtype, self.text_vocabulary_size, not training
        )
        return super().call(inputs, training=training, mask=mask)

    def predict(self, x, batch_size=None, **kwargs):
        """Keras' `predict`, with numpy and tensor inputs checked against the
        input contract first, as a whole: inside the compiled predict step
        only shapes can be checked."""
        check_backbone_values(x, self.text_vocabulary_size)
        return super().predict(x, batch_size=batch_size, **kwargs)

    def encode_images(self, images, masks=None, training=False, values_trick=None):
        """Runs the image tower alone.

        At inference (`training=False`, concrete inputs) the call is
        compiled once per configuration and input shape (`jax.jit`,
        `tf.function` with XLA) and may take the faster kernels
        `keras_tipsv2.kernels` chooses for this device; in a train step or
        on symbolic inputs the layers run as they are. On torch it records
        gradients like any module unless called under `torch.no_grad()`.

        Args:
            images: (B, H, W, 3) floats in [0, 1] or uint8, or image paths /
                PIL images of one size (`tipsv2_inputs`). Sides that are not a
                multiple of the patch size are centre-padded.
            masks: optional (B, h, w) bool patch mask (iBOT masking).
            training: enables stochastic depth.
            values_trick: None, "values" (the TIPS zero-shot segmentation
                protocol) or "values_no_residual" (MaskCLIP's original).

        Returns:
            {"cls_tokens": (B, 2, D), "patch_tokens": (B, h, w, D)},
            final-normed, h = ceil(H / patch), w = ceil(W / patch).

        Example:
        ```python
        out = backbone.encode_images(np.random.uniform(size=(2, 224, 224, 3)))
        out["patch_tokens"].shape   # (2, 16, 16, D) for patch 14
        ```
        """
        images = checked_images(images, self.compute_dtype, "encode_images", not training)
        if masks is not None:
            masks = ops.convert_to_tensor(masks)
        if training or not tipsv2_inference.runs_eagerly(images, masks):
            return self.vision_encoder(
                images, masks=masks, training=training, values_trick=values_trick
            )
        attention_fn = kernels.attention_fn(self.compute_dtype)

        def encode(x, m):
            return self.vision_encoder(
                x, masks=m, values_trick=values_trick, attention_fn=attention_fn
            )

        key = ("encode_images", values_trick, masks is None)
        return self._image_inference(key, encode, images, masks)

    def encode_text(self, token_ids, padding_mask, training=False):
        """Runs the text tower alone, compiled at inference as `encode_images`.

        Args:
            token_ids: (B, T) int in [0, `text_vocabulary_size`), T <=
                `text_max_sequence_length`; other ids are refused.
            padding_mask: (B, T), 1 = real token.
            training: unused by the text tower; a train step passes True to
                run the layers uncompiled.

        Returns:
            (B, D) mean-pooled text embeddings, not normalised.

        Example:
        ```python
        tokens = tokenizer(["a red circle"])
        text = backbone.encode_text(tokens["token_ids"], tokens["padding_mask"])
        ```
        """
        token_ids, padding_mask = checked_token_ids(
            token_ids, padding_mask, self.text_vocabulary_size, not training
        )
        if training or not tipsv2_inference.runs_eagerly(token_ids, padding_mask):
            return self.text_encoder(token_ids, padding_mask=padding_mask)
        encode = tipsv2_inference.compiled(
            self,
            ("encode_text",),
            lambda t, m: self.text_encoder(t, padding_mask=m),
            self.text_encoder.variables,
        )
        return encode(token_ids, padding_mask)

    def get_intermediate_layers(self, images, indices):
        """Final-normed outputs of the image tower's blocks at `indices`
        (negative ones count from the end), or of the last n blocks for an
        int n.

        What the official `get_intermediate_layers(..., norm=True)` returns
        and what the DPT heads read; compiled at inference as
        `encode_images`.

        Args:
            images: (B, H, W, 3) floats in [0, 1], as `encode_images`.
            indices: block indices (0-based, negative from the end), or an
                int n for the last n blocks.

        Returns:
            A list of {"cls_tokens", "patch_tokens"} dicts, one per index.
        """
        images = checked_images(images, self.compute_dtype, "get_intermediate_layers")
        indices = block_indices(indices, self.vision_num_layers)
        if not tipsv2_inference.runs_eagerly(images):
            return self.vision_encoder.intermediate_layers(images, indices)
        attention_fn = kernels.attention_fn(self.compute_dtype)

        def intermediate(x):
            return self.vision_encoder.intermediate_layers(
                x, indices, attention_fn=attention_fn
            )

        key = ("get_intermediate_layers", indices)
        return self._image_inference(key, intermediate, images)

    def _image_inference(self, key, fn, images, *tensors):
        """`fn(images, *tensors)` compiled. Padding first gives every size
        with the same patch grid one compiled function and the same numbers."""
        images = centre_pad_to_multiple(images, self.vision_patch_size)
        run = tipsv2_inference.compiled(self, key, fn, self.vision_encoder.variables)
        return run(images, *tensors)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vision_patch_size": self.vision_patch_size,
                "vision_hidden_dim": self.vision_hidden_dim,
                "vision_num_layers": self.vision_num_layers,
                "vision_num_heads": self.vision_num_heads,
                "vision_intermediate_dim": self.vision_intermediate_dim,
                "vision_mlp_activation": self.vision_mlp_activation,
                "vision_num_cls_tokens": self.vision_num_cls_tokens,
                "vision_position_grid": list(self.vision_position_grid),
                "vision_layer_norm_epsilon": self.vision_layer_norm_epsilon,
                "vision_layer_scale": self.vision_layer_scale,
                # Keras wraps list attributes in a TrackedList; configs hold
                # plain values.
                "vision_layer_scale_init": (
                    self.vision_layer_scale_init
                    if isinstance(self.vision_layer_scale_init, (int, float))
                    else list(self.vision_layer_scale_init)
                ),
                "vision_drop_path_rate": self.vision_drop_path_rate,
                "vision_remat": self.vision_remat,
                "text_vocabulary_size": self.text_vocabulary_size,
                "text_hidden_dim": self.text_hidden_dim,
                "text_num_layers": self.text_num_layers,
                "text_num_heads": self.text_num_heads,
                "text_intermediate_dim": self.text_intermediate_dim,
                "text_max_sequence_length": self.text_max_sequence_length,
                "text_layer_norm_epsilon": self.text_layer_norm_epsilon,
                "initial_temperature": self.initial_temperature,
                "image_shape": list(self.image_shape),
            }
        )
        return config
