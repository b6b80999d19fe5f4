from keras import ops

from keras_tipsv2.layers.functional import l2_normalize
from keras_tipsv2.models.prompt_templates import class_text_embeddings, resolve_templates
from keras_tipsv2.models.tipsv2_backbone import TIPSv2Backbone
from keras_tipsv2.models.tipsv2_image_converter import TIPSv2ImageConverter
from keras_tipsv2.models.tipsv2_tokenizer import TIPSv2Tokenizer


class TIPSv2ZeroShotClassifier:
    """Zero-shot image classification with a TIPSv2 backbone.

    Class embeddings are computed once by `set_classes` (prompt ensembling,
    see `class_text_embeddings`); an image is then scored by the cosine
    between its L2-normalised CLS token and each class embedding, divided by
    the backbone's temperature, and softmaxed over the classes. CLS_1
    (`cls_index=0`, trained against alt-text) is the default; `cls_index=1`
    uses CLS_2 (trained against synthetic captions).

    This is a plain class, not a `keras_hub.models.Task`: its "weights" are
    the class embeddings, data whose shape changes with every `set_classes`,
    and it is never trained, so a Task's fixed functional graph, `fit` and
    preset saving would add nothing but constraints.

    Args:
        backbone: a `TIPSv2Backbone`.
        tokenizer: a `TIPSv2Tokenizer` (or any callable with its contract).
        image_converter: optional `TIPSv2ImageConverter`, which resizes the
            images first (any size, a list of paths of different sizes);
            without it images go to the backbone as they are: a (B, H, W, 3)
            batch, uint8 or floats in [0, 1], or paths of one size.
        cls_index: 0 for CLS_1 (default), 1 for CLS_2.

    Example:
    ```python
    classifier = TIPSv2ZeroShotClassifier.from_preset("tipsv2_tiny_shapes")
    classifier.set_classes(["red", "blue"], templates="tcl")
    probabilities = classifier.predict_proba(images)     # (B, 2)
    ```
    """

    def __init__(self, backbone, tokenizer, image_converter=None, cls_index=0):
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.image_converter = image_converter
        self.cls_index = self._checked_cls_index(cls_index)
        self.class_names = None
        self.class_embeddings = None

    @classmethod
    def from_preset(cls, preset, load_weights=True, cls_index=0):
        """A classifier on the backbone, tokenizer and image converter of a
        preset: any preset `TIPSv2Backbone.from_preset` takes."""
        return cls(
            TIPSv2Backbone.from_preset(preset, load_weights=load_weights),
            TIPSv2Tokenizer.from_preset(preset),
            TIPSv2ImageConverter.from_preset(preset),
            cls_index=cls_index,
        )

    def _checked_cls_index(self, cls_index):
        num_cls = self.backbone.vision_num_cls_tokens
        if cls_index not in range(num_cls):
            raise ValueError(
                f"cls_index must be in [0, {num_cls - 1}] (0 = CLS_1, "
                f"1 = CLS_2); got {cls_index!r}."
            )
        return cls_index

    def set_classes(self, class_names, templates="imagenet"):
        """Computes and stores one text embedding per class: (C, D).

        Args:
            class_names: list of names, one per class.
            templates: "imagenet" (CLIP's 80 templates, the default), "tcl"
                (the 9 of the segmentation protocol) or a list of strings
                with one "{}" each.
        """
        self.set_class_embeddings(
            class_text_embeddings(
                self.backbone, self.tokenizer, class_names, resolve_templates(templates)
            ),
            class_names,
        )

    def set_class_embeddings(self, embeddings, class_names=None):
        """Uses given (C, D) class embeddings, e.g. image prototypes; they
        are L2-normalised here."""
        embeddings = ops.convert_to_tensor(embeddings, "float32")
        width = self.backbone.vision_hidden_dim
        if len(embeddings.shape) != 2 or embeddings.shape[1] != width:
            raise ValueError(
                f"Class embeddings must have shape (num_classes, {width}); "
                f"got {tuple(embeddings.shape)}."
            )
        if class_names is not None and len(class_names) != embeddings.shape[0]:
            raise ValueError(
                f"Got {len(class_names)} class names for "
                f"{embeddings.shape[0]} class embeddings."
            )
        self.class_embeddings = l2_normalize(embeddings)
        self.class_names = list(class_names) if class_names is not None else None

    def image_embeddings(self, images, cls_index=None):
        """Unit-norm CLS embeddings (B, D) of the images."""
        cls_index = self._checked_cls_index(
            self.cls_index if cls_index is None else cls_index
        )
        if self.image_converter is not None:
            images = self.image_converter(images)
        cls_tokens = self.backbone.encode_images(images)["cls_tokens"]
        return l2_normalize(ops.cast(cls_tokens[:, cls_index], "float32"))

    def logits(self, images, cls_index=None):
        """Cosine similarity / temperature, (B, C)."""
        if self.class_embeddings is None:
            raise ValueError(
                "No classes set: call set_classes(class_names) or "
                "set_class_embeddings(embeddings) first."
            )
        cosine = ops.matmul(
            self.image_embeddings(images, cls_index),
            ops.transpose(self.class_embeddings),
        )
        return cosine / ops.cast(self.backbone.temperature, "float32")

    def predict_proba(self, images, cls_index=None):
        """Class probabilities softmax(cos / temperature), (B, C)."""
        return ops.softmax(self.logits(images, cls_index), axis=-1)

    def predict(self, images, cls_index=None):
        """Index of the most likely class per image, (B,)."""
        return ops.argmax(self.logits(images, cls_index), axis=-1)
