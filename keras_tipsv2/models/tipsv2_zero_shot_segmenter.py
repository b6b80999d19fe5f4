"""Zero-shot semantic segmentation with TIPSv2.

The protocol of the official notebook `TIPS_zeroshot_segmentation.ipynb`:
short side -> 448 (bicubic), MaskCLIP values trick in the last block,
L2-normalised patch tokens, raw cosine against averaged prompt embeddings,
then either TCL sliding windows (448 / 336, softmax per window, averaged) or
one whole-image pass, a final bilinear upsample to the annotation size and an
argmax.
"""

import numpy as np
from keras import ops

from keras_tipsv2.layers.functional import l2_normalize
from keras_tipsv2.models import prompt_templates
from keras_tipsv2.models import tipsv2_inference
from keras_tipsv2.models.tipsv2_backbone import TIPSv2Backbone
from keras_tipsv2.models.tipsv2_image_converter import preset_image_size
from keras_tipsv2.models.tipsv2_tokenizer import TIPSv2Tokenizer
from keras_tipsv2.models.tipsv2_images import (
    as_float,
    image_array,
    image_as_array,
    resize_bicubic,
    short_side_size,
    upsampled_scores,
)

_MODES = ("slide", "whole")
_VALUES_TRICKS = ("values", "values_no_residual", None)


def sliding_windows(size, window, stride):
    """The TCL / mmseg sliding windows along one axis, as (start, end) pairs.

    n = max(size - window + stride - 1, 0) // stride + 1 windows; window i
    starts at i * stride, except that a window running past the border is
    pushed back to end on it. A window never leaves the image, so an axis
    shorter than `window` gets one window covering all of it.
    """
    if window < 1 or stride < 1:
        raise ValueError(
            f"window ({window}) and stride ({stride}) must be positive."
        )
    if stride > window:
        raise ValueError(
            f"stride ({stride}) larger than window ({window}) would leave "
            "pixels that no window covers."
        )
    count = max(size - window + stride - 1, 0) // stride + 1
    spans = []
    for i in range(count):
        end = min(i * stride + window, size)
        spans.append((max(end - window, 0), end))
    return spans


def labels_and_scores(scores, size):
    """(labels (H, W) int32, scores (H, W, C)): `scores` upsampled to `size`
    and their argmax, the protocol's last two steps."""
    scores = upsampled_scores(scores, size)
    return ops.cast(ops.argmax(scores, axis=-1), "int32"), scores


def slide_probabilities(window_scores, boxes, size):
    """(H, W, C) class probabilities averaged over sliding windows.

    The TCL protocol's sliding-window step: each window's (h, w, C) patch
    scores are resized bilinearly to the window, softmaxed over the classes
    and placed at the window's box; every pixel is divided by the number of
    windows covering it.

    Args:
        window_scores: (n, h, w, C), one row per window, in `boxes` order.
        boxes: n (top, bottom, left, right) windows.
        size: (H, W) of the image the boxes tile.
    """
    height, width = size
    # A sum of zero-padded windows rather than in-place slice updates: one
    # fused loop under XLA, and no canvas copy per window in eager JAX. One
    # window at a time, so that at most one window's probabilities exist
    # at image resolution outside XLA.
    canvas = None
    counts = np.zeros((height, width, 1), "float32")
    for i, (top, bottom, left, right) in enumerate(boxes):
        scores = ops.image.resize(
            window_scores[i : i + 1], (bottom - top, right - left), interpolation="bilinear"
        )
        probabilities = ops.softmax(scores[0], axis=-1)
        placed = ops.pad(
            probabilities, ((top, height - bottom), (left, width - right), (0, 0))
        )
        canvas = placed if canvas is None else canvas + placed
        counts[top:bottom, left:right] += 1.0
    return canvas / ops.convert_to_tensor(counts)


class TIPSv2ZeroShotSegmenter:
    """Zero-shot semantic segmentation from a TIPSv2 backbone and tokenizer.

    Not a `keras.Model`: it owns no weights and runs a data-dependent number
    of backbone passes per image. Class text embeddings are computed once by
    `set_classes` (or given by `set_class_embeddings`) and reused by every
    `segment` call.

    Args:
        backbone: a `TIPSv2Backbone` (anything with `encode_images`,
            `encode_text` and `vision_patch_size`).
        tokenizer: a `TIPSv2Tokenizer`, or any callable mapping a list of
            strings to `{"token_ids", "padding_mask"}`; only `set_classes`
            needs it.
        short_side: the image's short side is resized to this (bicubic)
            before anything else; None keeps the image as it is.
        window_size: side of the square sliding windows ("slide" mode).
        window_stride: step between windows ("slide" mode).
        batch_size: how many windows go through the backbone at once.

    Example:
    ```python
    segmenter = TIPSv2ZeroShotSegmenter.from_preset("tipsv2_tiny_shapes")
    segmenter.set_classes(["cat", "grass", "sky"])
    result = segmenter.segment(image)        # (H, W, 3) uint8 or [0, 1] floats
    result["labels"], result["scores"]       # (H, W), (H, W, 3)
    ```
    """

    def __init__(
        self,
        backbone,
        tokenizer=None,
        short_side=448,
        window_size=448,
        window_stride=336,
        batch_size=8,
    ):
        sliding_windows(window_size, window_size, window_stride)  # validates
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.short_side = short_side
        self.window_size = window_size
        self.window_stride = window_stride
        self.batch_size = batch_size
        self.class_names = None
        self.class_embeddings = None
        self.background_threshold = None

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """A segmenter on the backbone and tokenizer of a preset.

        Takes every preset `TIPSv2Backbone.from_preset` takes. The short
        side and the window default to the preset's image size (448 for
        the published models) and the stride to 3/4 of the window, the
        protocol's 448 / 336; keyword arguments override them.
        """
        kwargs.setdefault("short_side", preset_image_size(preset))
        kwargs.setdefault("window_size", kwargs["short_side"])
        kwargs.setdefault("window_stride", max(1, kwargs["window_size"] * 3 // 4))
        return cls(
            TIPSv2Backbone.from_preset(preset, load_weights=load_weights),
            TIPSv2Tokenizer.from_preset(preset),
            **kwargs,
        )

    # --- Classes ---------------------------------------------------------

    @property
    def label_names(self):
        """Names of the labels `segment` returns; "background" is label 0
        when a background threshold is set."""
        if self.class_names is None:
            return None
        if self.background_threshold is None:
            return list(self.class_names)
        return ["background", *self.class_names]

    def set_classes(self, class_names, templates="tcl", background_threshold=None):
        """Encodes the class prompts once and keeps them for `segment`.

        Args:
            class_names: list of names, one per class.
            templates: "tcl" (the 9 templates of the reference protocol),
                "imagenet" (the 80 CLIP templates) or a list of strings with
                one "{}" each.
            background_threshold: None, or a constant cosine score prepended
                as class 0 (TCL's rule): a pixel is background when no class
                scores above it.
        """
        if self.tokenizer is None:
            raise ValueError(
                "set_classes needs a tokenizer; pass one to the constructor or "
                "give precomputed embeddings to set_class_embeddings."
            )
        templates = prompt_templates.resolve_templates(templates)
        with tipsv2_inference.inference_scope():
            embeddings = prompt_templates.class_text_embeddings(
                self.backbone, self.tokenizer, list(class_names), list(templates)
            )
        self.set_class_embeddings(embeddings, class_names, background_threshold)

    def set_class_embeddings(
        self, embeddings, class_names=None, background_threshold=None
    ):
        """Uses precomputed (C, D) class embeddings (L2-normalised here).

        Args:
            embeddings: (C, D) array, one row per class.
            class_names: optional names (default "class_0", ...).
            background_threshold: as in `set_classes`.
        """
        embeddings = ops.convert_to_tensor(embeddings, dtype="float32")
        if len(embeddings.shape) != 2:
            raise ValueError(
                f"Class embeddings must be (num_classes, dim); got {tuple(embeddings.shape)}."
            )
        num_classes = embeddings.shape[0]
        if class_names is None:
            class_names = [f"class_{i}" for i in range(num_classes)]
        if len(class_names) != num_classes:
            raise ValueError(
                f"Got {len(class_names)} class names for {num_classes} embeddings."
            )
        with tipsv2_inference.inference_scope():
            self.class_embeddings = l2_normalize(embeddings)
        self.class_names = list(class_names)
        self.background_threshold = background_threshold

    # --- Segmentation ----------------------------------------------------

    def segment(self, image, mode="slide", values_trick="values", output_size=None):
        """Segments one image into the classes set by `set_classes`.

        Args:
            image: (H, W, 3) uint8 or float in [0, 1], a PIL image or an
                image file path.
            mode: "slide" (TCL windows, softmax per window, the reference
                default) or "whole" (one pass, raw cosines).
            values_trick: "values" (TIPS), "values_no_residual" (MaskCLIP) or
                None (plain patch tokens).
            output_size: (height, width) of the returned maps; defaults to
                the original image size (pass the annotation size to score).

        Returns:
            {"labels": (h, w) int32 numpy, "scores": (h, w, C) float32
            numpy}, with C = len(label_names).
        """
        if self.class_embeddings is None:
            raise ValueError("Call set_classes (or set_class_embeddings) first.")
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}; got {mode!r}.")
        if values_trick not in _VALUES_TRICKS:
            raise ValueError(
                f"values_trick must be one of {_VALUES_TRICKS}; got {values_trick!r}."
            )
        image = image_array(image)
        original_size = np.asarray(image).shape[:2]
        size = tuple(int(n) for n in (output_size or original_size))
        with tipsv2_inference.inference_scope():
            labels, scores = self._labels_and_scores(image, mode, values_trick, size)
        return {
            "labels": ops.convert_to_numpy(labels).astype("int32"),
            "scores": ops.convert_to_numpy(scores).astype("float32"),
        }

    def _labels_and_scores(self, image, mode, values_trick, size):
        """(labels, scores) tensors of `segment`, at `size`."""
        prepared = self._prepared_image(image)
        if mode == "slide":
            boxes = self._windows(*prepared.shape[:2])
            scores = self._window_scores(prepared, boxes, values_trick)
            geometry = (boxes, prepared.shape[:2], size)

            def finish(s):
                return labels_and_scores(slide_probabilities(s, boxes, prepared.shape[:2]), size)

        else:
            scores = self._whole_scores(prepared, values_trick)
            geometry = (tuple(scores.shape), size)

            def finish(s):
                return labels_and_scores(s, size)

        # Everything after the backbone passes runs as one compiled function
        # per image geometry: on JAX, these ops dispatched one by one at image
        # resolution cost more than the tower call itself.
        return tipsv2_inference.compiled(self, (mode, geometry), finish)(scores)

    def _prepared_image(self, image):
        """Float (H', W', 3) with the short side resized as the protocol says."""
        image_as_array(image)  # validates the shape and the pixel values
        if self.short_side is not None:
            size = short_side_size(*image.shape[:2], self.short_side)
            if size != image.shape[:2]:
                # uint8 stays uint8 through the resize, as in the reference.
                image = resize_bicubic(image, size)
        return as_float(image)

    def _patch_scores(self, images, values_trick):
        """(B, h, w, C) cosines of the patch tokens with the class embeddings.

        Sides that are not multiples of the patch size are first resized up
        to the next multiple (bicubic), as the reference does.
        """
        patch = self.backbone.vision_patch_size
        height, width = images.shape[1], images.shape[2]
        padded = (-(-height // patch) * patch, -(-width // patch) * patch)
        if padded != (height, width):
            images = ops.image.resize(images, padded, interpolation="bicubic")
        tokens = self.backbone.encode_images(images, values_trick=values_trick)
        tokens = l2_normalize(ops.cast(tokens["patch_tokens"], "float32"))
        scores = ops.einsum("bhwd,cd->bhwc", tokens, self.class_embeddings)
        return self._with_background(scores)

    def _with_background(self, scores):
        """Prepends the constant background column (TCL), if one is set."""
        if self.background_threshold is None:
            return scores
        column = ops.full_like(scores[..., :1], self.background_threshold)
        return ops.concatenate([column, scores], axis=-1)

    def _whole_scores(self, image, values_trick):
        """Raw cosines at patch resolution from one pass over the image."""
        return self._patch_scores(ops.convert_to_tensor(image)[None], values_trick)[0]

    def _windows(self, height, width):
        """The sliding windows tiling an image, as (top, bottom, left, right)."""
        return tuple(
            (top, bottom, left, right)
            for top, bottom in sliding_windows(height, self.window_size, self.window_stride)
            for left, right in sliding_windows(width, self.window_size, self.window_stride)
        )

    def _window_scores(self, image, boxes, values_trick):
        """(n, h, w, C) patch scores of every window, `batch_size` per pass.

        Every window has the same shape (the window clipped to the image), so
        they can share backbone passes.
        """
        crops = np.stack([image[t:b, l:r] for t, b, l, r in boxes])
        scores = [
            self._patch_scores(
                ops.convert_to_tensor(crops[first : first + self.batch_size]), values_trick
            )
            for first in range(0, len(boxes), self.batch_size)
        ]
        return scores[0] if len(scores) == 1 else ops.concatenate(scores, axis=0)
