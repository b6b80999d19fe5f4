import functools
import math

import keras
from keras import ops
from keras_hub.models import Backbone

from keras_tipsv2.layers import compiled_call
from keras_tipsv2.layers.temperature import ContrastiveTemperature
from keras_tipsv2.layers.vision_embedding import centre_pad_to_multiple
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
        vision_attention_implementation: how the image tower's attention
            runs: "auto" (the fastest measured on this backend and device),
            "backend", "explicit" or "per_head" (`TIPSv2Attention`). Same
            numbers up to float rounding; a runtime choice, not a weight.
        vision_remat: in training calls, recompute each image-tower block
            in the backward pass instead of keeping its activations (less
            memory, about one more forward pass; not with stochastic depth).
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
        vision_attention_implementation="auto",
        vision_remat=False,
        text_vocabulary_size=32000,
        text_max_sequence_length=64,
        text_layer_norm_epsilon=1e-6,
        initial_temperature=0.07,
        image_shape=(None, None, 3),
        dtype=None,
        **kwargs,
    ):
        if vision_hidden_dim != text_hidden_dim:
            raise ValueError(
                "TIPSv2 compares image and text embeddings directly, so "
                f"vision_hidden_dim ({vision_hidden_dim}) must equal "
                f"text_hidden_dim ({text_hidden_dim})."
            )
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
            attention_implementation=vision_attention_implementation,
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
        self.vision_attention_implementation = vision_attention_implementation
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
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """Loads a preset: a KerasHub preset, or a checkpoint converted on the fly.

        Accepts, besides KerasHub presets (built-in names, local directories,
        `kaggle://`, `hf://` repos in KerasHub format):
        - a Hugging Face `transformers` TIPSv2 checkpoint, local or `hf://`
          (config.json with model_type "tipsv2" + model.safetensors);
        - `tips-npz://URL_PREFIX`, the official npz pair
          `URL_PREFIX_vision.npz` / `URL_PREFIX_text.npz`.
        Keyword arguments (e.g. `dtype`, `image_shape`) override the config.
        """
        from keras_tipsv2.models import tipsv2_preset_loading

        checkpoint = tipsv2_preset_loading.checkpoint_for(preset)
        if checkpoint is None:
            return super().from_preset(preset, load_weights=load_weights, **kwargs)
        from keras_tipsv2.convert.loading import backbone_from_checkpoint

        if not load_weights:
            config = dict(checkpoint.config)
            config.update(kwargs)
            return cls(**config)
        return backbone_from_checkpoint(checkpoint, **kwargs)

    @property
    def token_embedding(self):
        return self.text_encoder.embedding.token_embedding

    @property
    def temperature(self):
        """The contrastive temperature: probabilities are softmax(cos / t)."""
        return self.contrastive_temperature()

    def encode_images(self, images, masks=None, training=False, values_trick=None):
        """Runs the image tower alone.

        Args:
            images: (B, H, W, 3) floats in [0, 1].
            masks: optional (B, h, w) bool patch mask (iBOT masking).
            training: enables stochastic depth.
            values_trick: None, "values" (the TIPS zero-shot segmentation
                protocol) or "values_no_residual" (MaskCLIP's original).

        Returns:
            {"cls_tokens": (B, 2, D), "patch_tokens": (B, h, w, D)}, final-normed.

        On torch, gradients flow through this call as through any module;
        for inference wrap it in `torch.no_grad()` as with any torch model:
        recording autograd's graph made B/14 at 448 px 1.4x slower, and
        without it the towers also take oneDNN's matmul on CPU in float32
        and compute their activations in place (benchmarks/RESULTS.md).
        """
        images = ops.convert_to_tensor(images, dtype=self.compute_dtype)
        if len(images.shape) != 4 or images.shape[-1] != 3:
            raise ValueError(
                "encode_images expects images of shape (batch, height, width, 3); "
                f"got {tuple(images.shape)}."
            )
        if masks is not None:
            masks = ops.convert_to_tensor(masks)
        if not training and compiled_call.runs_eagerly(images, masks):
            # Inference: on JAX and TensorFlow compiled once per
            # (values_trick, masks given) and input shape: eager JAX runs op
            # by op from Python, several times slower (benchmarks/RESULTS.md).
            # Train steps take the plain path. Padding first gives every
            # size with the same patch grid one compiled graph, and the same
            # numbers (a Pad fused into the graph's convolution rounds
            # differently on TensorFlow).
            images = centre_pad_to_multiple(images, self.vision_patch_size)
            return self._image_inference_call(
                ("encode_images", values_trick, masks is None),
                lambda x, m: self.vision_encoder(x, masks=m, values_trick=values_trick),
                images,
                masks,
            )
        return self.vision_encoder(
            images, masks=masks, training=training, values_trick=values_trick
        )

    def encode_text(self, token_ids, padding_mask, training=False):
        """Runs the text tower alone: (B, T) ids and mask -> (B, D) pooled."""
        token_ids = ops.convert_to_tensor(token_ids, dtype="int32")
        padding_mask = ops.convert_to_tensor(padding_mask, dtype="int32")
        if len(token_ids.shape) != 2 or token_ids.shape != padding_mask.shape:
            raise ValueError(
                "encode_text expects token_ids and padding_mask of the same "
                f"shape (batch, length); got {tuple(token_ids.shape)} and "
                f"{tuple(padding_mask.shape)}."
            )
        if not training and compiled_call.runs_eagerly(token_ids, padding_mask):
            # Inference: compiled per input shape as in encode_images, and on
            # torch/CPU in calls of a few texts (`texts_per_call`).
            return self._inference_call(
                self.text_encoder,
                ("encode_text",),
                lambda t, m: self.text_encoder(t, padding_mask=m),
                compiled_call.texts_per_call(
                    token_ids.shape[1], self._text_row_bytes()
                ),
                token_ids,
                padding_mask,
            )
        return self.text_encoder(token_ids, padding_mask=padding_mask, training=training)

    def get_intermediate_layers(self, images, indices):
        """Final-normed outputs of the blocks at 0-based `indices`.

        Returns a list of {"cls_tokens", "patch_tokens"} dicts, one per index,
        as the official `get_intermediate_layers(..., norm=True)` and the DPT
        heads use them.
        """
        images = ops.convert_to_tensor(images, dtype=self.compute_dtype)
        indices = tuple(int(i) for i in indices)
        if compiled_call.runs_eagerly(images):
            # Compiled per (indices, input shape), as encode_images.
            return self._image_inference_call(
                ("get_intermediate_layers", indices),
                lambda x: self.vision_encoder.intermediate_layers(x, indices),
                images,
            )
        return self.vision_encoder.intermediate_layers(images, indices)

    def _image_inference_call(self, key, fn, images, *tensors):
        """`fn(images, *tensors)` on the image tower for inference, with
        XLA where it suits (`xla_suits_the_image_tower`), on JAX/CPU in
        calls of a few images (`images_per_call`)."""
        patch = self.vision_patch_size
        patches = math.ceil(images.shape[1] / patch) * math.ceil(images.shape[2] / patch)
        return self._inference_call(
            self.vision_encoder,
            key,
            fn,
            compiled_call.images_per_call(patches),
            images,
            *tensors,
            xla=compiled_call.xla_suits_the_image_tower(),
        )

    def _inference_call(self, tower, key, fn, size, *tensors, xla=False):
        """`fn(*tensors)` over parts of at most `size` examples
        (`call_in_parts`), each compiled on `tower` under `key` where the
        backend compiles (`can_compile`) and run as it is on torch."""
        run = fn
        if compiled_call.can_compile(*tensors):
            run = functools.partial(compiled_call.compiled_call, tower, key, fn, xla=xla)
        return compiled_call.call_in_parts(run, size, *tensors)

    def _text_row_bytes(self):
        """Bytes of one token's widest text-tower activation: the qkv
        projection or the MLP's hidden layer."""
        width = max(3 * self.text_hidden_dim, self.text_intermediate_dim)
        # float16 / bfloat16 / float32 / float64: the bits are in the name.
        dtype = keras.backend.standardize_dtype(self.compute_dtype)
        return width * int("".join(filter(str.isdigit, dtype))) // 8

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
                "vision_attention_implementation": self.vision_attention_implementation,
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
