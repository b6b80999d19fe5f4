import numbers

import keras
import numpy as np
from keras import ops


def resize_position_grid(grid, height, width):
    """Resizes a (1, G, G, D) position table to (1, height, width, D).

    Bilinear, half-pixel centres, antialiased when shrinking: what both
    references do (`jax.image.resize` in Scenic, `F.interpolate(...,
    antialias=True)` in PyTorch). Computed in float32, then cast back. At the
    native grid the table is returned unchanged, so 448 px is exact.

    The resize is two matmuls with fixed weights (`bilinear_resize_weights`),
    the same numbers as `ops.image.resize` to float rounding. TensorFlow's
    antialiased resize (ScaleAndTranslate) has no XLA kernel, so this is what
    lets the image tower compile under XLA at every input size. The weights need the output size when the graph is
    traced, as `ops.image.resize` does.
    """
    if not all(isinstance(s, numbers.Integral) for s in (height, width)):
        raise ValueError(
            "The position table is resized to the patch grid, which must be "
            f"known when the graph is traced; got a grid of {(height, width)}. "
            "Trace with a fixed image height and width."
        )
    return antialiased_resize(grid, int(height), int(width))


def antialiased_resize(images, height, width):
    """(B, H, W, C) -> (B, height, width, C), bilinear, antialiased when shrinking.

    `ops.image.resize(..., interpolation="bilinear", antialias=True)` as two
    matmuls with fixed weights (`bilinear_resize_weights`), in float32, cast
    back; H and W must be static. Unlike TensorFlow's ScaleAndTranslate it
    compiles under XLA, so it also serves train steps that `fit` compiles
    with `jit_compile` (the distiller's teacher inputs and targets). The
    input is returned unchanged at its own size.
    """
    in_h, in_w = images.shape[1], images.shape[2]
    if (in_h, in_w) == (height, width):
        return images
    resized = ops.einsum(
        "yi,bijc,xj->byxc",
        bilinear_resize_weights(in_h, height),
        ops.cast(images, "float32"),
        bilinear_resize_weights(in_w, width),
    )
    return ops.cast(resized, images.dtype)


def bilinear_resize_weights(in_size, out_size):
    """(out_size, in_size) float32 weights of an antialiased bilinear resize.

    Output i samples the input at (i + 1/2) * in/out - 1/2 (half-pixel
    centres) with a triangle kernel, widened by in/out when shrinking
    (antialiasing); each row is normalised to sum to 1, which at the borders
    is the clamp-to-edge of plain bilinear. This is the kernel of
    `jax.image.scale_and_translate`, TensorFlow's ScaleAndTranslate and
    torch's antialiased `interpolate`.
    """
    stretch = max(in_size / out_size, 1.0)
    centres = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
    distance = (centres[:, None] - np.arange(in_size)[None, :]) / stretch
    weights = np.maximum(0.0, 1.0 - np.abs(distance))
    return (weights / weights.sum(axis=1, keepdims=True)).astype("float32")


def centre_pad_to_multiple(images, multiple):
    """Zero-pads H and W up to the next multiple, centred as Scenic does.

    top = floor(pad / 2), bottom = the rest; likewise left / right.
    """
    shape = ops.shape(images)
    height, width = shape[1], shape[2]
    pad_h = -height % multiple
    pad_w = -width % multiple
    if isinstance(pad_h, int) and isinstance(pad_w, int) and pad_h == pad_w == 0:
        return images
    return ops.pad(
        images,
        [
            [0, 0],
            [pad_h // 2, pad_h - pad_h // 2],
            [pad_w // 2, pad_w - pad_w // 2],
            [0, 0],
        ],
    )


@keras.saving.register_keras_serializable(package="keras_tipsv2")
class TIPSv2VisionEmbedding(keras.layers.Layer):
    """Patchify, optional mask-token substitution, positions, CLS tokens.

    Token order is [CLS_1, ..., CLS_k, patch_1, ..., patch_hw] with patches
    row-major. The learned position grid is added to patch tokens only (the
    CLS tokens get none; the PyTorch layout's CLS position entry is folded
    into CLS_1 at conversion time, which is exact).

    Args:
        hidden_dim: width D.
        patch_size: side of the square patches (14).
        num_cls_tokens: 2 for TIPS / TIPSv2.
        position_grid: (G_h, G_w) of the learned table, (32, 32) for v2.

    Call arguments:
        images: (B, H, W, 3). Sides that are not multiples of the patch size
            are centre zero-padded.
        masks: optional (B, h, w) or (B, h*w) bool, True = replace that patch
            embedding by the mask token before positions are added (iBOT).

    Returns:
        (B, num_cls_tokens + h*w, D).
    """

    def __init__(
        self,
        hidden_dim,
        patch_size=14,
        num_cls_tokens=2,
        position_grid=(32, 32),
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.patch_size = patch_size
        self.num_cls_tokens = num_cls_tokens
        self.position_grid = tuple(position_grid)
        self.patch_projection = keras.layers.Conv2D(
            hidden_dim,
            patch_size,
            strides=patch_size,
            padding="valid",
            data_format="channels_last",
            dtype=self.dtype_policy,
            name="patch_projection",
        )

    def build(self, input_shape):
        self.patch_projection.build((None, None, None, input_shape[-1]))
        init = keras.initializers.TruncatedNormal(stddev=0.02)
        self.cls_tokens = self.add_weight(
            shape=(1, self.num_cls_tokens, self.hidden_dim),
            initializer=keras.initializers.RandomNormal(stddev=1e-6),
            name="cls_tokens",
        )
        self.position_embedding = self.add_weight(
            shape=(1,) + self.position_grid + (self.hidden_dim,),
            initializer=init,
            name="position_embedding",
        )
        self.mask_token = self.add_weight(
            shape=(1, 1, self.hidden_dim), initializer="zeros", name="mask_token"
        )

    def patch_grid_shape(self, height, width):
        """The (h, w) patch grid for an input of the given size."""
        return -(-height // self.patch_size), -(-width // self.patch_size)

    def call(self, images, masks=None):
        images = centre_pad_to_multiple(images, self.patch_size)
        patches = self.patch_projection(images)  # (B, h, w, D)
        # Static sizes under JAX / torch; tensors when TensorFlow traces a
        # shape-polymorphic graph.
        batch, h, w = ops.shape(patches)[:3]
        patches = ops.reshape(patches, (batch, h * w, self.hidden_dim))
        if masks is not None:
            masks = ops.reshape(ops.cast(masks, "bool"), (batch, h * w, 1))
            patches = ops.where(
                masks, ops.cast(self.mask_token, patches.dtype), patches
            )
        positions = resize_position_grid(
            ops.cast(self.position_embedding, patches.dtype), h, w
        )
        patches = patches + ops.reshape(positions, (1, h * w, self.hidden_dim))
        cls = ops.broadcast_to(
            ops.cast(self.cls_tokens, patches.dtype),
            (batch, self.num_cls_tokens, self.hidden_dim),
        )
        return ops.concatenate([cls, patches], axis=1)

    def compute_output_shape(self, input_shape):
        height, width = input_shape[1], input_shape[2]
        if height is None or width is None:
            tokens = None
        else:
            h, w = self.patch_grid_shape(height, width)
            tokens = self.num_cls_tokens + h * w
        return (input_shape[0], tokens, self.hidden_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "patch_size": self.patch_size,
                "num_cls_tokens": self.num_cls_tokens,
                "position_grid": list(self.position_grid),
            }
        )
        return config
