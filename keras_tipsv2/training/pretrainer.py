import keras
from keras import ops

from keras_tipsv2.training import losses
from keras_tipsv2.training.common import CAPTION_SAMPLINGS
from keras_tipsv2.training.common import CENTERINGS
from keras_tipsv2.training.common import batch_contrastive_loss
from keras_tipsv2.training.common import check_choice
from keras_tipsv2.training.common import check_image_text_batch
from keras_tipsv2.training.common import projection_head
from keras_tipsv2.training.common import teacher_targets
from keras_tipsv2.training.ema import EMA_MODES
from keras_tipsv2.training.ema import copy_weights
from keras_tipsv2.training.ema import ema_update
from keras_tipsv2.training.ema import pretraining_parameter_counts
from keras_tipsv2.training.masking import replica_random_masks
from keras_tipsv2.training.schedules import linear_warmup
from keras_tipsv2.training.train_step import TIPSv2TrainingModel

LOG_NAMES = (
    "loss",
    "contrastive_loss",
    "dino_loss",
    "patch_loss",
    "koleo_loss",
    "temperature",
    "teacher_temperature",
    "ema_momentum",
)


def _float_weights(layer):
    """The layer's float weights (what an EMA averages)."""
    return [w for w in layer.weights if "float" in str(w.dtype)]


@keras.saving.register_keras_serializable(package="keras_tipsv2")
class TIPSv2Pretrainer(TIPSv2TrainingModel):
    """TIPSv2 pretraining: dual contrastive + DINO + iBOT++ with head-only EMA.

    Per batch:
    1. The clean image goes once through the backbone, with gradient: its
       CLS_1 / CLS_2 feed the dual contrastive loss (CLS_1 <-> alt-text,
       CLS_2 <-> caption), and, under `stop_gradient`, the EMA teacher head
       (ema="head"), whose outputs are the DINO and patch targets. With
       ema="full" (TIPS v1) the targets come from an EMA copy of the image
       tower instead.
    2. The masked image (mask token substituted before positions) goes
       through the backbone; the student head on its patch tokens is trained
       against the teacher's patch targets: all tokens (patch_loss="ibot++")
       or masked ones only ("ibot").
    3. The student head on CLS_1 of each local crop is trained against the
       teacher's CLS_1 target (DINO). Without local crops, CLS_1 of the
       masked view is the student view.
    4. After every optimizer step the teacher head (and tower, if "full")
       moves toward the student by EMA; the step counter advances.

    One head, shared by DINO and the patch loss, as the -42 % parameter figure
    of the paper implies. Teacher temperatures warm up linearly; centres,
    EMA weights and the step counter are weights, so `save_weights` keeps
    them with the optimizer state; the masking `SeedGenerator`'s state is
    not a weight, and only `resumable_fit`'s checkpoints save it too.

    Batch format (a dict; `fit` may also get `(batch,)`):
        "images": (B, H, W, 3) float in [0, 1], the global view.
        "alt_text": {"token_ids": (B, T) int, "padding_mask": (B, T) int}.
        "caption": same structure; the synthetic caption already sampled per
            example (PaliGemma or Gemini) by the data pipeline. Not needed
            with caption_sampling="alt_text_only".
        "local_crops": optional (B, M, s, s, 3) float in [0, 1].
        "masks": optional (B, h, w) bool iBOT masks (e.g. block-wise masks
            from the data pipeline); otherwise random masks with exactly
            round(mask_ratio * h * w) patches are drawn in the step.

    Args:
        backbone: a `TIPSv2Backbone`.
        head_hidden_dim, head_bottleneck_dim, num_prototypes, head_num_layers:
            projection head shape (2048, 256, 32768, 3).
        patch_loss: "ibot++" (TIPSv2), "ibot" (masked tokens only) or
            "visible" (visible tokens only, an ablation).
        patch_visible_weight: "ibot++" only; None (default) averages every
            token alike, as the paper's Eq. 3; a number w averages masked
            and visible tokens separately, mean_masked + w * mean_visible
            (see `losses.patch_loss`).
        ema: "head" (TIPSv2) or "full" (TIPS v1).
        ema_momentum: fixed teacher momentum (0.996).
        caption_sampling: "multi" (CLS_2 <-> batch["caption"]) or
            "alt_text_only" (both CLS tokens <-> the alt-text).
        centering: "centering" (DINO centre, momentum `center_momentum`) or
            "sinkhorn" (Sinkhorn-Knopp, `sinkhorn_iterations`).
        teacher_temperature, warmup_teacher_temperature,
        teacher_temperature_warmup_steps: tau_t goes linearly from the warm-up
            value to the final one (0.04 -> 0.07).
        student_temperature: tau_s (0.1).
        mask_ratio: masked fraction for in-step random masks (0.75).
        contrastive_weight, dino_weight, patch_weight, koleo_weight: loss
            weights (1, 1, 2, 0). KoLeo acts on the clean CLS_1.
        freeze_last_layer_steps: the prototypes get no update for this many
            first steps.
        gradient_clip_norm: global-norm clipping (3.0, DINOv2); None = off.
        seed: seed of the masking `SeedGenerator`.
    """

    def __init__(
        self,
        backbone,
        head_hidden_dim=2048,
        head_bottleneck_dim=256,
        num_prototypes=32768,
        head_num_layers=3,
        patch_loss="ibot++",
        patch_visible_weight=None,
        ema="head",
        ema_momentum=0.996,
        caption_sampling="multi",
        centering="centering",
        center_momentum=0.9,
        sinkhorn_iterations=3,
        teacher_temperature=0.07,
        warmup_teacher_temperature=0.04,
        teacher_temperature_warmup_steps=0,
        student_temperature=0.1,
        mask_ratio=0.75,
        contrastive_weight=1.0,
        dino_weight=1.0,
        patch_weight=2.0,
        koleo_weight=0.0,
        freeze_last_layer_steps=0,
        gradient_clip_norm=3.0,
        seed=None,
        **kwargs,
    ):
        check_choice("patch_loss", patch_loss, losses.PATCH_LOSSES)
        if patch_visible_weight is not None and patch_loss != "ibot++":
            raise ValueError(
                "patch_visible_weight only applies to patch_loss='ibot++'; got "
                f"patch_loss={patch_loss!r}."
            )
        check_choice("ema", ema, EMA_MODES)
        check_choice("caption_sampling", caption_sampling, CAPTION_SAMPLINGS)
        check_choice("centering", centering, CENTERINGS)
        super().__init__(
            log_names=LOG_NAMES, gradient_clip_norm=gradient_clip_norm, **kwargs
        )
        self.backbone = backbone
        width = backbone.vision_encoder.hidden_dim

        # === Heads ===
        def head(name):
            return projection_head(
                width, head_hidden_dim, head_bottleneck_dim, num_prototypes,
                head_num_layers, name,
            )  # fmt: skip

        self.student_head = head("student_head")
        self.teacher_head = head("teacher_head")
        self.teacher_head.trainable = False
        copy_weights(self.teacher_head.weights, self.student_head.weights)
        if ema == "full":
            encoder = backbone.vision_encoder
            self.teacher_vision_encoder = encoder.__class__.from_config(encoder.get_config())
            self.teacher_vision_encoder.build((None, None, None, 3))
            self.teacher_vision_encoder.trainable = False
            copy_weights(
                _float_weights(self.teacher_vision_encoder), _float_weights(encoder)
            )

        # === Training state ===
        self.cls_center = self.add_weight(
            shape=(1, num_prototypes), initializer="zeros", trainable=False,
            dtype="float32", name="cls_center",
        )
        self.patch_center = self.add_weight(
            shape=(1, num_prototypes), initializer="zeros", trainable=False,
            dtype="float32", name="patch_center",
        )
        self.step_counter = self.add_weight(
            shape=(), initializer="zeros", trainable=False, dtype="int32",
            name="step_counter",
        )
        self.seed_generator = keras.random.SeedGenerator(seed)

        # === Config ===
        self.head_hidden_dim = head_hidden_dim
        self.head_bottleneck_dim = head_bottleneck_dim
        self.num_prototypes = num_prototypes
        self.head_num_layers = head_num_layers
        self.patch_loss = patch_loss
        self.patch_visible_weight = patch_visible_weight
        self.ema = ema
        self.ema_momentum = ema_momentum
        self.caption_sampling = caption_sampling
        self.centering = centering
        self.center_momentum = center_momentum
        self.sinkhorn_iterations = sinkhorn_iterations
        self.teacher_temperature = teacher_temperature
        self.warmup_teacher_temperature = warmup_teacher_temperature
        self.teacher_temperature_warmup_steps = teacher_temperature_warmup_steps
        self.student_temperature = student_temperature
        self.mask_ratio = mask_ratio
        self.contrastive_weight = contrastive_weight
        self.dino_weight = dino_weight
        self.patch_weight = patch_weight
        self.koleo_weight = koleo_weight
        self.freeze_last_layer_steps = freeze_last_layer_steps
        self.seed = seed
        self.built = True

    # === Inputs ===

    def _check_batch(self, batch):
        check_image_text_batch(batch, self.caption_sampling, type(self).__name__)

    def _encode_text(self, text, training):
        return self.backbone.encode_text(
            text["token_ids"], text["padding_mask"], training=training
        )

    # === Loss ===

    def current_teacher_temperature(self):
        return linear_warmup(
            self.step_counter,
            self.warmup_teacher_temperature,
            self.teacher_temperature,
            self.teacher_temperature_warmup_steps,
        )

    def _teacher_tokens(self, images, clean):
        """CLS_1 (B, D) and patch tokens (B, h, w, D) the teacher head reads."""
        if self.ema == "full":
            out = self.teacher_vision_encoder(
                ops.convert_to_tensor(images, self.backbone.compute_dtype), training=False
            )
        else:
            out = clean
        return (
            ops.stop_gradient(out["cls_tokens"][:, 0]),
            ops.stop_gradient(out["patch_tokens"]),
        )

    def _student_cls_logits(self, batch, masked, training):
        """(B, M, K) student head logits of the DINO views."""
        crops = batch.get("local_crops")
        if crops is None:
            return self.student_head(masked["cls_tokens"][:, :1])
        if len(crops.shape) != 5:
            raise ValueError(
                "local_crops must have shape (batch, num_crops, size, size, 3); "
                f"got {tuple(crops.shape)}."
            )
        shape = ops.shape(crops)
        flat = ops.reshape(crops, (-1,) + tuple(crops.shape[2:]))
        out = self.backbone.encode_images(flat, training=training)
        logits = self.student_head(out["cls_tokens"][:, 0])
        return ops.reshape(logits, (shape[0], shape[1], self.num_prototypes))

    def _teacher_targets(self, cls_logits, patch_logits, masks, temperature, training):
        """Teacher probabilities for CLS and patches; updates the centres."""
        return teacher_targets(
            cls_logits,
            patch_logits,
            temperature,
            self.centering,
            self.cls_center,
            self.patch_center,
            self.center_momentum,
            self.sinkhorn_iterations,
            patch_weights=losses.supervised_patch_tokens(masks, self.patch_loss),
            update_centers=training,
        )

    def compute_losses(self, batch, training=True):
        self._check_batch(batch)
        images = batch["images"]
        # 1. Clean view, with gradient: contrastive loss and teacher inputs.
        clean = self.backbone.encode_images(images, training=training)
        temperature = self.backbone.temperature
        contrastive = batch_contrastive_loss(
            clean["cls_tokens"],
            batch,
            lambda text: self._encode_text(text, training),
            self.caption_sampling,
            temperature,
        )
        # 2. Masked view for the student's patch predictions.
        patch_shape = clean["patch_tokens"].shape
        masks = batch.get("masks")
        if masks is None:
            masks = replica_random_masks(
                ops.shape(images)[0], patch_shape[1], patch_shape[2],
                self.mask_ratio, self.seed_generator,
            )
        masks = ops.cast(masks, "bool")
        masked = self.backbone.encode_images(images, masks=masks, training=training)
        student_patch = self.student_head(masked["patch_tokens"])
        student_cls = self._student_cls_logits(batch, masked, training)
        # 3. Teacher targets from the EMA head.
        teacher_cls, teacher_patch = self._teacher_tokens(images, clean)
        tau_t = self.current_teacher_temperature()
        cls_targets, patch_targets = self._teacher_targets(
            self.teacher_head(teacher_cls),
            self.teacher_head(teacher_patch),
            masks,
            tau_t,
            training,
        )
        dino = losses.dino_cls_loss(cls_targets, student_cls, self.student_temperature)
        patch = losses.patch_loss(
            patch_targets, student_patch, masks, self.patch_loss, self.student_temperature,
            visible_weight=self.patch_visible_weight,
        )  # fmt: skip
        koleo = (
            losses.koleo_loss(clean["cls_tokens"][:, 0])
            if self.koleo_weight
            else ops.zeros((), "float32")
        )
        total = (
            self.contrastive_weight * contrastive
            + self.dino_weight * dino
            + self.patch_weight * patch
            + self.koleo_weight * koleo
        )
        logs = {
            "loss": total,
            "contrastive_loss": contrastive,
            "dino_loss": dino,
            "patch_loss": patch,
            "koleo_loss": koleo,
            "temperature": ops.stop_gradient(temperature),
            "teacher_temperature": tau_t,
            "ema_momentum": ops.convert_to_tensor(self.ema_momentum, "float32"),
        }
        return total, logs

    # === Update hooks ===

    def _last_layer_frozen(self):
        return ops.less(self.step_counter.value, self.freeze_last_layer_steps)

    def process_gradients(self, grads):
        grads = super().process_gradients(grads)
        if self.freeze_last_layer_steps <= 0:
            return grads
        frozen = self._last_layer_frozen()
        prototypes = self.student_head.prototypes
        return [
            ops.where(frozen, ops.zeros_like(g), g) if v is prototypes else g
            for g, v in zip(grads, self.trainable_variables)
        ]

    def snapshot_variables(self):
        if self.freeze_last_layer_steps <= 0:
            return []
        return [self.student_head.prototypes]

    def after_optimizer_step(self, snapshots):
        if snapshots:
            # Undo any update (e.g. weight decay) of the frozen prototypes.
            prototypes = self.student_head.prototypes
            prototypes.assign(ops.where(self._last_layer_frozen(), snapshots[0], prototypes.value))
        ema_update(self.teacher_head.weights, self.student_head.weights, self.ema_momentum)
        if self.ema == "full":
            ema_update(
                _float_weights(self.teacher_vision_encoder),
                _float_weights(self.backbone.vision_encoder),
                self.ema_momentum,
            )
        self.step_counter.assign(self.step_counter.value + 1)

    # === Bookkeeping ===

    def parameter_counts(self):
        """Vision-side parameters trained and held as EMA, from the variables.

        Returns {"trained", "ema", "total"} as
        `ema.pretraining_parameter_counts`.
        """

        def count(weights):
            total = 0
            for w in weights:
                size = 1
                for d in w.shape:
                    size *= d
                total += size
            return total

        vision = count(self.backbone.vision_encoder.weights)
        head = count(self.student_head.weights)
        counts = pretraining_parameter_counts(vision, head, self.ema)
        ema_held = count(self.teacher_head.weights)
        if self.ema == "full":
            ema_held += count(_float_weights(self.teacher_vision_encoder))
        if ema_held != counts["ema"]:
            raise RuntimeError(f"EMA holds {ema_held} parameters, expected {counts['ema']}.")
        return counts

    def get_config(self):
        config = {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "head_hidden_dim": self.head_hidden_dim,
            "head_bottleneck_dim": self.head_bottleneck_dim,
            "num_prototypes": self.num_prototypes,
            "head_num_layers": self.head_num_layers,
            "patch_loss": self.patch_loss,
            "patch_visible_weight": self.patch_visible_weight,
            "ema": self.ema,
            "ema_momentum": self.ema_momentum,
            "caption_sampling": self.caption_sampling,
            "centering": self.centering,
            "center_momentum": self.center_momentum,
            "sinkhorn_iterations": self.sinkhorn_iterations,
            "teacher_temperature": self.teacher_temperature,
            "warmup_teacher_temperature": self.warmup_teacher_temperature,
            "teacher_temperature_warmup_steps": self.teacher_temperature_warmup_steps,
            "student_temperature": self.student_temperature,
            "mask_ratio": self.mask_ratio,
            "contrastive_weight": self.contrastive_weight,
            "dino_weight": self.dino_weight,
            "patch_weight": self.patch_weight,
            "koleo_weight": self.koleo_weight,
            "freeze_last_layer_steps": self.freeze_last_layer_steps,
            "gradient_clip_norm": self.gradient_clip_norm,
            "seed": self.seed,
        }
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)
