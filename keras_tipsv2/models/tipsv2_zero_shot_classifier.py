import keras
from keras import ops

from keras_tipsv2.layers.functional import l2_normalize
from keras_tipsv2.models import tipsv2_inference
from keras_tipsv2.models.prompt_templates import class_text_embeddings, resolve_templates
from keras_tipsv2.models.tipsv2_backbone import TIPSv2Backbone
from keras_tipsv2.models.tipsv2_inputs import check_image_values, checked_images
from keras_tipsv2.models.tipsv2_task import TIPSv2Task
from keras_tipsv2.models.tipsv2_zero_shot_classifier_preprocessor import (
    TIPSv2ZeroShotClassifierPreprocessor,
)


def checked_cls_index(cls_index, backbone):
    """`cls_index` if it names one of the backbone's CLS tokens."""
    num_cls = backbone.vision_num_cls_tokens
    if cls_index not in range(num_cls):
        raise ValueError(
            f"cls_index must be in [0, {num_cls - 1}] (0 = CLS_1, "
            f"1 = CLS_2); got {cls_index!r}."
        )
    return cls_index


class ZeroShotHead(keras.layers.Layer):
    """CLS tokens (B, num_cls, D) -> softmax(cos(CLS, class) / temperature).

    The class embeddings are a non-trainable (C, D) weight of unit rows, so
    that they are saved with the task's weights and restored by
    `from_preset`, like any head. A Keras variable's shape is fixed, so a
    new number of classes rebuilds the weight (`set_class_embeddings`).
    Computes in float32 whatever the backbone's dtype.

    Args:
        hidden_dim: D, the towers' shared width.
        num_classes: C (0 until classes are set).
        cls_index: which CLS token: 0 (CLS_1) or 1 (CLS_2).
        temperature: the backbone's `ContrastiveTemperature` layer (shared).
    """

    def __init__(self, hidden_dim, num_classes, cls_index, temperature, **kwargs):
        super().__init__(dtype="float32", **kwargs)
        self.hidden_dim = hidden_dim
        self.cls_index = cls_index
        self.temperature = temperature
        self.class_embeddings = self._class_weight(num_classes)
        self.built = True

    def _class_weight(self, num_classes):
        return self.add_weight(
            shape=(num_classes, self.hidden_dim),
            initializer="zeros",
            trainable=False,
            name="class_embeddings",
        )

    @property
    def num_classes(self):
        return self.class_embeddings.shape[0]

    def set_class_embeddings(self, unit_embeddings):
        """Stores (C, D) unit rows, rebuilding the weight if C changed."""
        if self.num_classes != unit_embeddings.shape[0]:
            self._untrack_variable(self.class_embeddings)
            self._tracker.unlock()
            self.class_embeddings = self._class_weight(unit_embeddings.shape[0])
            self._tracker.lock()
        self.class_embeddings.assign(unit_embeddings)

    def logits(self, cls_tokens, cls_index=None):
        """cos(CLS, class) / temperature, (B, C), float32."""
        if not self.num_classes:
            raise ValueError(
                "No classes set: call set_classes(class_names) or "
                "set_class_embeddings(embeddings) first."
            )
        index = self.cls_index if cls_index is None else cls_index
        image = l2_normalize(ops.cast(cls_tokens[:, index], "float32"))
        cosine = ops.matmul(image, ops.transpose(self.class_embeddings))
        return cosine / ops.cast(self.temperature(), "float32")

    def call(self, cls_tokens):
        return ops.softmax(self.logits(cls_tokens), axis=-1)

    def compute_output_shape(self, cls_tokens_shape):
        return (cls_tokens_shape[0], self.num_classes)


@keras.saving.register_keras_serializable(package="keras_tipsv2")
class TIPSv2ZeroShotClassifier(TIPSv2Task):
    """Zero-shot image classification with a TIPSv2 backbone, a KerasHub `Task`.

    Class embeddings are computed once by `set_classes` (prompt ensembling,
    see `class_text_embeddings`); an image is then scored by the cosine
    between its L2-normalised CLS token and each class embedding, divided by
    the backbone's temperature, and softmaxed over the classes. CLS_1
    (`cls_index=0`, trained against alt-text) is the default; `cls_index=1`
    uses CLS_2 (trained against synthetic captions).

    As a `Task`: `predict(images)` returns the (B, C) probabilities as numpy
    (KerasHub's `predict`: batched, through the preprocessor, compiled);
    take `argmax(-1)` for class indices. `predict_proba` returns the same
    probabilities as a tensor in one eager call. `from_preset` loads every
    preset the backbone loads; `save_to_preset` writes the class names in
    task.json and the class embeddings in task.weights.h5, so a saved
    classifier predicts without `set_classes`. The class embeddings are the
    only weights of its own; it is not meant to be trained.

    Images follow the package's contract everywhere: uint8 (divided by 255)
    or floats in [0, 1], image paths in a list; floats outside [0, 1] and
    non-finite values are refused where their values can be read (numpy
    input and eager calls; not inside a traced or compiled step).

    Args:
        backbone: a `TIPSv2Backbone`.
        preprocessor: a `TIPSv2ZeroShotClassifierPreprocessor` (its tokenizer
            serves `set_classes`, its image converter resizes raw images),
            or None: images then go to the backbone as they are, and
            `set_classes` is unavailable (use `set_class_embeddings`).
        cls_index: 0 for CLS_1 (default), 1 for CLS_2.
        num_classes: number of class embeddings to make room for (a preset
            restores them); 0 until `set_classes`.
        class_names: optional names of those classes.

    Example:
    ```python
    classifier = TIPSv2ZeroShotClassifier.from_preset("tipsv2_tiny_shapes")
    classifier.set_classes(["red", "blue"], templates="tcl")
    probabilities = classifier.predict(uint8_images)     # (B, 2) numpy
    labels = probabilities.argmax(-1)
    classifier.save_to_preset("red_or_blue")             # classes included
    ```
    """

    backbone_cls = TIPSv2Backbone
    preprocessor_cls = TIPSv2ZeroShotClassifierPreprocessor

    def __init__(
        self,
        backbone,
        preprocessor=None,
        cls_index=0,
        num_classes=0,
        class_names=None,
        **kwargs,
    ):
        checked_cls_index(cls_index, backbone)
        class_names = self._checked_names(class_names, num_classes)
        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.head = ZeroShotHead(
            backbone.vision_hidden_dim,
            num_classes,
            cls_index,
            backbone.contrastive_temperature,
            name="zero_shot_head",
        )

        # === Functional model ===
        images = keras.Input(shape=backbone.image_shape, name="images")
        cls_tokens = backbone.vision_encoder(images)["cls_tokens"]
        super().__init__(inputs=images, outputs=self.head(cls_tokens), **kwargs)
        # On torch, layers set before Functional.__init__ are tracked only
        # through the graph, which holds the image tower alone.
        self.backbone = backbone

        # === Config ===
        self.cls_index = cls_index
        self.class_names = class_names

    @staticmethod
    def _checked_names(class_names, num_classes):
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(
                f"Got {len(class_names)} class names for {num_classes} classes."
            )
        return None if class_names is None else list(class_names)

    # --- Parts -------------------------------------------------------------

    @property
    def tokenizer(self):
        return getattr(self.preprocessor, "tokenizer", None)

    @property
    def image_converter(self):
        return getattr(self.preprocessor, "image_converter", None)

    @property
    def num_classes(self):
        return self.head.num_classes

    @property
    def class_embeddings(self):
        """The (C, D) unit class embeddings, or None before any are set."""
        return self.head.class_embeddings.value if self.num_classes else None

    # --- Classes -----------------------------------------------------------

    def set_classes(self, class_names, templates="imagenet"):
        """Computes and stores one text embedding per class: (C, D).

        Args:
            class_names: list of names, one per class.
            templates: "imagenet" (CLIP's 80 templates, the default), "tcl"
                (the 9 of the segmentation protocol) or a list of strings
                with one "{}" each.
        """
        if self.tokenizer is None:
            raise ValueError(
                "set_classes needs a tokenizer: give the classifier a "
                "TIPSv2ZeroShotClassifierPreprocessor with one, or pass "
                "precomputed embeddings to set_class_embeddings."
            )
        with tipsv2_inference.inference_scope():
            embeddings = class_text_embeddings(
                self.backbone, self.tokenizer, list(class_names), resolve_templates(templates)
            )
        self.set_class_embeddings(embeddings, class_names)

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
        class_names = self._checked_names(class_names, embeddings.shape[0])
        with tipsv2_inference.inference_scope():
            self.head.set_class_embeddings(l2_normalize(embeddings))
        self.class_names = class_names
        # Compiled steps captured the old weight (TensorFlow) or its shape.
        self.predict_function = self.test_function = self.train_function = None

    # --- Scores ------------------------------------------------------------

    def call(self, inputs, training=None, mask=None):
        # uint8 becomes [0, 1] here (not in the preprocessor) so that a
        # classifier without one still reads uint8 right; values are checked
        # when they can be read (an eager call), shapes always.
        images = checked_images(
            inputs, self.backbone.compute_dtype, "TIPSv2ZeroShotClassifier", not training
        )
        return super().call(images, training=training, mask=mask)

    def predict(self, x=None, batch_size=None, **kwargs):
        """(B, C) class probabilities, numpy: Keras' `predict` through the
        preprocessor. Arrays and tensors are checked against the image
        contract first, as a whole: KerasHub's data pipeline would retry a
        batch that fails in Python inside `tf.data`, where no value can be
        checked."""
        check_image_values(x)
        return super().predict(x, batch_size=batch_size, **kwargs)

    def image_embeddings(self, images, cls_index=None):
        """Unit-norm CLS embeddings (B, D) of the images."""
        cls_tokens = self._cls_tokens(images)
        index = self.head.cls_index if cls_index is None else checked_cls_index(cls_index, self.backbone)
        return l2_normalize(ops.cast(cls_tokens[:, index], "float32"))

    def logits(self, images, cls_index=None):
        """Cosine similarity / temperature, (B, C)."""
        if cls_index is not None:
            checked_cls_index(cls_index, self.backbone)
        return self.head.logits(self._cls_tokens(images), cls_index)

    def predict_proba(self, images, cls_index=None):
        """Class probabilities softmax(cos / temperature), (B, C), as a
        tensor, from one eager call (no batching)."""
        return ops.softmax(self.logits(images, cls_index), axis=-1)

    def _cls_tokens(self, images):
        """(B, num_cls, D) CLS tokens of raw images, through the image
        converter and the backbone's compiled `encode_images`."""
        if self.image_converter is not None:
            images = self.image_converter(images)
        return self.backbone.encode_images(images)["cls_tokens"]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "cls_index": self.cls_index,
                "num_classes": self.num_classes,
                "class_names": None if self.class_names is None else list(self.class_names),
            }
        )
        return config
