import keras
from keras import ops

from keras_tipsv2.layers.projection_head import TIPSv2ProjectionHead
from keras_tipsv2.layers.vision_embedding import antialiased_resize
from keras_tipsv2.training import distribution
from keras_tipsv2.training import losses
from keras_tipsv2.training.common import CAPTION_SAMPLINGS
from keras_tipsv2.training.common import CENTERINGS
from keras_tipsv2.training.common import batch_contrastive_loss
from keras_tipsv2.training.common import check_choice
from keras_tipsv2.training.common import check_image_text_batch
from keras_tipsv2.training.common import projection_head
from keras_tipsv2.training.common import teacher_targets
from keras_tipsv2.training.ema import copy_weights
from keras_tipsv2.training.masking import replica_random_masks
from keras_tipsv2.training.train_step import TIPSv2TrainingModel

DISTILLATION_MODES = ("head", "features")
TEXT_TOWERS = ("teacher", "student")
# Which student patch tokens the patch loss trains, and the patch loss mode
# (`losses.patch_loss`) that trains them.
PATCH_SUPERVISIONS = {"all": "ibot++", "masked": "ibot", "visible": "visible"}
LOG_NAMES = ("loss", "contrastive_loss", "cls_loss", "patch_loss", "temperature")


def _width(backbone):
    return backbone.vision_encoder.hidden_dim


def _head_input_dim(head):
    return head.mlp[0].kernel.shape[0]


@keras.saving.register_keras_serializable(package="keras_tipsv2")
class TIPSv2Distiller(TIPSv2TrainingModel):
    """TIPSv2 distillation: a student image tower learns a frozen teacher's
    CLS and patch tokens, while staying aligned with a text tower.

    The TIPSv2 recipe for its small models (TIPSv2, arXiv 2604.12012): a
    frozen pretrained teacher (not an EMA), a randomly initialised student,
    no masking, and a loss on *every* patch token, which is what makes the
    students beat their teacher at patch-text alignment.

    Per batch:
    1. The teacher encodes the images (at `teacher_image_size` if given),
       frozen, in inference mode, under `stop_gradient`. When its patch grid
       differs from the student's, its patch tokens are resized (bilinear,
       antialiased) to the student's grid.
    2. The student encodes the same images; with `mask_ratio > 0` a random
       fraction of its patches is replaced by the mask token first.
    3. Distillation on both CLS tokens and on the patch tokens that
       `patch_supervision` names (all of them by default):
       - mode="head": the teacher head turns teacher tokens into targets
         over K prototypes (DINO centring or Sinkhorn-Knopp, tau_t), and the
         student head is trained on the student tokens with the DINO /
         iBOT++ cross-entropy (tau_s). The teacher head is the frozen head
         of a pretrainer if one is given (`pretrainer.teacher_head`);
         otherwise a fixed, randomly initialised head, which then defines
         the prototype space (a random projection of the teacher's features
         is still a faithful target: it keeps their geometry). The student
         head starts as a copy of the teacher head (its input layer random
         when the widths differ), so both score the same prototypes from
         step 0.
       - mode="features": the student tokens, mapped to the teacher's width
         by a trained linear layer when the widths differ, are matched to
         the teacher tokens directly (`feature_loss`: 1 - cosine, or
         smooth-L1).
    4. The dual image-text contrastive loss on the student's CLS tokens,
       with the student's learned temperature, against
       - text_tower="teacher": the teacher's text tower, frozen. If the
         widths differ, the student's CLS tokens go through a trained linear
         layer into the teacher's width. The student's own text tower is
         unused and frozen; `student_backbone()` pairs the student's image
         tower with the teacher's text tower.
       - text_tower="student": the student's own text tower, trained.

    The teacher (and a given teacher head) are set `trainable = False`; the
    optimizer never sees them, so their weights are bit-identical after
    training. Local crops in the batch are ignored.

    Batch format (a dict, as `make_pretraining_dataset` yields):
        "images": (B, H, W, 3) float in [0, 1], the student's resolution.
        "alt_text": {"token_ids": (B, T) int, "padding_mask": (B, T) int}.
        "caption": same structure (not needed with
            caption_sampling="alt_text_only").

    Args:
        teacher: a `TIPSv2Backbone` (a preset or a trained model).
        student: a smaller `TIPSv2Backbone`, typically freshly built
            (random initialisation, the paper's best) or from a preset.
        mode: "head" or "features".
        text_tower: "teacher" or "student".
        teacher_head: optional `TIPSv2ProjectionHead` taking the teacher's
            width (e.g. `TIPSv2Pretrainer.teacher_head`); mode="head" only.
            Its shape overrides the head_* arguments.
        head_hidden_dim, head_bottleneck_dim, num_prototypes,
        head_num_layers: shape of the random teacher head (2048, 256,
            32768, 3).
        feature_loss: "cosine" or "smooth_l1" (mode="features").
        centering: "sinkhorn" (default: a frozen teacher then gives the
            same targets for the same batch at every step) or "centering"
            (DINO centres, which drift from zero over the first
            ~1 / (1 - center_momentum) steps); mode="head".
        center_momentum, sinkhorn_iterations: as in `TIPSv2Pretrainer`.
        teacher_temperature, student_temperature: tau_t (0.07), tau_s (0.1).
        caption_sampling: "multi" (CLS_2 <-> batch["caption"]) or
            "alt_text_only".
        mask_ratio: fraction of the student's patches masked (0.0).
        patch_supervision: which student patch tokens the patch loss trains:
            "all" (the recipe), "masked" (iBOT-style, masked tokens only) or
            "visible" (visible tokens only). The last two need
            `mask_ratio > 0`; each image's loss is the mean over its
            supervised tokens.
        teacher_image_size: side the teacher sees the images at (square
            bilinear resize); None = the student's input size.
        contrastive_weight, cls_weight, patch_weight: loss weights (1, 1, 2).
        gradient_clip_norm: global-norm clipping (3.0); None = off.
        seed: seed of the masking `SeedGenerator`.

    Example:
    ```python
    teacher = TIPSv2Backbone.from_preset("tipsv2_l14")
    student = TIPSv2Backbone(**small_config)
    distiller = TIPSv2Distiller(teacher, student, mode="head")
    distiller.compile(optimizer=keras.optimizers.AdamW(1e-4))
    distiller.fit(make_pretraining_dataset(source, tokenizer, 64, 224))
    distiller.student_backbone().save_to_preset("my_student")
    ```
    """

    def __init__(
        self,
        teacher,
        student,
        mode="head",
        text_tower="teacher",
        teacher_head=None,
        head_hidden_dim=2048,
        head_bottleneck_dim=256,
        num_prototypes=32768,
        head_num_layers=3,
        feature_loss="cosine",
        centering="sinkhorn",
        center_momentum=0.9,
        sinkhorn_iterations=3,
        teacher_temperature=0.07,
        student_temperature=0.1,
        caption_sampling="multi",
        mask_ratio=0.0,
        patch_supervision="all",
        teacher_image_size=None,
        contrastive_weight=1.0,
        cls_weight=1.0,
        patch_weight=2.0,
        gradient_clip_norm=3.0,
        seed=None,
        **kwargs,
    ):
        check_choice("mode", mode, DISTILLATION_MODES)
        check_choice("text_tower", text_tower, TEXT_TOWERS)
        check_choice("feature_loss", feature_loss, losses.FEATURE_LOSSES)
        check_choice("centering", centering, CENTERINGS)
        check_choice("caption_sampling", caption_sampling, CAPTION_SAMPLINGS)
        if teacher is student:
            raise ValueError("The teacher and the student must be different backbones.")
        check_choice("patch_supervision", patch_supervision, tuple(PATCH_SUPERVISIONS))
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1); got {mask_ratio}.")
        if patch_supervision != "all" and mask_ratio <= 0.0:
            raise ValueError(
                f"patch_supervision={patch_supervision!r} needs masked student "
                f"patches (mask_ratio > 0); got mask_ratio={mask_ratio}. Without "
                "masking every token is visible: use patch_supervision='all'."
            )
        if teacher_head is not None and mode != "head":
            raise ValueError("teacher_head is only used with mode='head'.")
        super().__init__(log_names=LOG_NAMES, gradient_clip_norm=gradient_clip_norm, **kwargs)
        self.teacher = teacher
        self.teacher.trainable = False
        self.student = student
        teacher_width, student_width = _width(teacher), _width(student)

        # === Distillation heads / projections ===
        if mode == "head":
            self.teacher_head = self._frozen_teacher_head(
                teacher_head, teacher_width, head_hidden_dim, head_bottleneck_dim,
                num_prototypes, head_num_layers,
            )  # fmt: skip
            head = self.teacher_head
            head_hidden_dim, head_bottleneck_dim = head.hidden_dim, head.bottleneck_dim
            num_prototypes, head_num_layers = head.num_prototypes, head.num_layers
            self.student_head = projection_head(
                student_width, head_hidden_dim, head_bottleneck_dim, num_prototypes,
                head_num_layers, "student_head",
            )  # fmt: skip
            self._copy_matching_weights(self.student_head, self.teacher_head)
            self.cls_center = self.add_weight(
                shape=(1, num_prototypes), initializer="zeros", trainable=False,
                dtype="float32", name="cls_center",
            )  # fmt: skip
            self.patch_center = self.add_weight(
                shape=(1, num_prototypes), initializer="zeros", trainable=False,
                dtype="float32", name="patch_center",
            )  # fmt: skip
        self.feature_projection = None
        if mode == "features" and student_width != teacher_width:
            self.feature_projection = self._projection(student_width, teacher_width, "feature_projection")
        self.text_projection = None
        if text_tower == "teacher":
            # Unused: the teacher's text tower stands in for it.
            self.student.text_encoder.trainable = False
            if student_width != teacher_width:
                self.text_projection = self._projection(student_width, teacher_width, "text_projection")
        self.seed_generator = keras.random.SeedGenerator(seed)

        # === Config ===
        self.mode = mode
        self.text_tower = text_tower
        self.given_teacher_head = teacher_head is not None
        self.head_hidden_dim = head_hidden_dim
        self.head_bottleneck_dim = head_bottleneck_dim
        self.num_prototypes = num_prototypes
        self.head_num_layers = head_num_layers
        self.feature_loss = feature_loss
        self.centering = centering
        self.center_momentum = center_momentum
        self.sinkhorn_iterations = sinkhorn_iterations
        self.teacher_temperature = teacher_temperature
        self.student_temperature = student_temperature
        self.caption_sampling = caption_sampling
        self.mask_ratio = mask_ratio
        self.patch_supervision = patch_supervision
        self.teacher_image_size = teacher_image_size
        self.contrastive_weight = contrastive_weight
        self.cls_weight = cls_weight
        self.patch_weight = patch_weight
        self.seed = seed
        self.built = True

    # === Construction helpers ===

    @staticmethod
    def _frozen_teacher_head(head, width, hidden_dim, bottleneck_dim, num_prototypes, num_layers):
        """The given teacher head, or a fixed random one, frozen."""
        if head is None:
            head = projection_head(
                width, hidden_dim, bottleneck_dim, num_prototypes, num_layers, "teacher_head"
            )
        else:
            if not isinstance(head, TIPSv2ProjectionHead):
                raise ValueError(
                    f"teacher_head must be a TIPSv2ProjectionHead; got {type(head).__name__}."
                )
            if not head.built:
                head.build((None, width))
            if _head_input_dim(head) != width:
                raise ValueError(
                    f"teacher_head reads {_head_input_dim(head)}-wide tokens, but "
                    f"the teacher's width is {width}."
                )
        head.trainable = False
        return head

    @staticmethod
    def _copy_matching_weights(target, source):
        for t, s in zip(target.weights, source.weights):
            if tuple(t.shape) == tuple(s.shape):
                copy_weights([t], [s])

    def _projection(self, input_dim, output_dim, name):
        layer = keras.layers.Dense(output_dim, dtype=self.student.dtype_policy, name=name)
        layer.build((None, input_dim))
        return layer

    # === Forward passes ===

    def _teacher_tokens(self, images, student_grid):
        """Teacher CLS (B, 2, D_t) and patch tokens on the student's grid."""
        images = ops.convert_to_tensor(images, self.teacher.compute_dtype)
        size = self.teacher_image_size
        # `antialiased_resize`, not `ops.image.resize`: the same numbers,
        # and it compiles under XLA (TensorFlow's `fit` on GPU).
        if size is not None:
            images = antialiased_resize(images, size, size)
        out = self.teacher.encode_images(images, training=False)
        patch = antialiased_resize(out["patch_tokens"], *student_grid)
        return ops.stop_gradient(out["cls_tokens"]), ops.stop_gradient(patch)

    def _student_masks(self, images):
        """(B, h, w) random masks, or None without masking."""
        if self.mask_ratio <= 0.0:
            return None
        patch = self.student.vision_patch_size
        return replica_random_masks(
            ops.shape(images)[0], images.shape[1] // patch, images.shape[2] // patch,
            self.mask_ratio, self.seed_generator,
        )  # fmt: skip

    def _encode_text(self, text, training):
        if self.text_tower == "teacher":
            embeddings = self.teacher.encode_text(
                text["token_ids"], text["padding_mask"], training=False
            )
            return ops.stop_gradient(embeddings)
        return self.student.encode_text(text["token_ids"], text["padding_mask"], training=training)

    # === Losses ===

    def _patch_loss_mode(self):
        return PATCH_SUPERVISIONS[self.patch_supervision]

    def _head_losses(
        self, student_cls, student_patch, teacher_cls, teacher_patch, masks, training
    ):
        mode = self._patch_loss_mode()
        cls_targets, patch_targets = teacher_targets(
            self.teacher_head(teacher_cls),
            self.teacher_head(teacher_patch),
            self.teacher_temperature,
            self.centering,
            self.cls_center,
            self.patch_center,
            self.center_momentum,
            self.sinkhorn_iterations,
            patch_weights=losses.supervised_patch_tokens(masks, mode),
            update_centers=training,
        )
        cls_loss = distribution.batch_mean(
            losses.teacher_student_cross_entropy(
                cls_targets, self.student_head(student_cls), self.student_temperature
            )
        )
        patch_loss = losses.patch_loss(
            patch_targets, self.student_head(student_patch), masks, mode,
            self.student_temperature,
        )  # fmt: skip
        return cls_loss, patch_loss

    def _feature_losses(self, student_cls, student_patch, teacher_cls, teacher_patch, masks):
        if self.feature_projection is not None:
            student_cls = self.feature_projection(student_cls)
            student_patch = self.feature_projection(student_patch)
        return (
            losses.feature_matching_loss(student_cls, teacher_cls, self.feature_loss),
            losses.feature_matching_loss(
                student_patch, teacher_patch, self.feature_loss,
                token_weights=losses.supervised_patch_tokens(masks, self._patch_loss_mode()),
            ),
        )  # fmt: skip

    def compute_losses(self, batch, training=True):
        check_image_text_batch(batch, self.caption_sampling, type(self).__name__)
        images = batch["images"]
        masks = self._student_masks(images)
        student = self.student.encode_images(images, masks=masks, training=training)
        teacher_cls, teacher_patch = self._teacher_tokens(
            images, student["patch_tokens"].shape[1:3]
        )
        if self.mode == "head":
            cls_loss, patch_loss = self._head_losses(
                student["cls_tokens"], student["patch_tokens"], teacher_cls, teacher_patch,
                masks, training,
            )  # fmt: skip
        else:
            cls_loss, patch_loss = self._feature_losses(
                student["cls_tokens"], student["patch_tokens"], teacher_cls, teacher_patch, masks
            )
        cls_tokens = student["cls_tokens"]
        if self.text_projection is not None:
            cls_tokens = self.text_projection(cls_tokens)
        temperature = self.student.temperature
        contrastive = batch_contrastive_loss(
            cls_tokens,
            batch,
            lambda text: self._encode_text(text, training),
            self.caption_sampling,
            temperature,
        )
        total = (
            self.contrastive_weight * contrastive
            + self.cls_weight * cls_loss
            + self.patch_weight * patch_loss
        )
        logs = {
            "loss": total,
            "contrastive_loss": contrastive,
            "cls_loss": cls_loss,
            "patch_loss": patch_loss,
            "temperature": ops.stop_gradient(temperature),
        }
        return total, logs

    # === The result ===

    def student_backbone(self):
        """The distilled student as a standalone `TIPSv2Backbone`.

        With text_tower="student", the student itself. With "teacher", a new
        backbone of the student's image tower and temperature and the
        teacher's text tower (weights copied), the pair the contrastive loss
        aligned; this needs equal widths (a backbone compares image and text
        embeddings without a projection).
        """
        if self.text_tower == "student":
            return self.student
        if self.text_projection is not None:
            raise ValueError(
                "The student was aligned with the teacher's text tower through a "
                f"projection ({_width(self.student)} -> {_width(self.teacher)}), "
                "which a TIPSv2Backbone cannot hold. Distil with "
                "text_tower='student', or a student of the teacher's width, to "
                "get a standalone backbone."
            )
        config = self.student.get_config()
        config.update(
            {k: v for k, v in self.teacher.get_config().items() if k.startswith("text_")}
        )
        backbone = self.student.__class__.from_config(config)
        copy_weights(backbone.vision_encoder.weights, self.student.vision_encoder.weights)
        copy_weights(backbone.text_encoder.weights, self.teacher.text_encoder.weights)
        copy_weights(
            backbone.contrastive_temperature.weights,
            self.student.contrastive_temperature.weights,
        )
        return backbone

    # === Serialisation ===

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "teacher": keras.saving.serialize_keras_object(self.teacher),
            "student": keras.saving.serialize_keras_object(self.student),
            "teacher_head": (
                keras.saving.serialize_keras_object(self.teacher_head)
                if self.given_teacher_head
                else None
            ),
            "mode": self.mode,
            "text_tower": self.text_tower,
            "head_hidden_dim": self.head_hidden_dim,
            "head_bottleneck_dim": self.head_bottleneck_dim,
            "num_prototypes": self.num_prototypes,
            "head_num_layers": self.head_num_layers,
            "feature_loss": self.feature_loss,
            "centering": self.centering,
            "center_momentum": self.center_momentum,
            "sinkhorn_iterations": self.sinkhorn_iterations,
            "teacher_temperature": self.teacher_temperature,
            "student_temperature": self.student_temperature,
            "caption_sampling": self.caption_sampling,
            "mask_ratio": self.mask_ratio,
            "patch_supervision": self.patch_supervision,
            "teacher_image_size": self.teacher_image_size,
            "contrastive_weight": self.contrastive_weight,
            "cls_weight": self.cls_weight,
            "patch_weight": self.patch_weight,
            "gradient_clip_norm": self.gradient_clip_norm,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("teacher", "student", "teacher_head"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)
