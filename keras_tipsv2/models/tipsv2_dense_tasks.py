"""Dense prediction on frozen TIPSv2 features: depth, normals, segmentation.

Each task holds a `TIPSv2Backbone` (frozen by default) and a head that reads
intermediate blocks of its image tower: the DPT decoder of the official
release (google-deepmind/tips `pytorch/decoders.py`), or a per-patch linear
probe. Outputs are at
the input image size, reached by half-pixel bilinear upsampling as the
official decoders and `transformers`' post-processing do.
"""

import keras
import numpy as np
from keras import ops
from keras_hub.models import Task

from keras_tipsv2.layers.dpt import (
    TIPSv2DPTHead,
    depth_from_bin_logits,
    resize_bilinear,
)
from keras_tipsv2.layers.functional import l2_normalize
from keras_tipsv2.models.tipsv2_backbone import TIPSv2Backbone

HEAD_TYPES = ("dpt", "linear")


# 0-based blocks of the official decoder notebook, by tower depth (B, L, So, g).
PUBLISHED_INTERMEDIATE_INDICES = {
    12: [2, 5, 8, 11],
    24: [5, 11, 17, 23],
    27: [6, 13, 20, 26],
    40: [9, 19, 29, 39],
}


def default_intermediate_indices(num_layers, num_levels=4):
    """0-based blocks the DPT heads read for a tower of `num_layers` blocks.

    The published choice for the released depths; otherwise evenly spaced
    and ending at the last block, round(linspace(L/4 - 1, L - 1, 4)), which
    gives the published B, L and g choices too (So's third index is 20, not
    19, in the notebook).
    """
    if num_levels == 4 and num_layers in PUBLISHED_INTERMEDIATE_INDICES:
        return list(PUBLISHED_INTERMEDIATE_INDICES[num_layers])
    spots = np.linspace(num_layers / num_levels - 1, num_layers - 1, num_levels)
    return [int(max(0, np.floor(s + 0.5))) for s in spots]


class TIPSv2IntermediateFeatures(keras.layers.Layer):
    """Runs a TIPSv2 image tower and returns what the dense heads read.

    Args:
        vision_encoder: the backbone's `TIPSv2VisionEncoder` (shared).
        indices: 0-based blocks, shallowest first.

    Returns:
        A list of [cls_token (B, D), patch_tokens (B, h, w, D)] per index,
        final-normed; cls_token is CLS_1, the readout token of the heads.
    """

    def __init__(self, vision_encoder, indices, **kwargs):
        super().__init__(**kwargs)
        self.vision_encoder = vision_encoder
        self.indices = [int(i) for i in indices]

    def call(self, images):
        outputs = self.vision_encoder.intermediate_layers(images, self.indices)
        return [[out["cls_tokens"][:, 0], out["patch_tokens"]] for out in outputs]

    def compute_output_spec(self, images):
        batch, height, width = images.shape[:3]
        p = self.vision_encoder.patch_size
        h = None if height is None else -(-height // p)
        w = None if width is None else -(-width // p)
        d = self.vision_encoder.hidden_dim
        dtype = self.compute_dtype
        return [
            [
                keras.KerasTensor((batch, d), dtype=dtype),
                keras.KerasTensor((batch, h, w, d), dtype=dtype),
            ]
            for _ in self.indices
        ]


class ResizeToImage(keras.layers.Layer):
    """Bilinearly resizes a dense map (B, h, w, C) to the images' H and W."""

    def call(self, dense, images):
        shape = ops.shape(images)
        return resize_bilinear(dense, shape[1], shape[2])

    def compute_output_shape(self, dense_shape, images_shape):
        return tuple(images_shape[:3]) + (dense_shape[-1],)


class DepthFromBins(keras.layers.Layer):
    """Bin logits (B, h, w, n) -> expected depth (B, h, w, 1)."""

    def __init__(self, min_depth, max_depth, **kwargs):
        super().__init__(**kwargs)
        self.min_depth = min_depth
        self.max_depth = max_depth

    def call(self, logits):
        return depth_from_bin_logits(logits, self.min_depth, self.max_depth)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (1,)


class UnitVectors(keras.layers.Layer):
    """L2-normalises the last axis (normals stay unit after resizing)."""

    def call(self, inputs):
        return l2_normalize(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape


class TIPSv2DenseTask(Task):
    """Shared wiring of the dense tasks: images -> frozen features -> head
    -> task decoding.

    Subclasses give `output_channels` and `_decode(head_output, images)`.
    Presets hold the head's weights alone (`save_task_weights`).
    """

    backbone_cls = TIPSv2Backbone

    def __init__(
        self,
        backbone,
        output_channels,
        head_type="dpt",
        intermediate_indices=None,
        post_process_channels=None,
        fusion_channels=256,
        project_activation=None,
        freeze_backbone=True,
        preprocessor=None,
        **kwargs,
    ):
        if head_type not in HEAD_TYPES:
            raise ValueError(f"head_type must be one of {HEAD_TYPES}; got {head_type!r}.")
        num_layers = backbone.vision_num_layers
        if intermediate_indices is None:
            intermediate_indices = (
                default_intermediate_indices(num_layers)
                if head_type == "dpt"
                else [num_layers - 1]
            )
        intermediate_indices = [int(i) for i in intermediate_indices]
        bad = [i for i in intermediate_indices if not 0 <= i < num_layers]
        if bad:
            raise ValueError(
                f"intermediate_indices {bad} are outside the image tower's "
                f"{num_layers} blocks (0-based)."
            )
        expected = 4 if head_type == "dpt" else 1
        if len(intermediate_indices) != expected:
            raise ValueError(
                f"A {head_type!r} head reads {expected} block(s); got "
                f"intermediate_indices={intermediate_indices}."
            )
        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        if freeze_backbone:
            backbone.trainable = False
        hidden_dim = backbone.vision_hidden_dim
        self.features = TIPSv2IntermediateFeatures(
            backbone.vision_encoder,
            intermediate_indices,
            dtype=backbone.dtype_policy,
            name="features",
        )
        if head_type == "dpt":
            self.head = TIPSv2DPTHead(
                hidden_dim,
                output_channels,
                post_process_channels=post_process_channels,
                fusion_channels=fusion_channels,
                project_activation=project_activation,
                dtype=backbone.dtype_policy,
                name="head",
            )
        else:
            self.head = keras.layers.Dense(
                output_channels, dtype=backbone.dtype_policy, name="head"
            )
        self.resize_to_image = ResizeToImage(
            dtype=backbone.dtype_policy, name="resize_to_image"
        )

        # === Functional model ===
        images = keras.Input(shape=backbone.image_shape, name="images")
        features = self.features(images)
        if head_type == "dpt":
            dense = self.head(features)
        else:
            dense = self.head(features[-1][1])
        outputs = self._decode(dense, images)
        super().__init__(inputs=images, outputs=outputs, **kwargs)
        # On torch, layers set before Functional.__init__ are tracked only
        # through the graph, which holds the image tower alone: without this
        # the text tower's weights are missing from `weights` and
        # `count_params` there, and nowhere else.
        self.backbone = backbone

        # === Config ===
        self.output_channels = output_channels
        self.head_type = head_type
        self.intermediate_indices = intermediate_indices
        self.post_process_channels = (
            None if post_process_channels is None else list(post_process_channels)
        )
        self.fusion_channels = fusion_channels
        self.project_activation = project_activation
        self.freeze_backbone = freeze_backbone

    def _decode(self, dense, images):
        raise NotImplementedError

    def _not_head(self):
        """What task weight files leave out: the backbone (a preset keeps it
        in model.weights.h5) and the optimizer, whose state KerasHub's
        `Task.save_task_weights` writes too and no preset needs."""
        skipped = list(self.backbone._flatten_layers())
        if self.optimizer is not None:
            skipped.append(self.optimizer)
        return skipped

    def save_task_weights(self, filepath):
        """Saves the head's weights alone (no backbone, no optimizer state)."""
        keras.saving.save_weights(self, filepath, objects_to_skip=self._not_head())

    def load_task_weights(self, filepath):
        """Loads the head's weights saved by `save_task_weights`."""
        keras.saving.load_weights(self, filepath, objects_to_skip=self._not_head())

    def head_config(self):
        return {
            "head_type": self.head_type,
            "intermediate_indices": list(self.intermediate_indices),
            "post_process_channels": self.post_process_channels,
            "fusion_channels": self.fusion_channels,
            "project_activation": self.project_activation,
            "freeze_backbone": self.freeze_backbone,
        }


@keras.saving.register_keras_serializable(package="keras_tipsv2")
class TIPSv2DenseSegmenter(TIPSv2DenseTask):
    """Semantic segmentation on frozen TIPSv2 features (ADE20K DPT head).

    Follows KerasHub's `ImageSegmenter`: images in, per-pixel class logits
    (B, H, W, num_classes) out, at the input size.

    Args:
        backbone: a `TIPSv2Backbone`.
        num_classes: 150 for the published ADE20K head.
        head_type: "dpt" (the official decoder) or "linear" (a per-patch
            Dense on the last block, the linear-probe baseline).
        intermediate_indices: 0-based blocks read; see
            `default_intermediate_indices`.
        post_process_channels, fusion_channels, project_activation: DPT
            shape, see `TIPSv2DPTHead`.
        freeze_backbone: keep the backbone's weights fixed (default).
        preprocessor: optional callable applied by `fit`/`predict`.

    Example:
    ```python
    segmenter = TIPSv2DenseSegmenter(backbone, num_classes=150)
    logits = segmenter.predict(images)          # (B, H, W, 150)
    labels = np.argmax(logits, axis=-1)
    ```
    """

    def __init__(self, backbone, num_classes, **kwargs):
        self.num_classes = num_classes
        super().__init__(backbone, num_classes, **kwargs)

    def _decode(self, dense, images):
        return self.resize_to_image(dense, images)

    def compile(self, optimizer="auto", loss="auto", *, metrics="auto", **kwargs):
        """Adam(1e-3), sparse cross-entropy on integer label maps (255 ignored)."""
        if optimizer == "auto":
            optimizer = keras.optimizers.Adam(1e-3)
        if loss == "auto":
            loss = keras.losses.SparseCategoricalCrossentropy(
                from_logits=True, ignore_class=255
            )
        if metrics == "auto":
            metrics = [keras.metrics.SparseCategoricalAccuracy()]
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update({"num_classes": self.num_classes, **self.head_config()})
        return config


@keras.saving.register_keras_serializable(package="keras_tipsv2")
class TIPSv2DepthEstimator(TIPSv2DenseTask):
    """Metric depth on frozen TIPSv2 features (the NYU DPT head).

    The head classifies each pixel into `num_depth_bins` bins; depth is the
    expectation over bin centres linspace(min_depth, max_depth, n) under
    the linearly normalised ReLU(logits) + min_depth. Output follows
    KerasHub's `DepthEstimator`: {"depths": (B, H, W, 1)} at input size.

    Args:
        backbone: a `TIPSv2Backbone`.
        num_depth_bins, min_depth, max_depth: 256, 0.001, 10.0 published.
        project_activation: None (official) or "relu" (`transformers`).
        Other arguments as for `TIPSv2DenseSegmenter`.
    """

    def __init__(
        self, backbone, num_depth_bins=256, min_depth=0.001, max_depth=10.0, **kwargs
    ):
        self.num_depth_bins = num_depth_bins
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)
        self.depth_from_bins = DepthFromBins(
            self.min_depth, self.max_depth, dtype=backbone.dtype_policy, name="depth"
        )
        super().__init__(backbone, num_depth_bins, **kwargs)

    def _decode(self, dense, images):
        return {"depths": self.resize_to_image(self.depth_from_bins(dense), images)}

    def compile(self, optimizer="auto", loss="auto", *, metrics="auto", **kwargs):
        """Adam(1e-3), mean squared error on depth maps, RMSE metric."""
        if optimizer == "auto":
            optimizer = keras.optimizers.Adam(1e-3)
        if loss == "auto":
            loss = {"depths": keras.losses.MeanSquaredError()}
        if metrics == "auto":
            metrics = {"depths": [keras.metrics.RootMeanSquaredError()]}
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_depth_bins": self.num_depth_bins,
                "min_depth": self.min_depth,
                "max_depth": self.max_depth,
                **self.head_config(),
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_tipsv2")
class TIPSv2NormalEstimator(TIPSv2DenseTask):
    """Surface normals on frozen TIPSv2 features (the NYU normals head).

    Three channels, L2-normalised at head resolution, bilinearly resized to
    the input and normalised again so every pixel is a unit vector.
    Output: {"normals": (B, H, W, 3)}.

    Args:
        backbone: a `TIPSv2Backbone`.
        Other arguments as for `TIPSv2DenseSegmenter`.
    """

    def __init__(self, backbone, **kwargs):
        self.unit_vectors = UnitVectors(dtype=backbone.dtype_policy, name="unit")
        super().__init__(backbone, 3, **kwargs)

    def _decode(self, dense, images):
        normals = self.resize_to_image(self.unit_vectors(dense), images)
        return {"normals": self.unit_vectors(normals)}

    def compile(self, optimizer="auto", loss="auto", *, metrics="auto", **kwargs):
        """Adam(1e-3), cosine loss on unit normals."""
        if optimizer == "auto":
            optimizer = keras.optimizers.Adam(1e-3)
        if loss == "auto":
            loss = {"normals": keras.losses.CosineSimilarity(axis=-1)}
        if metrics == "auto":
            metrics = None
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update(self.head_config())
        return config
