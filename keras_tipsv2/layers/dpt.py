"""The DPT decoder that the TIPSv2 dense heads put on frozen ViT features.

Follows the official `pytorch/decoders.py` (google-deepmind/tips): four
intermediate layers, each a (CLS_1, patch map) pair, are read out,
reassembled at four scales, fused bottom-up and projected; a per-pixel Dense
gives the task's channels. Everything is channels-last.
"""

import keras
from keras import ops


def upsample_2x_align_corners(images):
    """Doubles H and W of (B, H, W, C) by bilinear align_corners=True.

    What the official fusion blocks use (`F.interpolate(..., scale_factor=2,
    align_corners=True)`); Keras' resize only has half-pixel centres. Output
    pixel i samples the input at i * (n - 1) / (2n - 1), so both corners stay
    put.
    """
    return _upsample_axis(_upsample_axis(images, axis=1), axis=2)


def _upsample_axis(images, axis):
    size = ops.shape(images)[axis]
    dst = ops.arange(2 * size, dtype="float32")
    src = dst * ops.cast(size - 1, "float32") / ops.cast(
        ops.maximum(2 * size - 1, 1), "float32"
    )
    lower = ops.floor(src)
    frac = ops.cast(src - lower, images.dtype)
    lower = ops.cast(lower, "int32")
    upper = ops.minimum(lower + 1, size - 1)
    shape = [1, 1, 1, 1]
    shape[axis] = -1
    frac = ops.reshape(frac, shape)
    low_values = ops.take(images, lower, axis=axis)
    high_values = ops.take(images, upper, axis=axis)
    return low_values + (high_values - low_values) * frac


def resize_bilinear(images, height, width):
    """Half-pixel bilinear resize of (B, H, W, C), no antialiasing.

    `F.interpolate(mode="bilinear", align_corners=False)`, which the fusion
    blocks use to match odd-sized skips and the heads use to reach image
    size.
    """
    return ops.image.resize(
        images,
        (height, width),
        interpolation="bilinear",
        antialias=False,
        data_format="channels_last",
    )


def _conv(filters, kernel_size, use_bias, name, dtype, strides=1, padding="same"):
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=use_bias,
        data_format="channels_last",
        dtype=dtype,
        name=name,
    )


@keras.saving.register_keras_serializable(package="keras_tipsv2")
class DPTReadoutProjection(keras.layers.Layer):
    """Mixes CLS_1 into every patch: GELU(Dense([patch, CLS_1])).

    The official "project" readout: patch first, CLS second, a Dense back to
    D, then the tanh-approximate GELU (the JAX default the checkpoints were
    trained with).

    Args:
        hidden_dim: ViT width D.
    """

    def __init__(self, hidden_dim, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.dense = keras.layers.Dense(
            hidden_dim, dtype=self.dtype_policy, name="dense"
        )

    def build(self, cls_shape, patch_shape=None):
        self.dense.build((None, 2 * self.hidden_dim))

    def call(self, cls_token, patch_tokens):
        shape = ops.shape(patch_tokens)
        readout = ops.broadcast_to(cls_token[:, None, None, :], shape)
        mixed = self.dense(ops.concatenate([patch_tokens, readout], axis=-1))
        return ops.gelu(mixed, approximate=True)

    def compute_output_shape(self, cls_shape, patch_shape):
        return patch_shape

    def get_config(self):
        config = super().get_config()
        config.update({"hidden_dim": self.hidden_dim})
        return config


@keras.saving.register_keras_serializable(package="keras_tipsv2")
class DPTReassemble(keras.layers.Layer):
    """1x1 projection to `channels`, then a resize by `factor`.

    factor > 1: a transposed convolution with kernel = stride = factor;
    factor 1: nothing; factor < 1: a 3x3 convolution with stride 1 / factor
    and one pixel of zero padding on every side (PyTorch's `padding=1`, not
    Keras' asymmetric "same").

    Args:
        channels: output channels c_k.
        factor: 4, 2, 1 or 0.5 in the published heads.
    """

    def __init__(self, channels, factor, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.factor = factor
        policy = self.dtype_policy
        self.projection = _conv(channels, 1, True, "projection", policy)
        if factor > 1:
            if int(factor) != factor:
                raise ValueError(f"Upsampling factors must be integers; got {factor}.")
            self.resize = keras.layers.Conv2DTranspose(
                channels,
                int(factor),
                strides=int(factor),
                padding="valid",
                data_format="channels_last",
                dtype=policy,
                name="resize",
            )
        elif factor == 1:
            self.resize = None
        else:
            stride = round(1 / factor)
            if abs(stride * factor - 1) > 1e-6:
                raise ValueError(
                    f"Downsampling factors must be 1 / integer; got {factor}."
                )
            self.resize = _conv(
                channels, 3, True, "resize", policy, strides=stride, padding="valid"
            )

    def build(self, input_shape):
        self.projection.build(input_shape)
        if self.resize is not None:
            self.resize.build(tuple(input_shape[:-1]) + (self.channels,))

    def call(self, inputs):
        x = self.projection(inputs)
        if self.resize is None:
            return x
        if self.factor < 1:
            x = ops.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
        return self.resize(x)

    def compute_output_shape(self, input_shape):
        batch, h, w = input_shape[:3]
        return (batch, _scaled(h, self.factor), _scaled(w, self.factor), self.channels)

    def get_config(self):
        config = super().get_config()
        config.update({"channels": self.channels, "factor": self.factor})
        return config


def _scaled(size, factor):
    if size is None:
        return None
    if factor >= 1:
        return int(size * factor)
    stride = round(1 / factor)
    return (size + 2 - 3) // stride + 1


@keras.saving.register_keras_serializable(package="keras_tipsv2")
class PreActResidualUnit(keras.layers.Layer):
    """x + conv3x3(ReLU(conv3x3(ReLU(x)))), both convolutions bias-free.

    Args:
        channels: width of the fusion path (256 in the published heads).
    """

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.conv1 = _conv(channels, 3, False, "conv1", self.dtype_policy)
        self.conv2 = _conv(channels, 3, False, "conv2", self.dtype_policy)

    def build(self, input_shape):
        self.conv1.build(input_shape)
        self.conv2.build(input_shape)

    def call(self, inputs):
        x = self.conv1(ops.relu(inputs))
        x = self.conv2(ops.relu(x))
        return inputs + x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"channels": self.channels})
        return config


@keras.saving.register_keras_serializable(package="keras_tipsv2")
class DPTFusionBlock(keras.layers.Layer):
    """One bottom-up fusion step of DPT.

    With a skip: the skip is resized to the running map if their sizes
    differ, passed through its own residual unit and added. Then the main
    residual unit, the x2 align-corners upsample and a 1x1 convolution.

    Args:
        channels: width of the fusion path.
        has_residual: False for the first (deepest) block, which has no skip.
    """

    def __init__(self, channels, has_residual=True, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.has_residual = has_residual
        policy = self.dtype_policy
        if has_residual:
            self.residual_unit = PreActResidualUnit(
                channels, dtype=policy, name="residual_unit"
            )
        self.main_unit = PreActResidualUnit(channels, dtype=policy, name="main_unit")
        self.out_conv = _conv(channels, 1, True, "out_conv", policy)

    def build(self, input_shape, residual_shape=None):
        shape = (None, None, None, self.channels)
        if self.has_residual:
            self.residual_unit.build(shape)
        self.main_unit.build(shape)
        self.out_conv.build(shape)

    def call(self, inputs, residual=None):
        x = inputs
        if (residual is None) == self.has_residual:
            raise ValueError(
                "DPTFusionBlock(has_residual="
                f"{self.has_residual}) called with residual="
                f"{'None' if residual is None else 'a tensor'}."
            )
        if residual is not None:
            residual = _match_size(residual, x)
            x = x + self.residual_unit(residual)
        x = self.main_unit(x)
        return self.out_conv(upsample_2x_align_corners(x))

    def compute_output_shape(self, input_shape, residual_shape=None):
        batch, h, w = input_shape[:3]
        double = lambda s: None if s is None else 2 * s  # noqa: E731
        return (batch, double(h), double(w), self.channels)

    def get_config(self):
        config = super().get_config()
        config.update({"channels": self.channels, "has_residual": self.has_residual})
        return config


def _match_size(residual, target):
    """Resizes `residual` to `target`'s H, W when they differ (odd grids)."""
    r_h, r_w = residual.shape[1], residual.shape[2]
    t_h, t_w = target.shape[1], target.shape[2]
    static = all(isinstance(s, int) for s in (r_h, r_w, t_h, t_w))
    if static and (r_h, r_w) == (t_h, t_w):
        return residual
    # Under a shape-polymorphic trace the sizes are unknown; resizing to the
    # same size is the identity for half-pixel bilinear, so it is safe.
    t_shape = ops.shape(target)
    return resize_bilinear(residual, t_shape[1], t_shape[2])


@keras.saving.register_keras_serializable(package="keras_tipsv2")
class TIPSv2DPTHead(keras.layers.Layer):
    """DPT decoder from four intermediate TIPSv2 layers to a dense map.

    Args:
        hidden_dim: ViT width D of the features.
        output_channels: channels of the per-pixel Dense (150 for ADE20K,
            256 depth bins, 3 for normals).
        post_process_channels: reassembled widths c_0..c_3; defaults to
            (D/8, D/4, D/2, D), the published heads' choice.
        fusion_channels: width of the fusion path (256 published).
        reassemble_factors: resize of each level, (4, 2, 1, 0.5).
        project_activation: None (the official decoders, Scenic parity) or
            "relu" (the `transformers` depth decoder applies one).

    Call arguments:
        features: a list of four (cls_token (B, D), patch_tokens
            (B, h, w, D)) pairs, shallowest first, each final-normed.

    Returns:
        (B, 8h, 8w, output_channels) for even h, w: the head resolution.
    """

    def __init__(
        self,
        hidden_dim,
        output_channels,
        post_process_channels=None,
        fusion_channels=256,
        reassemble_factors=(4, 2, 1, 0.5),
        project_activation=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if post_process_channels is None:
            post_process_channels = tuple(hidden_dim // d for d in (8, 4, 2, 1))
        if len(post_process_channels) != len(reassemble_factors):
            raise ValueError(
                "post_process_channels and reassemble_factors need one entry per "
                f"level; got {post_process_channels} and {reassemble_factors}."
            )
        if project_activation not in (None, "relu"):
            raise ValueError(
                f"project_activation must be None or 'relu'; got {project_activation!r}."
            )
        self.hidden_dim = hidden_dim
        self.output_channels = output_channels
        self.post_process_channels = tuple(post_process_channels)
        self.fusion_channels = fusion_channels
        self.reassemble_factors = tuple(reassemble_factors)
        self.project_activation = project_activation
        policy = self.dtype_policy
        levels = range(len(self.post_process_channels))
        self.readouts = [
            DPTReadoutProjection(hidden_dim, dtype=policy, name=f"readout_{k}")
            for k in levels
        ]
        self.reassembles = [
            DPTReassemble(c, f, dtype=policy, name=f"reassemble_{k}")
            for k, (c, f) in enumerate(
                zip(self.post_process_channels, self.reassemble_factors)
            )
        ]
        self.convs = [
            _conv(fusion_channels, 3, False, f"conv_{k}", policy) for k in levels
        ]
        self.fusion_blocks = [
            DPTFusionBlock(
                fusion_channels, has_residual=k > 0, dtype=policy, name=f"fusion_{k}"
            )
            for k in levels
        ]
        self.project = _conv(fusion_channels, 3, True, "project", policy)
        self.output_dense = keras.layers.Dense(
            output_channels, dtype=policy, name="output_dense"
        )

    @property
    def num_levels(self):
        return len(self.post_process_channels)

    def build(self, features_shape=None):
        token_shape = (None, None, None, self.hidden_dim)
        fusion_shape = (None, None, None, self.fusion_channels)
        for k in range(self.num_levels):
            self.readouts[k].build((None, self.hidden_dim), token_shape)
            self.reassembles[k].build(token_shape)
            self.convs[k].build((None, None, None, self.post_process_channels[k]))
            self.fusion_blocks[k].build(fusion_shape)
        self.project.build(fusion_shape)
        self.output_dense.build(fusion_shape)

    def _check_features(self, features):
        if len(features) != self.num_levels:
            raise ValueError(
                f"TIPSv2DPTHead expects {self.num_levels} (cls_token, "
                f"patch_tokens) pairs; got {len(features)}."
            )
        for k, pair in enumerate(features):
            cls_token, patches = pair
            if len(cls_token.shape) != 2 or len(patches.shape) != 4:
                raise ValueError(
                    f"Level {k}: expected cls_token (B, D) and patch_tokens "
                    f"(B, h, w, D); got {tuple(cls_token.shape)} and "
                    f"{tuple(patches.shape)}."
                )
            if cls_token.shape[-1] != self.hidden_dim or patches.shape[-1] != self.hidden_dim:
                raise ValueError(
                    f"Level {k}: features have width {patches.shape[-1]}, the "
                    f"head was built for hidden_dim={self.hidden_dim}."
                )

    def call(self, features):
        self._check_features(features)
        levels = []
        for k, (cls_token, patches) in enumerate(features):
            x = self.readouts[k](cls_token, patches)
            x = self.reassembles[k](x)
            levels.append(self.convs[k](x))
        out = self.fusion_blocks[0](levels[-1])
        for k in range(1, self.num_levels):
            out = self.fusion_blocks[k](out, levels[-(k + 1)])
        out = self.project(out)
        if self.project_activation == "relu":
            out = ops.relu(out)
        return self.output_dense(out)

    def compute_output_shape(self, features_shape):
        batch, h, w = features_shape[-1][1][:3]
        deepest_h = _scaled(h, self.reassemble_factors[-1])
        deepest_w = _scaled(w, self.reassemble_factors[-1])
        grow = 2**self.num_levels
        out_h = None if deepest_h is None else deepest_h * grow
        out_w = None if deepest_w is None else deepest_w * grow
        return (batch, out_h, out_w, self.output_channels)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "output_channels": self.output_channels,
                "post_process_channels": list(self.post_process_channels),
                "fusion_channels": self.fusion_channels,
                "reassemble_factors": list(self.reassemble_factors),
                "project_activation": self.project_activation,
            }
        )
        return config


def depth_from_bin_logits(logits, min_depth=0.001, max_depth=10.0):
    """Expected depth from per-pixel bin logits (B, H, W, n) -> (B, H, W, 1).

    The official classification-bin decoding: ReLU, plus min_depth, divided
    by the sum over bins (a linear normalisation, not a softmax), then the
    expectation over `linspace(min_depth, max_depth, n)` bin centres.
    """
    num_bins = logits.shape[-1]
    weights = ops.relu(logits) + min_depth
    probs = weights / ops.sum(weights, axis=-1, keepdims=True)
    centres = ops.cast(ops.linspace(min_depth, max_depth, num_bins), probs.dtype)
    return ops.sum(probs * centres, axis=-1, keepdims=True)
