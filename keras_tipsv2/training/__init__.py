"""TIPSv2 training: losses, masking, EMA, schedules and the training models.

`train_step.py` holds the only per-backend code of the library.
"""

from keras_tipsv2.training.ema import (
    ema_update,
    head_parameter_count,
    pretraining_parameter_counts,
    vit_parameter_count,
)
from keras_tipsv2.training.losses import (
    centered_teacher_probabilities,
    clip_contrastive_loss,
    dino_cls_loss,
    dual_contrastive_loss,
    feature_matching_loss,
    koleo_loss,
    patch_loss,
    sinkhorn_knopp,
    teacher_student_cross_entropy,
    updated_center,
)
from keras_tipsv2.training.masking import (
    block_patch_masks,
    block_patch_masks_batch,
    random_patch_masks,
)
from keras_tipsv2.training.distiller import TIPSv2Distiller
from keras_tipsv2.training.pretrainer import TIPSv2Pretrainer
from keras_tipsv2.training.schedules import cosine_increase, linear_warmup
from keras_tipsv2.training.train_step import TIPSv2TrainingModel, clip_by_global_norm
from keras_tipsv2.training.resumable_fit import (
    IncompatibleRunError,
    ResumableBackupAndRestore,
    ResumableCSVLogger,
    fit_resumable,
)
